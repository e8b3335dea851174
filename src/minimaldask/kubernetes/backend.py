"""The Kubernetes backend: the scheduler and workers as pods of two Deployments.

Only :mod:`minimaldask.kubernetes.api` talks to the API; this module decides
what to ask it: pre-flight checks, apply, waits with one deadline for the
whole start, and which pods go on scale-down. What the cluster is made of
comes from :func:`~minimaldask.kubernetes.manifests.cluster_parts`; how the
client reaches it, from the ``expose`` mode's strategy
(:mod:`minimaldask.kubernetes.expose`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import json
import math
import time
import warnings
from collections.abc import Coroutine
from dataclasses import replace
from datetime import datetime
from typing import Any, TypeVar

from minimaldask import contract
from minimaldask.backend import (
    Backend,
    ClusterInfo,
    Logger,
    WorkerCounter,
    WorkerNews,
    scheduler_answers,
    until_news,
)
from minimaldask.exceptions import (
    ClusterNotFoundError,
    ClusterStartError,
    ForbiddenError,
    ImageMismatchError,
    KubernetesError,
)
from minimaldask.kubernetes import api as kube
from minimaldask.kubernetes import expose
from minimaldask.kubernetes.manifests import (
    check_patch,
    cluster_parts,
    cluster_root,
    owned,
    pin_scheduler_address,
    scheduler_hosts,
)
from minimaldask.kubernetes.objects import (
    CONFIG_MAP,
    DEPLOYMENT,
    POD,
    REPLICA_SET,
    ROLE_BINDING,
    SECRET,
    SERVICE,
    Access,
    Part,
    Stage,
    access_to_make,
    cluster_kinds,
    delete_order,
)
from minimaldask.kubernetes.status import (
    pod_phase,
    pod_ready,
    ready_since,
    replica_failure,
    transient_problems,
    waiting_for,
)
from minimaldask.pod import scaling
from minimaldask.spec import ClusterSpec, client_versions, default_image_tag
from minimaldask.tls import Credentials

#: Seconds a wait may overrun its deadline while an API call is answered; a delete's
#: requests get as much beyond its timeout (which is for the objects to go).
API_GRACE = 15
T = TypeVar("T")
#: Seconds a scale-down may take until the retired pods are terminating.
SCALE_TIMEOUT = 60
#: Seconds between two looks at the scheduler's count of workers while waiting for them: no
#: API request, but each look crosses the port-forward (API server, kubelet), whose CPU the
#: starting pods need on a small node; a quarter second halves the wait of the old 0.5 s.
COUNT_EVERY = 0.25
#: Seconds between two reads of the worker pods while waiting for workers to connect (the
#: scheduler's count is looked at every ``COUNT_EVERY``): each read lists every worker pod, about 5 KB
#: each, which at 1,000 workers is 5 MB for the API server to send and the client to parse.
LOOK_EVERY = 2.0
#: The deadline of a whole scale (every request, the retirements): SCALE_TIMEOUT for the
#: workers to go, API_GRACE for the requests around it.
SCALE_DEADLINE = SCALE_TIMEOUT + API_GRACE

#: What a user needs beyond making the cluster's objects: watch its pods, read their logs,
#: list the clusters of the namespace, mark retired workers' pods.
OBSERVE_ACCESS = (
    Access("list", DEPLOYMENT),
    Access("list", REPLICA_SET),
    Access("list", POD),
    Access("get", POD, "log"),
    Access("patch", POD),
)


class Start(enum.Enum):
    """Where this handle is with its cluster; what a failed start may remove follows from it."""

    #: Nothing asked of the API server yet: a failed start has nothing to remove.
    NEW = "new"
    #: This handle applied the cluster's objects and waits for them: a failure removes them.
    CREATING = "creating"
    #: The cluster ran before this handle, which waits for it: a failure leaves it running.
    ATTACHING = "attaching"
    #: Started (or attached to) and ready.
    READY = "ready"


def _read_image(registry: Any, ref: str) -> tuple[dict[str, str], list[str], str]:
    """Versions, platforms and pinned reference (``repository@digest``) of ``ref``.

    A loopback registry is read over plain http, as Docker does.
    """
    host = registry.parse_reference(ref).registry.rsplit(":", 1)[0]
    insecure = host in ("localhost", "[::1]") or host.startswith("127.")
    digest = registry.image_digest(ref, insecure=insecure)
    pinned = registry.pinned(ref, digest)
    return (
        registry.image_versions(pinned, insecure=insecure),
        registry.image_platforms(pinned, insecure=insecure),
        pinned,
    )


def _repository(ref: str) -> str:
    """``ref`` without its tag or digest."""
    ref = ref.split("@", 1)[0]
    last = ref.rsplit("/", 1)[-1]
    return ref.rsplit(":", 1)[0] if ":" in last else ref


def _timestamp(value: str | None) -> float | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _optional(part: Part) -> bool:
    # A user who may not make the janitor's objects could not have made them: deleting them
    # may be forbidden, and there is nothing of that kind to delete anyway.
    return part.janitor


class KubernetesBackend(Backend):
    """Pods in a namespace: Service and Deployment ``NAME-scheduler``, Deployment ``NAME-worker``."""

    name = "kubernetes"
    adapts_in_scheduler = True

    def __init__(self, spec: ClusterSpec, log: Logger) -> None:
        super().__init__(spec, log)
        self._api: Any = None
        self.exposure = expose.exposure(spec.expose)
        self._endpoint: expose.Endpoint | None = None
        self._deadline = 0.0
        self.state = Start.NEW
        #: This handle created the cluster (so, by default, its close deletes it).
        self.created = False
        #: The cluster's CA and certificates (TLS), made by the creator, read by others.
        self.credentials: Credentials | None = None
        #: One line saying where the start is; the CLI displays it live.
        self.progress = ""
        #: Whether the cluster gets its janitor's ServiceAccount and Role (self-deletion).
        self.janitor = True

    async def _connect(self) -> Any:
        if self._api is None:
            self._api = await kube.connect(self.spec.name, self.spec.namespace)
        return self._api

    def _say(self, line: str) -> None:
        if line != self.progress:
            self.progress = line
            self.log(line)

    def _parts(self) -> list[Part]:
        return cluster_parts(self.spec, janitor=self.janitor, credentials=self.credentials)

    # -- pre-flight -------------------------------------------------------------------------

    def check_options(self) -> None:
        """Refuse, before any request, options that cannot work on Kubernetes."""
        spec = self.spec
        check_patch(spec)
        if spec.apk_packages:
            raise ValueError(
                f"invalid apk_packages={' '.join(spec.apk_packages)!r}: the minimaldask image "
                "is Debian-based and has no apk; list the Debian names of these packages in "
                "os_packages=... instead"
            )

    def required_access(self) -> list[Access]:
        """The rights a user needs to run this cluster: derived from its parts and exposure."""
        parts = cluster_parts(self.spec, janitor=False)
        return [*access_to_make(parts), *OBSERVE_ACCESS, *self.exposure.access()]

    def janitor_access(self) -> list[Access]:
        """The rights to give the janitor its objects (its identity, Role and ConfigMap)."""
        mine = [p for p in cluster_parts(self.spec, janitor=True) if p.janitor]
        return [a for a in access_to_make(mine) if a.verb in ("create", "patch")]

    async def preflight(self) -> None:
        """Refuse, before anything is created, what cannot work."""
        spec = self.spec
        api = await self._connect()
        # All at once (each is a few requests); the first failure in this order is told.
        namespace = asyncio.ensure_future(kube.check_namespace(api, spec.namespace))
        # The user's rules, asked once for both checks of rights.
        known = asyncio.ensure_future(kube.rules(api, spec.namespace))
        access = asyncio.ensure_future(
            kube.check_access(api, spec.namespace, self.required_access(), known)
        )
        janitor = asyncio.ensure_future(
            kube.missing_access(api, spec.namespace, self.janitor_access(), known)
        )
        image = asyncio.ensure_future(self._check_image(api))
        checks: list[asyncio.Future[Any]] = [namespace, known, access, janitor, image]
        try:
            await namespace
            await access
            self._janitor_access(await janitor)
            await image
        finally:
            for check in checks:
                check.cancel()
            await asyncio.gather(*checks, return_exceptions=True)

    def _janitor_access(self, missing: list[Access]) -> None:
        """Without the rights to give the janitor its Role, start anyway and say what is lost."""
        self.janitor = not missing
        if missing:
            message = (
                f"Self-deletion is off for cluster {self.spec.name!r}: you may not "
                f"{', '.join(map(str, missing))} in namespace {self.spec.namespace!r}, so its "
                "janitor cannot delete it when idle or without a client, nor scale it "
                "adaptively. Delete it yourself (delete_dask_cluster / minimaldask down), or "
                "ask for the 'admin' role in the namespace"
            )
            warnings.warn(message, RuntimeWarning, stacklevel=2)
            self.log(message)

    async def _check_image(self, api: Any) -> None:
        """The image must exist, record this client's versions, and have the nodes' platforms."""
        try:
            from minimaldask.image import recipe, registry
        except ImportError:
            self.log("Image check skipped: this build of minimaldask has no image registry client")
            return
        ref = self.spec.image
        try:
            versions, platforms, pinned = await asyncio.to_thread(_read_image, registry, ref)
        except registry.ImageNotFoundError as e:
            message = (
                f"image {ref} does not exist ({e}); push it first (minimaldask image "
                f"build --push {ref}) or fix image=..."
            )
            python = client_versions()["python"]
            if python not in recipe.supported_pythons():
                message += ". " + recipe.python_advice(
                    python, _repository(ref), default_image_tag()
                )
            raise ClusterStartError(message) from e
        except registry.RegistryError as e:
            self.log(
                f"Image check skipped: cannot read {ref} from its registry ({e}); the pods run "
                "the tag as it is, not one pinned build"
            )
            return
        mine = client_versions()
        differ = {k: (versions[k], v) for k, v in mine.items() if versions.get(k) not in (None, v)}
        if differ:
            what = ", ".join(
                f"{k} {theirs} in the image but {ours} here" for k, (theirs, ours) in differ.items()
            )
            if "python" in differ:
                advice = recipe.python_advice(mine["python"], _repository(ref), default_image_tag())
            else:
                advice = (
                    f"Use the image built for this client, image={_repository(ref)}:"
                    f"{default_image_tag()} (the default), or run the client with the image's "
                    "versions"
                )
            raise ImageMismatchError(f"image {ref} does not match this client: {what}. {advice}")
        # One build for the scheduler and every worker, whatever the tag names later.
        self.spec = replace(self.spec, image=pinned)
        nodes = await kube.node_architectures(api)
        if nodes is None:
            self.log("Platform check skipped: this user may not list nodes")
            return
        missing = {n for n in nodes if not any(p == n or p.startswith(n + "/") for p in platforms)}
        if missing:
            raise ImageMismatchError(
                f"image {ref} has no build for the nodes' platform {', '.join(sorted(missing))} "
                f"(it has {', '.join(sorted(platforms))}); build it with "
                f"minimaldask image build --platform {','.join(sorted(missing))}"
            )

    # -- start ------------------------------------------------------------------------------

    async def start(self, attach_only: bool = False, update: bool = False) -> str:
        """Create the cluster, or attach to the running one of the same name.

        The root object is created first, with a create that fails when it
        exists: of two processes starting one name at once, exactly one creates
        the cluster, and the other attaches without applying anything. An
        attaching handle changes nothing but (later) the number of workers,
        unless ``update``. Every request of the start ends by its deadline
        (``startup_timeout``), a hung API server included.
        """
        self._deadline = time.monotonic() + self.spec.startup_timeout
        with kube.deadline(self._deadline, self._startup_limit()):
            return await self._start(attach_only, update)

    def _startup_limit(self) -> str:
        return f"startup_timeout={self.spec.startup_timeout:g}s"

    async def _start(self, attach_only: bool, update: bool) -> str:
        spec = self.spec
        if not attach_only:
            self.check_options()
        api = await self._connect()
        if not attach_only:
            await self.preflight()
        root_name = contract.root_name(spec.name)
        root = await kube.get(api, CONFIG_MAP, spec.namespace, root_name)
        if root is None and not attach_only:
            self._say(f"Creating cluster {spec.name!r} in namespace {spec.namespace!r}")
            root = await kube.create(api, CONFIG_MAP, self._root(spec))
            if root is not None:
                self.state = Start.CREATING
                self.created = True
                if spec.uses_tls:
                    self.credentials = Credentials.make(spec.name, scheduler_hosts(spec))
                    self.security = self.credentials.security()
                await self._apply(root)
                return await self._within_deadline(self._wait_for_scheduler())
            self._say(f"Cluster {spec.name!r} was created by another process meanwhile")
            root = await kube.get(api, CONFIG_MAP, spec.namespace, root_name)
        if (
            root is None
            and await kube.get(api, DEPLOYMENT, spec.namespace, contract.scheduler_name(spec.name))
            is None
        ):
            raise ClusterNotFoundError(
                f"no cluster named {spec.name!r} in namespace {spec.namespace!r}; "
                f"start one with MinimalCluster(name={spec.name!r}, namespace={spec.namespace!r})"
            )
        self.state = Start.ATTACHING
        await self._within_deadline(self._read_credentials(root))
        if not attach_only:
            differ = _differences(root, spec)
            if differ and update:
                self._say(f"Updating the running cluster {spec.name!r}: {', '.join(differ)}")
                # An update may replace the scheduler: workers follow once it answers.
                await self._apply(root, workers=False)
                address = await self._within_deadline(self._wait_for_scheduler())
                await self._apply(root)
                return address
            if differ:
                self.log(
                    f"Cluster {spec.name!r} runs with other {', '.join(differ)} than yours; "
                    "attached without changing it (update=True applies yours, restarting its "
                    "scheduler)"
                )
        await self._read_ports()
        address = await self._within_deadline(self._wait_for_scheduler())
        if attach_only:  # attached: no start to finish
            self.state = Start.READY
            self._deadline = 0.0
        return address

    async def _read_credentials(self, root: dict[str, Any] | None) -> None:
        """The running cluster's TLS credentials, from its Secret.

        The root says whether the cluster speaks TLS; its creator may still be making
        the Secret, so a handle that attaches right after it waits for it (a cluster
        made from printed manifests has no root: the Secret alone tells).
        """
        spec = self.spec
        said = ((root or {}).get("data") or {}).get(contract.STATE_TLS)
        name = contract.tls_name(spec.name)
        while (secret := await kube.get(self._api, SECRET, spec.namespace, name)) is None:
            if said != "true":
                if spec.uses_tls:
                    self.log(f"Cluster {spec.name!r} runs without TLS (started with tls=False)")
                self.spec = replace(spec, tls=False)
                return
            self._say(f"Waiting for the certificates of {spec.name!r} (Secret {name})")
            if self._remaining() < 0:
                raise ClusterStartError(
                    f"cluster {spec.name!r} speaks TLS but its Secret {name} did not appear "
                    f"within startup_timeout={spec.startup_timeout:g}s"
                )
            await asyncio.sleep(kube.POLL)
        files = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
        try:
            self.credentials = Credentials.from_files(files)
        except KeyError as e:
            raise KubernetesError(
                f"the Secret {name} of cluster {spec.name!r} lacks {e}: it was changed by hand; "
                "delete the cluster and start it again"
            ) from None
        self.spec = replace(spec, tls=True)
        self.security = self.credentials.security()

    def _root(self, spec: ClusterSpec) -> dict[str, Any]:
        """The root object, recording what shapes the cluster (to tell an attaching handle)."""
        root = cluster_root(spec)
        root["data"] = {
            contract.STATE_OPTIONS: json.dumps(spec.fingerprint(), sort_keys=True),
            contract.STATE_TLS: json.dumps(spec.uses_tls),
        }
        return root

    async def _read_ports(self) -> None:
        """Take the ports of a running cluster from its Service (they may not be the defaults)."""
        ports = {
            p.get("name"): p.get("port")
            for p in ((await self._service() or {}).get("spec") or {}).get("ports", [])
        }
        self.spec = replace(
            self.spec,
            port=ports.get("tcp-comm", self.spec.port),
            dashboard_port=ports.get("http-dashboard", self.spec.dashboard_port),
        )

    async def _service(self) -> dict[str, Any] | None:
        return await kube.get(
            self._api, SERVICE, self.spec.namespace, contract.scheduler_name(self.spec.name)
        )

    async def _apply(self, root: dict[str, Any] | None, workers: bool = True) -> None:
        """Apply every part but the root, each owned by it (the worker Deployment if asked).

        A cluster made from printed manifests may have no root: its parts are then owned
        by nothing, and are deleted by their labels.
        """
        parts = [
            part
            for part in self._parts()
            if part.stage != Stage.ROOT
            and (workers or part.kind != DEPLOYMENT or part.name is not contract.worker_name)
        ]
        # In waves, each at once: what the pods need (their ServiceAccount, Secret,
        # NetworkPolicy, the Service they reach the scheduler by) exists before any pod
        # does, a RoleBinding after its Role (the API server refuses a binding to a Role
        # it cannot find), then the scheduler's Deployment, then the workers': their
        # pods start together, the scheduler's first (bench/startup.py's timelines: a
        # scheduler pod made after the workers' started its container up to 2 s later,
        # and every connection waits for the scheduler).
        later = (ROLE_BINDING, DEPLOYMENT)
        service: dict[str, Any] = {}

        def build(part: Part) -> dict[str, Any]:
            obj = owned(part.build(self.spec), root)
            if part.kind == DEPLOYMENT and part.name is contract.worker_name and service:
                # The workers reach the scheduler by its Service's address, not by a name
                # the cluster's DNS may still resolve to a Service of that name just deleted.
                obj = pin_scheduler_address(obj, service)
            return obj

        for wave in (
            [p for p in parts if p.kind not in later],
            [p for p in parts if p.kind == ROLE_BINDING],
            *([p] for p in parts if p.kind == DEPLOYMENT),
        ):
            applied = await asyncio.gather(*(kube.apply(self._api, p.kind, build(p)) for p in wave))
            for part, obj in zip(wave, applied, strict=True):
                if part.kind == SERVICE and part.name is contract.scheduler_name:
                    service = obj

    def _remaining(self) -> float:
        return self._deadline - time.monotonic()

    async def _within_deadline(self, wait: Coroutine[Any, Any, T]) -> T:
        """``wait``, cut off if an API call hangs past the start's deadline (plus a grace)."""
        try:
            return await asyncio.wait_for(wait, max(self._remaining(), 0) + API_GRACE)
        except asyncio.TimeoutError:
            raise ClusterStartError(
                f"{self.spec.name!r} did not start within startup_timeout="
                f"{self.spec.startup_timeout:g}s: the Kubernetes API server stopped answering"
            ) from None

    def _connection(self) -> expose.Connection:
        return expose.Connection(
            api=self._api, spec=self.spec, say=self._say, service=self._service
        )

    async def _wait_for_scheduler(self) -> str:
        spec, api = self.spec, self._api
        selector = contract.label_selector(spec.name, contract.SCHEDULER)
        scheduler = contract.scheduler_name(spec.name)
        while True:
            pods = await kube.check_pods(api, spec.namespace, scheduler, selector)
            running = [
                p
                for p in pods
                if (p.get("status") or {}).get("phase") == "Running"
                and not p["metadata"].get("deletionTimestamp")
            ]
            if not await self._rolled_out():
                running = []  # an updated scheduler replaces the old one: not the old one
            states = ", ".join(pod_phase(p) for p in pods) or "no pod yet"
            waiting = waiting_for(pods, "scheduler pods")
            self._say(f"Waiting for the scheduler ({states})" + (f"; {waiting}" if waiting else ""))
            if running:
                newest = max(running, key=lambda p: p["metadata"].get("creationTimestamp", ""))
                endpoint = await self.exposure.connect(self._connection(), newest)
                if endpoint and await scheduler_answers(endpoint.address, self.security):
                    self._endpoint = endpoint
                    return endpoint.address
            if self._remaining() < 0:
                if running and isinstance(self.exposure, expose.LoadBalancer):
                    raise ClusterStartError(self.exposure.no_address(spec))
                await self._fail_on_transient(pods)
                raise ClusterStartError(
                    f"the scheduler of {spec.name!r} did not answer within "
                    f"startup_timeout={spec.startup_timeout:g}s (pods: {states})."
                    + await self._scheduler_log_tail(pods)
                )
            await asyncio.sleep(kube.POLL)

    async def _rolled_out(self) -> bool:
        """Whether the scheduler Deployment's pods are all of its current template."""
        deployment = await kube.get(
            self._api, DEPLOYMENT, self.spec.namespace, contract.scheduler_name(self.spec.name)
        )
        if deployment is None:
            return False
        status = deployment.get("status") or {}
        return bool(
            status.get("observedGeneration", 0) >= deployment["metadata"].get("generation", 0)
            and status.get("replicas", 0) == status.get("updatedReplicas", 0)
        )

    async def _scheduler_log_tail(self, pods: list[dict[str, Any]]) -> str:
        if not pods:
            return ""
        name = pods[0]["metadata"]["name"]
        try:
            log = await kube.pod_log(
                self._api,
                self.spec.namespace,
                name,
                tail=kube.LOG_TAIL,
                container=contract.SCHEDULER,
            )
        except KubernetesError as e:
            return f" Its log could not be read: {e}"
        return f" Last lines of its log:\n{log.rstrip()}"

    async def _fail_on_transient(self, pods: list[dict[str, Any]]) -> None:
        """At the deadline: fail with what the pods were waiting for (no node, a refused pull)."""
        problems = transient_problems(pods)
        if problems:
            raise ClusterStartError(
                await kube.explain(
                    self._api, self.spec.namespace, problems[0], self._startup_limit()
                )
            )

    async def wait_for_workers(
        self, n: int, count: WorkerCounter, timeout: float, news: WorkerNews | None = None
    ) -> None:
        """Wait until the scheduler counts ``n`` workers; fail fast when a worker pod cannot run.

        A pod that waits for a node (a node pool scaling up) or for a registry that
        refused a pull for now is waited for until the deadline, and shown.
        """
        deadline = min(time.monotonic() + timeout, self._deadline or float("inf"))
        limit = self._startup_limit() if self.state != Start.READY else f"timeout={timeout:g}s"
        try:
            with kube.deadline(deadline, limit):
                await asyncio.wait_for(
                    self._wait_for_workers(n, count, deadline, news),
                    deadline - time.monotonic() + API_GRACE,
                )
        except asyncio.TimeoutError:
            raise ClusterStartError(
                f"waiting for {n} workers of {self.spec.name!r}: the Kubernetes API server or "
                "the scheduler stopped answering"
            ) from None

    async def _scheduler_ready_at(self) -> float:
        """When the scheduler pod became Ready, as its node's kubelet recorded it; inf if not yet.

        A worker that crashed before then was waiting for a scheduler that did not
        listen yet: Kubernetes restarts it, and that is no reason to fail the start.
        """
        pods = await kube.list_objects(
            self._api,
            POD,
            self.spec.namespace,
            contract.label_selector(self.spec.name, contract.SCHEDULER),
        )
        times = [t for p in pods if (t := ready_since(p)) is not None]
        return max(times) if times else math.inf

    async def _wait_for_workers(
        self, n: int, count: WorkerCounter, deadline: float, news: WorkerNews | None
    ) -> None:
        spec = self.spec
        selector = contract.label_selector(spec.name, contract.WORKER)
        scheduler_ready = math.inf
        looked = -math.inf
        connected = 0
        #: Why the scheduler did not answer the last count, if it did not: its connection goes
        #: through the port-forward, which a busy node or API server may drop. Asked again
        #: until the deadline; only a scheduler that stopped answering for good fails the start.
        unanswered: OSError | None = None
        while True:
            try:
                connected = await count()
                unanswered = None
            except OSError as e:  # CommClosedError is one
                if unanswered is None:  # said at once: the next answer may come before a look
                    self._say(
                        f"{connected} of {n} workers connected; the scheduler did not answer "
                        f"({e!r}), asking again"
                    )
                unanswered = e
            if connected >= n:
                # The scheduler's count decides. Read once more for the pods' names: one
                # request, no judgement of pods that all connected.
                self.requested = {p["metadata"]["name"] for p in await self._live_workers()}
                break
            now = time.monotonic()
            # The pods are read less often than the scheduler is asked.
            if now - looked < LOOK_EVERY and now <= deadline:
                await until_news(news, COUNT_EVERY)
                continue
            looked = now
            if scheduler_ready == math.inf:
                scheduler_ready = await self._scheduler_ready_at()
            pods = await kube.check_pods(
                self._api,
                spec.namespace,
                contract.worker_name(spec.name),
                selector,
                scheduler_ready,
            )
            live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
            self.requested = {p["metadata"]["name"] for p in live}
            states: dict[str, int] = {}
            for p in live:
                states[pod_phase(p)] = states.get(pod_phase(p), 0) + 1
            summary = ", ".join(f"{v} {k}" for k, v in sorted(states.items())) or "no pod yet"
            waiting = waiting_for(live, "workers")
            silent = ""
            if unanswered is not None:
                silent = f"; the scheduler did not answer ({unanswered!r}), asking again"
            self._say(
                f"{connected} of {n} workers connected (pods: {summary})"
                + (f"; {waiting}" if waiting else "")
                + silent
            )
            if time.monotonic() > deadline:
                await self._fail_on_transient(live)
                if unanswered is not None:
                    raise ClusterStartError(
                        f"the scheduler of {spec.name!r} did not answer within "
                        f"startup_timeout={spec.startup_timeout:g}s: {unanswered!r} "
                        f"({connected} of {n} workers connected when it last did; worker pods: "
                        f"{summary})"
                    ) from unanswered
                raise ClusterStartError(
                    f"{connected} of {n} workers connected to {spec.name!r} within "
                    f"startup_timeout={spec.startup_timeout:g}s (worker pods: {summary}); "
                    "raise startup_timeout=... if the cluster is merely slow"
                )
            await until_news(news, COUNT_EVERY)
        self.state = Start.READY
        self._deadline = 0.0
        self._say(f"{connected} of {n} workers connected")

    # -- scale ------------------------------------------------------------------------------

    async def scale(self, n: int, scheduler: Any) -> None:
        """Run ``n`` workers: up by asking for pods; down by retiring first, so nothing is lost.

        The one scale-down of every path (see :mod:`minimaldask.pod.scaling`), here
        with this user's rights and the scheduler's handlers. One deadline for all
        of it: :data:`SCALE_DEADLINE`.
        """
        limit = f"the deadline of a scale ({SCALE_DEADLINE:g}s)"
        try:
            with kube.deadline(time.monotonic() + SCALE_DEADLINE, limit):
                await asyncio.wait_for(self._scale(n, scheduler), SCALE_DEADLINE + API_GRACE)
        except asyncio.TimeoutError:
            raise KubernetesError(
                f"scaling {self.spec.name!r} to {n} workers did not finish within {limit}: "
                "the Kubernetes API server or the scheduler stopped answering"
            ) from None

    async def _scale(self, n: int, scheduler: Any) -> None:
        api = await self._connect()
        spec = self.spec
        self.spec = spec.with_workers(n)
        outcome = await scaling.scale_to(
            n,
            _DeploymentReplicas(api, spec),
            _SchedulerWorkers(scheduler),
            SCALE_TIMEOUT,
        )
        if outcome.retired:
            self.log(f"Retired {', '.join(outcome.retired)} (their data moved first)")
        if outcome.reason:
            self.log(f"Scaling {spec.name!r} to {n} workers stopped short: {outcome.reason}")
        await self._check_replicas(n)
        self.requested = {p["metadata"]["name"] for p in await self._live_workers()}

    async def _check_replicas(self, n: int) -> None:
        """A quota or an admission policy that refuses the pods: say so now, not at a deadline."""
        spec = self.spec
        worker = contract.worker_name(spec.name)
        pods = await kube.list_objects(
            self._api, POD, spec.namespace, contract.label_selector(spec.name, contract.WORKER)
        )
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        if len(live) >= n:
            return
        deadline = time.monotonic() + 5  # the ReplicaSet reports a refusal within seconds
        while time.monotonic() < deadline:
            why = replica_failure(await kube.get(self._api, DEPLOYMENT, spec.namespace, worker))
            if why:
                # During a start (the cluster scales to its first size) this is a start failure.
                error = ClusterStartError if self.state != Start.READY else KubernetesError
                raise error(
                    f"scaling {spec.name!r} to {n} workers: Deployment {worker} cannot create "
                    f"its pods: {why}"
                )
            if len(await self._live_workers()) >= n:
                return
            await asyncio.sleep(kube.POLL)

    async def _live_workers(self) -> list[dict[str, Any]]:
        pods = await kube.list_objects(
            self._api,
            POD,
            self.spec.namespace,
            contract.label_selector(self.spec.name, contract.WORKER),
        )
        return [p for p in pods if not p["metadata"].get("deletionTimestamp")]

    async def adapt(
        self, scheduler: Any, minimum: int, maximum: int | None, **policy: float
    ) -> dict[str, Any]:
        """Store the policy in the janitor's ConfigMap, then hand it to the janitor."""
        api = await self._connect()
        bounds = {"minimum": minimum, "maximum": maximum, **policy}
        stored = contract.encode_policy(bounds if maximum is not None else None)
        await kube.merge_patch(
            api,
            CONFIG_MAP,
            self.spec.namespace,
            contract.root_name(self.spec.name),
            {"data": {contract.STATE_ADAPT: stored}},
        )
        try:
            result: dict[str, Any] = await asyncio.wait_for(
                getattr(scheduler, contract.ADAPT)(**bounds), 30
            )
        except Exception as e:
            raise KubernetesError(
                f"the janitor of {self.spec.name!r} cannot scale it ({e}); without the rights to "
                "create its Role (see the warning at start) adaptive scaling is off"
            ) from e
        if maximum is not None:
            self.log(f"Adaptive scaling between {minimum} and {maximum} workers, in the scheduler")
        return result

    # -- end --------------------------------------------------------------------------------

    async def disconnect(self) -> None:
        """Release this client's connection (port-forwards); the cluster keeps running."""
        await self.exposure.close()
        self._endpoint = None

    async def close(self) -> None:
        """Delete every object of the cluster and wait until they are gone.

        A start that failed on a cluster that was already running leaves it running.
        """
        await self.disconnect()
        if self.state == Start.NEW:
            return  # a start that failed before creating anything
        if self.state == Start.ATTACHING:
            self.log(f"Leaving the running cluster {self.spec.name!r} as it was")
            return
        await self.delete(self.spec.name, self.spec.namespace, self.spec.startup_timeout)
        self.requested.clear()

    @kube.bounded
    async def logs(self) -> dict[str, str]:
        """The log of every pod of the cluster."""
        api, ns = await self._connect(), self.spec.namespace
        pods = await kube.list_objects(api, POD, ns, contract.label_selector(self.spec.name))
        out = {}
        for pod in pods:
            name = pod["metadata"]["name"]
            containers = [c["name"] for c in pod["spec"]["containers"]]
            for container in containers:
                title = f"pod {name}" if len(containers) == 1 else f"pod {name} {container}"
                out[title] = await kube.pod_log(api, ns, name, container=container)
        return out

    @property
    def dashboard_link(self) -> str | None:
        """The dashboard as this client reaches it (through its port-forward by default)."""
        return self._endpoint.dashboard if self._endpoint else None

    @classmethod
    async def delete(cls, name: str, namespace: str, timeout: float) -> bool:
        """Delete cluster ``name`` and wait until none of its objects is left.

        ``timeout`` is for the objects to go; the requests get :data:`API_GRACE`
        more, and a hung API server fails the delete by then.
        """
        limit = f"the delete's deadline (timeout={timeout:g}s, plus {API_GRACE:g}s)"
        with kube.deadline(time.monotonic() + timeout + API_GRACE, limit):
            return await cls._delete(name, namespace, timeout)

    @classmethod
    async def _delete(cls, name: str, namespace: str, timeout: float) -> bool:
        api = await kube.connect(name, namespace)
        spec = ClusterSpec.from_options(name=name, namespace=namespace, backend="kubernetes")
        # Every mode's objects: the one this cluster was started with is not known here.
        parts = [
            *cluster_parts(spec),
            *(p for mode in expose.EXPOSURES.values() for p in mode().parts(spec)),
        ]
        objects = {(p.kind.name, p.name(name)): p for p in delete_order(parts)}
        return await kube.delete_cluster(
            api,
            namespace,
            name,
            [(p.kind, p.name(name), _optional(p)) for p in objects.values()],
            cluster_kinds(parts),
            timeout,
        )

    @classmethod
    @kube.bounded
    async def leftovers(cls, name: str, namespace: str) -> list[str]:
        """``Kind/name`` of every object of cluster ``name`` still there (kinds a user may list)."""
        api = await kube.connect(name, namespace)
        spec = ClusterSpec.from_options(name=name, namespace=namespace, backend="kubernetes")
        return await kube.leftovers(api, namespace, name, cluster_kinds(cluster_parts(spec)))

    @classmethod
    @kube.bounded
    async def list_clusters(cls, namespace: str) -> list[ClusterInfo]:
        """The clusters in ``namespace``, found by their scheduler Deployments' labels."""
        api = await kube.connect()
        schedulers = await kube.list_objects(
            api, DEPLOYMENT, namespace, contract.label_selector(component=contract.SCHEDULER)
        )
        workers = {
            contract.cluster_of(d["metadata"]["labels"]): d
            for d in await kube.list_objects(
                api, DEPLOYMENT, namespace, contract.label_selector(component=contract.WORKER)
            )
        }
        try:
            states = {
                contract.cluster_of(c["metadata"]["labels"]): c.get("data") or {}
                for c in await kube.list_objects(
                    api, CONFIG_MAP, namespace, contract.label_selector()
                )
                if c["metadata"]["name"]
                == contract.root_name(contract.cluster_of(c["metadata"]["labels"]))
            }
        except ForbiddenError:  # what the janitors report is not essential to a list
            states = {}
        out = []
        for d in schedulers:
            name = contract.cluster_of(d["metadata"]["labels"])
            w = workers.get(name) or {}
            spec = ClusterSpec.from_options(name=name, namespace=namespace, backend="kubernetes")
            host = f"{contract.scheduler_name(name)}.{namespace}.svc"
            containers = d["spec"]["template"]["spec"].get("containers") or [{}]
            tls = any(e["name"] == "MINIMALDASK_TLS_DIR" for e in containers[0].get("env") or [])
            out.append(
                ClusterInfo(
                    name=name,
                    namespace=namespace,
                    backend="kubernetes",
                    scheduler_address=f"{contract.scheme(tls)}{host}:{spec.port}",
                    workers=int((w.get("status") or {}).get("readyReplicas") or 0),
                    requested_workers=int((w.get("spec") or {}).get("replicas") or 0),
                    created=_timestamp(d["metadata"].get("creationTimestamp")),
                    details={
                        "scheduler_ready": bool((d.get("status") or {}).get("readyReplicas")),
                        **_janitor_details(d, states.get(name) or {}),
                    },
                )
            )
        return out


def _janitor_details(scheduler: dict[str, Any], state: dict[str, str]) -> dict[str, Any]:
    """The timeouts a scheduler Deployment sets, and what its janitor last reported."""
    containers = scheduler["spec"]["template"]["spec"].get("containers") or [{}]
    env = {e["name"]: e.get("value") or "" for e in containers[0].get("env") or []}
    settings = contract.JanitorSettings.from_env(env)
    details: dict[str, Any] = {
        "idle_timeout": settings.idle_timeout,
        "no_client_timeout": settings.no_client_timeout,
        "max_lifetime": settings.max_lifetime,
    }
    with contextlib.suppress(ValueError, TypeError, KeyError):
        policy = contract.decode_policy(state.get(contract.STATE_ADAPT))
        if policy:
            details["adapt"] = [policy["minimum"], policy["maximum"]]
    with contextlib.suppress(ValueError, TypeError, KeyError):
        details["janitor"] = contract.decode_status(state[contract.STATE_STATUS])
    return details


def _differences(root: dict[str, Any] | None, spec: ClusterSpec) -> list[str]:
    """The options that shape the running cluster and differ from ``spec``'s (by name)."""
    try:
        theirs = json.loads(((root or {}).get("data") or {}).get(contract.STATE_OPTIONS) or "{}")
    except ValueError:
        return []
    ours = spec.fingerprint()
    return sorted(k for k in ours if k in theirs and theirs[k] != ours[k])


class _DeploymentReplicas:
    """The worker Deployment and its pods, read with this user's rights (pod names included)."""

    def __init__(self, api: Any, spec: ClusterSpec) -> None:
        self.api, self.spec = api, spec
        self.name = contract.worker_name(spec.name)

    async def pods(self) -> scaling.Pods:
        deployment = await kube.get(self.api, DEPLOYMENT, self.spec.namespace, self.name)
        pods = await kube.list_objects(
            self.api,
            POD,
            self.spec.namespace,
            contract.label_selector(self.spec.name, contract.WORKER),
        )
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        not_ready = frozenset(p["metadata"]["name"] for p in live if not pod_ready(p))
        return scaling.Pods(
            replicas=int(((deployment or {}).get("spec") or {}).get("replicas") or 0),
            live=len(live),
            ready=len(live) - len(not_ready),
            not_ready=not_ready,
        )

    async def set(self, replicas: int) -> None:
        await kube.set_replicas(self.api, self.spec.namespace, self.name, replicas)


class _SchedulerWorkers:
    """The scheduler's side of a scale-down, through the plugin's handlers."""

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler

    async def connected(self) -> scaling.Connected:
        answer = await asyncio.wait_for(getattr(self.scheduler, contract.WORKERS)(), 30)
        return scaling.Connected(frozenset(answer["running"]), frozenset(answer["retired"]))

    async def retire(self, n: int, timeout: float) -> list[str]:
        answer = await asyncio.wait_for(
            getattr(self.scheduler, contract.RETIRE)(n=n, timeout=timeout), timeout + 30
        )
        return list(answer["retired"])
