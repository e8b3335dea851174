"""The Kubernetes backend: the scheduler and workers as pods of two Deployments.

Only :mod:`minimaldask.kube` talks to the API; this module decides what to ask
it: pre-flight checks, apply, waits with one deadline for the whole start,
how this client reaches the scheduler, and which pods go on scale-down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import time
import warnings
from collections.abc import Coroutine
from dataclasses import replace
from datetime import datetime
from typing import Any, TypeVar

from kr8s.asyncio.portforward import PortForward

from minimaldask import kube
from minimaldask.backends.base import (
    Backend,
    ClusterInfo,
    Logger,
    WorkerCounter,
    scheduler_answers,
)
from minimaldask.exceptions import (
    ClusterNotFoundError,
    ClusterStartError,
    ForbiddenError,
    ImageMismatchError,
    KubernetesError,
)
from minimaldask.manifests import (
    LABEL_INSTANCE,
    cluster_objects,
    janitor_name,
    janitor_service_account,
    label_selector,
    scheduler_address,
    scheduler_host,
    scheduler_name,
    worker_name,
)
from minimaldask.spec import ClusterSpec, client_versions, default_image_tag

#: pod-deletion-cost of a retired worker: lower than any other pod's (default 0).
RETIRED_COST = -1_000_000
#: Seconds a wait may overrun its deadline while an API call is answered.
API_GRACE = 15
T = TypeVar("T")
#: Seconds a scale-down may take until the retired pods are terminating.
SCALE_TIMEOUT = 60


def _read_image(registry: Any, ref: str) -> tuple[dict[str, str], list[str]]:
    """Versions and platforms of ``ref``; a loopback registry is read over plain http, as Docker does."""
    host = registry.parse_reference(ref).registry.rsplit(":", 1)[0]
    insecure = host in ("localhost", "[::1]") or host.startswith("127.")
    return (
        registry.image_versions(ref, insecure=insecure),
        registry.image_platforms(ref, insecure=insecure),
    )


def _in_kubernetes() -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


def _timestamp(value: str | None) -> float | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


class KubernetesBackend(Backend):
    """Pods in a namespace: Service and Deployment ``NAME-scheduler``, Deployment ``NAME-worker``."""

    name = "kubernetes"
    close_retired = False
    adapts_in_scheduler = True

    def __init__(self, spec: ClusterSpec, log: Logger) -> None:
        super().__init__(spec, log)
        self._api: Any = None
        self._forwards: list[PortForward] = []
        self._dashboard: str | None = None
        self._forwarded = ""
        self._forwarded_pod = ""
        self._deadline = 0.0
        #: The cluster ran before this handle; a failed start must not delete it.
        self.preexisting = False
        #: This handle applied the cluster's objects (so a failed start has something to remove).
        self._applied = False
        self._ready = False
        #: One line saying where the start is; the CLI displays it live.
        self.progress = ""
        #: Whether the cluster gets its janitor's ServiceAccount and Role (self-deletion).
        self.janitor = True

    async def _connect(self) -> Any:
        if self._api is None:
            self._api = await kube.connect()
        return self._api

    def _say(self, line: str) -> None:
        if line != self.progress:
            self.progress = line
            self.log(line)

    # -- pre-flight -------------------------------------------------------------------------

    def check_options(self) -> None:
        """Refuse, before any request, options that cannot work on Kubernetes."""
        spec = self.spec
        if spec.apk_packages:
            raise ValueError(
                f"invalid apk_packages={' '.join(spec.apk_packages)!r}: the minimaldask image "
                "is Debian-based and has no apk; list the Debian names of these packages in "
                "os_packages=... instead"
            )

    async def preflight(self) -> None:
        """Refuse, before anything is created, what cannot work."""
        spec = self.spec
        api = await self._connect()
        await kube.check_namespace(api, spec.namespace)
        await kube.check_access(api, spec.namespace, port_forward=self._mode() == "port-forward")
        await self._check_janitor_access(api)
        await self._check_image(api)

    async def _check_janitor_access(self, api: Any) -> None:
        """Without the rights to give the janitor its Role, start anyway and say what is lost."""
        missing = await kube.missing_access(api, self.spec.namespace, kube.JANITOR_ACCESS)
        self.janitor = not missing
        if missing:
            message = (
                f"Self-deletion is off for cluster {self.spec.name!r}: you may not "
                f"{', '.join(missing)} in namespace {self.spec.namespace!r}, so its janitor "
                "cannot delete it when idle or without a client, nor scale it adaptively. "
                "Delete it yourself (delete_dask_cluster / minimaldask down), or ask for the "
                "'admin' role in the namespace"
            )
            warnings.warn(message, RuntimeWarning, stacklevel=2)
            self.log(message)

    async def _check_image(self, api: Any) -> None:
        """The image must exist, record this client's versions, and have the nodes' platforms."""
        try:
            from minimaldask.image import registry  # type: ignore[import-not-found, attr-defined, unused-ignore]
        except ImportError:
            self.log("Image check skipped: this build of minimaldask has no image registry client")
            return
        ref = self.spec.image
        try:
            versions, platforms = await asyncio.to_thread(_read_image, registry, ref)
        except registry.RegistryError as e:
            if str(e).startswith("no image "):
                raise ClusterStartError(
                    f"image {ref} does not exist ({e}); push it first (minimaldask image "
                    f"build --push {ref}) or fix image=..."
                ) from e
            self.log(f"Image check skipped: cannot read {ref} from its registry ({e})")
            return
        mine = client_versions()
        differ = {k: (versions[k], v) for k, v in mine.items() if versions.get(k) not in (None, v)}
        if differ:
            what = ", ".join(
                f"{k} {theirs} in the image but {ours} here" for k, (theirs, ours) in differ.items()
            )
            last = ref.rsplit("/", 1)[-1]
            repository = ref.rsplit(":", 1)[0] if ":" in last else ref
            raise ImageMismatchError(
                f"image {ref} does not match this client: {what}. Use the image built for "
                f"this client, image={repository}:{default_image_tag()} (the default), or run "
                "the client with the image's versions"
            )
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

    def _mode(self) -> str:
        if self.spec.expose == "port-forward" and _in_kubernetes():
            return "none"
        return self.spec.expose

    async def start(self, attach_only: bool = False) -> str:
        """Apply the cluster's objects (or find them), then connect to the scheduler."""
        spec = self.spec
        self._deadline = time.monotonic() + spec.startup_timeout
        if not attach_only:
            self.check_options()
        api = await self._connect()
        if not attach_only:
            await self.preflight()
        existing = await kube.get(api, "Deployment", spec.namespace, scheduler_name(spec))
        self.preexisting = existing is not None
        if attach_only:
            if existing is None:
                raise ClusterNotFoundError(
                    f"no cluster named {spec.name!r} in namespace {spec.namespace!r}; "
                    f"start one with MinimalCluster(name={spec.name!r}, namespace={spec.namespace!r})"
                )
            await self._read_ports()
            address = await self._within_deadline(self._wait_for_scheduler())
            self._deadline = 0.0  # attached: no start to finish
            self._ready = True
            return address
        replicas = spec.workers
        if existing is not None:
            workers = await kube.get(api, "Deployment", spec.namespace, worker_name(spec))
            # The cluster retires workers itself before lowering replicas.
            replicas = ((workers or {}).get("spec") or {}).get("replicas", spec.workers)
            self._say(f"Updating the running cluster {spec.name!r} in {spec.namespace!r}")
        else:
            self._say(f"Creating cluster {spec.name!r} in namespace {spec.namespace!r}")
        if existing is None:
            await self._apply(replicas)
            return await self._within_deadline(self._wait_for_scheduler())
        # An update may replace the scheduler: new workers start once it answers.
        await self._apply(replicas, workers=False)
        address = await self._within_deadline(self._wait_for_scheduler())
        await self._apply(replicas)
        return address

    async def _read_ports(self) -> None:
        """Take the ports of a running cluster from its Service (they may not be the defaults)."""
        service = await kube.get(
            self._api, "Service", self.spec.namespace, scheduler_name(self.spec)
        )
        ports = {
            p.get("name"): p.get("port")
            for p in ((service or {}).get("spec") or {}).get("ports", [])
        }
        self.spec = replace(
            self.spec,
            port=ports.get("tcp-comm", self.spec.port),
            dashboard_port=ports.get("http-dashboard", self.spec.dashboard_port),
        )

    async def _apply(self, replicas: int, workers: bool = True) -> None:
        """Apply the scheduler Deployment, then its children (the worker Deployment if asked)."""
        self._applied = True
        janitor = self.janitor
        if janitor:
            # The scheduler pod runs as this ServiceAccount: it must exist before the pod.
            await kube.update_or_deploy(janitor_service_account(self.spec), self._api)
        owner = await kube.update_or_deploy(
            cluster_objects(self.spec, janitor=janitor)[0], self._api
        )
        for obj in cluster_objects(self.spec.with_workers(replicas), owner, janitor=janitor)[1:]:
            if workers or obj["metadata"]["name"] != worker_name(self.spec):
                await kube.update_or_deploy(obj, self._api)

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

    async def _wait_for_scheduler(self) -> str:
        spec, api = self.spec, self._api
        selector = label_selector(spec.name, "scheduler")
        while True:
            pods = await kube.check_pods(api, spec.namespace, scheduler_name(spec), selector)
            running = [
                p
                for p in pods
                if (p.get("status") or {}).get("phase") == "Running"
                and not p["metadata"].get("deletionTimestamp")
            ]
            if not await self._rolled_out():
                running = []  # an updated scheduler replaces the old one: not the old one
            states = ", ".join(kube.pod_phase(p) for p in pods) or "no pod yet"
            self._say(f"Waiting for the scheduler ({states})")
            if running:
                newest = max(running, key=lambda p: p["metadata"].get("creationTimestamp", ""))
                address = await self._address(newest)
                if address and await scheduler_answers(address):
                    return address
            if self._remaining() < 0:
                if running and self._mode() == "loadbalancer":
                    raise ClusterStartError(
                        f"the LoadBalancer Service {scheduler_name(spec)} got no address within "
                        f"startup_timeout={spec.startup_timeout:g}s: does this Kubernetes have a "
                        "load-balancer controller? Use expose='port-forward' (the default) otherwise"
                    )
                raise ClusterStartError(
                    f"the scheduler of {spec.name!r} did not answer within "
                    f"startup_timeout={spec.startup_timeout:g}s (pods: {states})."
                    + await self._scheduler_log_tail(pods)
                )
            await asyncio.sleep(kube.POLL)

    async def _rolled_out(self) -> bool:
        """Whether the scheduler Deployment's pods are all of its current template."""
        deployment = await kube.get(
            self._api, "Deployment", self.spec.namespace, scheduler_name(self.spec)
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
            log = await kube.pod_log(self._api, self.spec.namespace, name, tail=kube.LOG_TAIL)
        except Exception as e:
            return f" Its log could not be read: {e}"
        return f" Last lines of its log:\n{log.rstrip()}"

    async def _address(self, pod: dict[str, Any]) -> str | None:
        """The scheduler's address as this client reaches it, setting up what that needs."""
        spec, mode = self.spec, self._mode()
        if mode == "none":
            self._dashboard = f"http://{scheduler_host(spec)}:{spec.dashboard_port}/status"
            return scheduler_address(spec)
        if mode == "port-forward":
            pod_name = pod["metadata"]["name"]
            if self._forwarded_pod != pod_name:  # first time, or the scheduler was replaced
                await self.disconnect()
                self._forwarded_pod = pod_name
                comm, comm_port = await kube.port_forward(
                    self._api, spec.namespace, pod_name, spec.port
                )
                self._forwards.append(comm)
                dash, dash_port = await kube.port_forward(
                    self._api, spec.namespace, pod_name, spec.dashboard_port
                )
                self._forwards.append(dash)
                self._forwarded = f"tcp://127.0.0.1:{comm_port}"
                self._dashboard = f"http://127.0.0.1:{dash_port}/status"
            return self._forwarded
        service = await kube.get(self._api, "Service", spec.namespace, scheduler_name(spec))
        ports = {p["name"]: p for p in ((service or {}).get("spec") or {}).get("ports", [])}
        if mode == "nodeport":
            host = (pod.get("status") or {}).get("hostIP")
            comm, dash = ports.get("tcp-comm", {}), ports.get("http-dashboard", {})
            if not host or not comm.get("nodePort"):
                return None
            self._dashboard = f"http://{host}:{dash.get('nodePort')}/status"
            return f"tcp://{host}:{comm['nodePort']}"
        ingress = (((service or {}).get("status") or {}).get("loadBalancer") or {}).get(
            "ingress"
        ) or []
        if not ingress:
            self._say("Waiting for the load balancer's address")
            return None
        host = ingress[0].get("ip") or ingress[0].get("hostname")
        self._dashboard = f"http://{host}:{spec.dashboard_port}/status"
        return f"tcp://{host}:{spec.port}"

    async def wait_for_workers(self, n: int, count: WorkerCounter, timeout: float) -> None:
        """Wait until the scheduler counts ``n`` workers; fail fast when a worker pod cannot run."""
        deadline = min(time.monotonic() + timeout, self._deadline or float("inf"))
        try:
            await asyncio.wait_for(
                self._wait_for_workers(n, count, deadline), deadline - time.monotonic() + API_GRACE
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
            self._api, "Pod", self.spec.namespace, label_selector(self.spec.name, "scheduler")
        )
        times = [t for p in pods if (t := kube.ready_since(p)) is not None]
        return max(times) if times else math.inf

    async def _wait_for_workers(self, n: int, count: WorkerCounter, deadline: float) -> None:
        spec = self.spec
        selector = label_selector(spec.name, "worker")
        scheduler_ready = math.inf
        while True:
            connected = await count()
            if scheduler_ready == math.inf:
                scheduler_ready = await self._scheduler_ready_at()
            pods = await kube.check_pods(
                self._api, spec.namespace, worker_name(spec), selector, scheduler_ready
            )
            live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
            self.requested = {p["metadata"]["name"] for p in live}
            if connected >= n:
                break
            states: dict[str, int] = {}
            for p in live:
                states[kube.pod_phase(p)] = states.get(kube.pod_phase(p), 0) + 1
            summary = ", ".join(f"{v} {k}" for k, v in sorted(states.items())) or "no pod yet"
            self._say(f"{connected} of {n} workers connected (pods: {summary})")
            if time.monotonic() > deadline:
                raise ClusterStartError(
                    f"{connected} of {n} workers connected to {spec.name!r} within "
                    f"startup_timeout={spec.startup_timeout:g}s (worker pods: {summary}); "
                    "raise startup_timeout=... if the cluster is merely slow"
                )
            await asyncio.sleep(kube.POLL)
        self._ready = True
        self._deadline = 0.0
        self._say(f"{connected} of {n} workers connected")

    # -- scale ------------------------------------------------------------------------------

    async def scale(self, n: int, remove: list[str]) -> None:
        """Mark the retired pods with the lowest deletion cost, then lower (or raise) replicas."""
        spec, api = self.spec, await self._connect()
        gone = [name for name in remove if name in self.requested]
        await kube.set_deletion_cost(api, spec.namespace, gone, RETIRED_COST)
        self.spec = spec.with_workers(n)
        # Only replicas: a handle from from_name does not know the cluster's other options.
        await kube.set_replicas(api, spec.namespace, worker_name(spec), n)
        # Wait until the pods match: the retired ones going, new ones created (not yet
        # connected), so that `requested` names every worker pod for the next scale-down.
        selector = label_selector(spec.name, "worker")
        deadline = time.monotonic() + SCALE_TIMEOUT
        while True:
            pods = await kube.list_objects(api, "Pod", spec.namespace, selector)
            live = {
                p["metadata"]["name"] for p in pods if not p["metadata"].get("deletionTimestamp")
            }
            if not (live & set(gone)) and len(live) == n:
                break
            why = None
            if len(live) < n:  # a quota or an admission policy refuses pods: say so now
                why = kube.replica_failure(
                    await kube.get(api, "Deployment", spec.namespace, worker_name(spec))
                )
            if why or time.monotonic() > deadline:
                # During a start (the cluster scales to its first size) this is a start failure.
                error = ClusterStartError if self._deadline else KubernetesError
                raise error(
                    f"scaling {spec.name!r} to {n} workers: Deployment {worker_name(spec)} "
                    f"cannot create its pods: {why}"
                    if why
                    else f"scaling {spec.name!r} to {n} workers: after {SCALE_TIMEOUT}s there "
                    f"are {len(live)} worker pods ({', '.join(sorted(live)) or 'none'})"
                )
            await asyncio.sleep(kube.POLL)
        self.requested = live

    async def adapt(
        self, scheduler: Any, minimum: int, maximum: int | None, **policy: float
    ) -> dict[str, Any]:
        """Store the policy on the scheduler Deployment, then hand it to the janitor."""
        from minimaldask.janitor import ADAPT

        api = await self._connect()
        bounds = {"minimum": minimum, "maximum": maximum, **policy}
        stored = json.dumps(bounds) if maximum is not None else None
        await kube.merge_patch(
            api,
            "ConfigMap",
            self.spec.namespace,
            janitor_name(self.spec),
            {"data": {ADAPT: stored}},
        )
        try:
            result: dict[str, Any] = await asyncio.wait_for(
                scheduler.minimaldask_adapt(**bounds), 30
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
        """Stop this client's port-forwards; the cluster keeps running."""
        for forward in self._forwards:
            with contextlib.suppress(Exception):
                await forward.stop()
        self._forwards.clear()
        self._forwarded_pod = ""

    async def close(self) -> None:
        """Delete every object of the cluster and wait until they are gone.

        A start that failed on a cluster that was already running leaves it running.
        """
        await self.disconnect()
        if not self._ready and not self._applied:
            return  # a start that failed before creating anything
        if self.preexisting and not self._ready:
            self.log(f"Leaving the running cluster {self.spec.name!r} as it was")
            return
        await self.delete(self.spec.name, self.spec.namespace, self.spec.startup_timeout)
        self.requested.clear()

    async def logs(self) -> dict[str, str]:
        """The log of every pod of the cluster."""
        api, ns = await self._connect(), self.spec.namespace
        pods = await kube.list_objects(api, "Pod", ns, label_selector(self.spec.name))
        out = {}
        for pod in pods:
            name = pod["metadata"]["name"]
            out[f"pod {name}"] = await kube.pod_log(api, ns, name)
        return out

    @property
    def dashboard_link(self) -> str | None:
        """The dashboard as this client reaches it (through its port-forward by default)."""
        return self._dashboard

    @classmethod
    async def delete(cls, name: str, namespace: str, timeout: float) -> bool:
        """Delete cluster ``name`` and wait until none of its objects is left."""
        api = await kube.connect()
        spec = ClusterSpec.from_options(name=name, namespace=namespace, backend="kubernetes")
        objects = [
            ("Deployment", scheduler_name(spec)),
            ("Deployment", worker_name(spec)),
            ("Service", scheduler_name(spec)),
            ("RoleBinding", janitor_name(spec)),
            ("Role", janitor_name(spec)),
            ("ServiceAccount", scheduler_name(spec)),
            ("ConfigMap", janitor_name(spec)),
        ]
        return await kube.delete_cluster(api, namespace, name, objects, timeout)

    @classmethod
    async def list_clusters(cls, namespace: str) -> list[ClusterInfo]:
        """The clusters in ``namespace``, found by their scheduler Deployments' labels."""
        api = await kube.connect()
        schedulers = await kube.list_objects(
            api,
            "Deployment",
            namespace,
            "app.kubernetes.io/name=minimaldask,app.kubernetes.io/component=scheduler",
        )
        workers = {
            d["metadata"]["labels"].get(LABEL_INSTANCE): d
            for d in await kube.list_objects(
                api,
                "Deployment",
                namespace,
                "app.kubernetes.io/name=minimaldask,app.kubernetes.io/component=worker",
            )
        }
        try:
            states = {
                c["metadata"]["labels"].get(LABEL_INSTANCE): c.get("data") or {}
                for c in await kube.list_objects(
                    api, "ConfigMap", namespace, "app.kubernetes.io/name=minimaldask"
                )
            }
        except ForbiddenError:  # what the janitors report is not essential to a list
            states = {}
        out = []
        for d in schedulers:
            name = d["metadata"]["labels"].get(LABEL_INSTANCE, "")
            w = workers.get(name) or {}
            spec = ClusterSpec.from_options(name=name, namespace=namespace, backend="kubernetes")
            out.append(
                ClusterInfo(
                    name=name,
                    namespace=namespace,
                    backend="kubernetes",
                    scheduler_address=scheduler_address(spec),
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
    from minimaldask.janitor import ADAPT, STATUS

    containers = scheduler["spec"]["template"]["spec"].get("containers") or [{}]
    env = {e["name"]: e.get("value") for e in containers[0].get("env") or []}
    details: dict[str, Any] = {}
    for key in ("idle_timeout", "no_client_timeout", "max_lifetime"):
        value = env.get(f"MINIMALDASK_{key.upper()}") or ""
        details[key] = float(value) if value else None
    with contextlib.suppress(ValueError, TypeError, KeyError):
        policy = json.loads(state[ADAPT])
        details["adapt"] = [policy["minimum"], policy["maximum"]]
    with contextlib.suppress(ValueError, TypeError, KeyError):
        details["janitor"] = json.loads(state[STATUS])
    return details
