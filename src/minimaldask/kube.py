"""The one module that talks to the Kubernetes API (through kr8s).

Server-side apply, deletes that wait until objects are gone, waits whose
failures say why (image pull, crash, unschedulable, quota, forbidden),
pre-flight checks, logs and port-forwards. Errors of the API are translated
into :mod:`minimaldask.exceptions` here, at one boundary (:func:`api_errors`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

try:
    import httpx
    import kr8s
    import kr8s.asyncio
except ImportError as e:  # pragma: no cover  (an install without the extra)
    raise ImportError(
        "the Kubernetes backend needs kr8s: pip install 'minimaldask[kubernetes]'"
    ) from e
from kr8s.asyncio.objects import Pod
from kr8s.asyncio.portforward import PortForward

from minimaldask.exceptions import (
    ClusterStartError,
    ForbiddenError,
    KubernetesError,
    NamespaceNotFoundError,
)
from minimaldask.manifests import DELETION_COST, label_selector

#: Field manager of every server-side apply.
FIELD_MANAGER = "minimaldask"
#: Seconds between two looks at the cluster while waiting.
POLL = 0.5
#: Lines of a crashed container's log shown in the error.
LOG_TAIL = 20

Obj = dict[str, Any]


@dataclass(frozen=True)
class Kind:
    """Where the API serves one kind of object."""

    api_version: str
    plural: str


KINDS: dict[str, Kind] = {
    "Deployment": Kind("apps/v1", "deployments"),
    "ReplicaSet": Kind("apps/v1", "replicasets"),
    "Service": Kind("v1", "services"),
    "Pod": Kind("v1", "pods"),
    "Endpoints": Kind("v1", "endpoints"),
    "EndpointSlice": Kind("discovery.k8s.io/v1", "endpointslices"),
    "Event": Kind("v1", "events"),
    "ServiceAccount": Kind("v1", "serviceaccounts"),
    "ConfigMap": Kind("v1", "configmaps"),
    "Role": Kind("rbac.authorization.k8s.io/v1", "roles"),
    "RoleBinding": Kind("rbac.authorization.k8s.io/v1", "rolebindings"),
    "NetworkPolicy": Kind("networking.k8s.io/v1", "networkpolicies"),
}
#: Kinds that hold a cluster's objects (ours and those controllers make for them).
#: Kinds of the janitor's objects, which a cluster may lack (see JANITOR_ACCESS).
JANITOR_KINDS = ("ServiceAccount", "Role", "RoleBinding", "ConfigMap")
CLUSTER_KINDS = (
    "Deployment",
    "ReplicaSet",
    "Pod",
    "Service",
    "Endpoints",
    "EndpointSlice",
    "ServiceAccount",
    "Role",
    "RoleBinding",
    "ConfigMap",
)


def _kind(name: str) -> Kind:
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(
            f"minimaldask does not manage objects of kind {name!r}; known kinds: "
            + ", ".join(sorted(KINDS))
        ) from None


# -- errors --------------------------------------------------------------------------------------


def _status(e: kr8s.ServerError) -> tuple[int, str, str]:
    code = e.response.status_code if e.response is not None else 0
    status: dict[str, Any] = e.status if isinstance(e.status, dict) else {}
    return code, str(status.get("reason", "")), str(status.get("message") or e)


@contextlib.asynccontextmanager
async def api_errors(action: str) -> AsyncIterator[None]:
    """Translate what kr8s and httpx raise into minimaldask errors naming ``action``."""
    try:
        yield
    except kr8s.ServerError as e:
        code, reason, message = _status(e)
        if code == 403 and "exceeded quota" in message:
            raise KubernetesError(f"{action}: refused by a ResourceQuota: {message}") from e
        if code == 403:
            raise ForbiddenError(
                f"{action}: forbidden: {message}. Ask an administrator of the namespace "
                "for a Role that allows it (see docs/kubernetes.md, 'Permissions')"
            ) from e
        if code == 404 and message.startswith("namespaces "):
            raise NamespaceNotFoundError(f"{action}: {message}") from e
        raise KubernetesError(f"{action}: {reason or code}: {message}") from e
    except kr8s.APITimeoutError as e:
        raise KubernetesError(f"{action}: the Kubernetes API server did not answer in time") from e
    except (httpx.TransportError, OSError) as e:
        raise KubernetesError(f"{action}: cannot reach the Kubernetes API server: {e}") from e


async def connect() -> kr8s.asyncio.Api:
    """A client of the API server, from the kubeconfig (``$KUBECONFIG``) or the pod's account."""
    async with api_errors("connecting to Kubernetes"):
        try:
            # Our own client, not kr8s' per-loop cache: a cached one may outlive its loop.
            api: kr8s.asyncio.Api = await kr8s.asyncio.Api(bypass_factory=True)
            return api
        except (ValueError, KeyError, FileNotFoundError) as e:
            raise KubernetesError(
                f"connecting to Kubernetes: no usable configuration ({e}); set KUBECONFIG "
                "or run inside a pod with a service account"
            ) from e


async def _call(
    api: kr8s.asyncio.Api,
    method: str,
    kind: str,
    namespace: str | None,
    name: str = "",
    *,
    action: str,
    subresource: str = "",
    params: Mapping[str, Any] | None = None,
    body: Any = None,
    headers: Mapping[str, str] | None = None,
    missing_ok: bool = False,
) -> Obj | None:
    k = _kind(kind)
    url = "/".join(p for p in (k.plural, name, subresource) if p)
    kwargs: dict[str, Any] = {}
    if params:
        kwargs["params"] = dict(params)
    if body is not None:
        kwargs["content"] = json.dumps(body)
    if headers:
        kwargs["headers"] = dict(headers)
    async with api_errors(action):
        try:
            async with api.call_api(
                method, version=k.api_version, namespace=namespace, url=url, **kwargs
            ) as r:
                out: Obj = r.json()
                return out
        except kr8s.ServerError as e:
            if missing_ok and _status(e)[0] == 404:
                return None
            raise


# -- apply and delete ----------------------------------------------------------------------------


async def update_or_deploy(obj: Mapping[str, Any], api: kr8s.asyncio.Api | None = None) -> Obj:
    """Create ``obj`` or update it in place, by server-side apply (field manager ``minimaldask``).

    Applying the same object twice changes nothing; changing a field updates
    the object in place. Returns the object as the API server stored it.

    >>> await update_or_deploy(manifests.scheduler_service(spec))  # doctest: +SKIP
    """
    api = api or await connect()
    meta = obj.get("metadata") or {}
    kind, name, namespace = obj.get("kind", ""), meta.get("name"), meta.get("namespace")
    if not name or not namespace:
        raise ValueError(f"update_or_deploy needs metadata.name and metadata.namespace: {obj!r}")
    out = await _call(
        api,
        "PATCH",
        kind,
        namespace,
        name,
        action=f"applying {kind} {namespace}/{name}",
        params={"fieldManager": FIELD_MANAGER, "force": "true"},
        body=obj,
        headers={"Content-Type": "application/apply-patch+yaml"},
    )
    assert out is not None
    return out


async def get(api: kr8s.asyncio.Api, kind: str, namespace: str, name: str) -> Obj | None:
    """The object, or None when it does not exist."""
    return await _call(
        api,
        "GET",
        kind,
        namespace,
        name,
        action=f"reading {kind} {namespace}/{name}",
        missing_ok=True,
    )


async def list_objects(
    api: kr8s.asyncio.Api, kind: str, namespace: str, selector: str = ""
) -> list[Obj]:
    """Objects of ``kind`` in ``namespace`` matching the label ``selector``."""
    out = await _call(
        api,
        "GET",
        kind,
        namespace,
        action=f"listing {_kind(kind).plural} in namespace {namespace!r}",
        params={"labelSelector": selector} if selector else None,
    )
    assert out is not None
    items: list[Obj] = out.get("items", [])
    return items


async def delete(api: kr8s.asyncio.Api, kind: str, namespace: str, name: str) -> bool:
    """Delete one object (its dependents in the background). False if it did not exist."""
    out = await _call(
        api,
        "DELETE",
        kind,
        namespace,
        name,
        action=f"deleting {kind} {namespace}/{name}",
        body={"propagationPolicy": "Background"},
        missing_ok=True,
    )
    return out is not None


async def cluster_leftovers(api: kr8s.asyncio.Api, namespace: str, name: str) -> list[str]:
    """``Kind/name`` of every object labelled as part of cluster ``name``.

    Kinds this user may not list are not checked. One request at a time: kr8s
    re-authenticates after a 403, which concurrent requests do not survive.
    """
    selector = label_selector(name)
    left = []
    for kind in CLUSTER_KINDS:
        try:
            items = await list_objects(api, kind, namespace, selector)
        except ForbiddenError:
            continue
        left += [f"{kind}/{o['metadata']['name']}" for o in items]
    return left


async def delete_cluster(
    api: kr8s.asyncio.Api,
    namespace: str,
    name: str,
    objects: Iterable[tuple[str, str]],
    timeout: float,
) -> bool:
    """Delete ``objects`` (kind, name) and wait until no object of the cluster is left.

    Returns False when none of them existed.
    """
    existed = False
    for kind, obj_name in objects:
        try:
            existed |= await delete(api, kind, namespace, obj_name)
        except ForbiddenError:
            # A user who may not delete Roles could not have created the janitor's
            # either (the cluster started without them); nothing of that kind is ours.
            if kind not in JANITOR_KINDS:
                raise
    deadline = time.monotonic() + timeout
    while left := await cluster_leftovers(api, namespace, name):
        if time.monotonic() > deadline:
            raise KubernetesError(
                f"cluster {name!r} in namespace {namespace!r} was deleted but after {timeout:g}s "
                f"these objects are still there: {', '.join(left)}"
            )
        await asyncio.sleep(POLL)
    return existed


async def set_replicas(
    api: kr8s.asyncio.Api, namespace: str, deployment: str, replicas: int
) -> None:
    """Change only the replicas of a Deployment (whatever else its spec says stays)."""
    await _call(
        api,
        "PATCH",
        "Deployment",
        namespace,
        deployment,
        action=f"scaling Deployment {namespace}/{deployment} to {replicas}",
        params={"fieldManager": FIELD_MANAGER},
        body={"spec": {"replicas": replicas}},
        headers={"Content-Type": "application/merge-patch+json"},
    )


async def merge_patch(
    api: kr8s.asyncio.Api, kind: str, namespace: str, name: str, patch: Mapping[str, Any]
) -> None:
    """Merge ``patch`` into an object (JSON merge patch: ``None`` values remove keys)."""
    await _call(
        api,
        "PATCH",
        kind,
        namespace,
        name,
        action=f"updating {kind} {namespace}/{name}",
        body=dict(patch),
        headers={"Content-Type": "application/merge-patch+json"},
    )


async def set_deletion_cost(
    api: kr8s.asyncio.Api, namespace: str, pods: Iterable[str], cost: int
) -> None:
    """Annotate ``pods`` so that the ReplicaSet controller removes them first (low cost)."""
    for pod in pods:
        await _call(
            api,
            "PATCH",
            "Pod",
            namespace,
            pod,
            action=f"marking pod {namespace}/{pod} for removal",
            body={"metadata": {"annotations": {DELETION_COST: str(cost)}}},
            headers={"Content-Type": "application/merge-patch+json"},
            missing_ok=True,
        )


# -- what went wrong -----------------------------------------------------------------------------

_PULL_ERRORS = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull")
_CONFIG_ERRORS = ("CreateContainerConfigError", "CreateContainerError", "RunContainerError")


@dataclass(frozen=True)
class PodProblem:
    """Why a pod cannot run: ``kind`` is one of pull, crash, config, unschedulable."""

    kind: str
    pod: str
    container: str
    message: str


def _time(value: str | None) -> float | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


#: Seconds by which two nodes' clocks may disagree when a worker's crash is compared
#: with the moment its scheduler became ready.
CLOCK_SKEW = 2.0


def pod_problem(
    pod: Mapping[str, Any], crashes_count_after: float | None = None
) -> PodProblem | None:
    """The reason a pod will not become ready by itself, read from its status; else None.

    ``crashes_count_after`` (a time, seconds since the epoch) forgives a crash that
    ended before it: a worker that gave up waiting for a scheduler that was not yet
    listening. Kubernetes restarts it, and the next try finds the scheduler.
    """
    name = pod.get("metadata", {}).get("name", "?")
    status = pod.get("status") or {}
    for cond in status.get("conditions") or []:
        if (
            cond.get("type") == "PodScheduled"
            and cond.get("status") == "False"
            and cond.get("reason") == "Unschedulable"
        ):
            return PodProblem("unschedulable", name, "", cond.get("message", ""))
    images = {c["name"]: c.get("image", "") for c in pod.get("spec", {}).get("containers", [])}
    for cs in status.get("containerStatuses") or []:
        container = cs.get("name", "")
        waiting = (cs.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason", "")
        if reason in _PULL_ERRORS:
            image = images.get(container) or cs.get("image", "")
            return PodProblem(
                "pull", name, container, f"{reason}: image {image!r}: {waiting.get('message', '')}"
            )
        if reason in _CONFIG_ERRORS:
            return PodProblem("config", name, container, f"{reason}: {waiting.get('message', '')}")
        # One crash can be a race (a scheduler being replaced); a crash loop is not.
        if reason == "CrashLoopBackOff":
            detail = (cs.get("lastState") or {}).get("terminated") or {}
            ended = _time(detail.get("finishedAt"))
            if crashes_count_after is not None and (
                ended is None or ended <= crashes_count_after + CLOCK_SKEW
            ):
                continue
            return PodProblem(
                "crash",
                name,
                container,
                f"exited with code {detail.get('exitCode', '?')}"
                + (f" ({detail['reason']})" if detail.get("reason") else "")
                + f", restarted {cs.get('restartCount', 0)} time(s)",
            )
    return None


def replica_failure(deployment: Mapping[str, Any] | None) -> str | None:
    """Why a Deployment cannot create its pods (a quota, an admission policy), if it says so."""
    for cond in ((deployment or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == "ReplicaFailure" and cond.get("status") == "True":
            return str(cond.get("message", cond.get("reason", "")))
    return None


async def pod_log(
    api: kr8s.asyncio.Api,
    namespace: str,
    pod: str,
    tail: int | None = None,
    previous: bool = False,
    limit_bytes: int | None = None,
) -> str:
    """A pod's log (its last ``tail`` lines; the previous container's with ``previous``).

    ``limit_bytes`` reads at most that much from the start of the log.
    """
    params: dict[str, Any] = {}
    if tail:
        params["tailLines"] = tail
    if limit_bytes:
        params["limitBytes"] = limit_bytes
    if previous:
        params["previous"] = "true"
    k = KINDS["Pod"]
    async with (
        api_errors(f"reading the log of pod {namespace}/{pod}"),
        api.call_api(
            "GET", version=k.api_version, namespace=namespace, url=f"pods/{pod}/log", params=params
        ) as r,
    ):
        return str(r.text)


async def _scale_up_triggered(api: kr8s.asyncio.Api, namespace: str, pod: str) -> bool:
    """Whether a cluster autoscaler is adding a node for ``pod`` (so waiting is worth it)."""
    try:
        events = await _call(
            api,
            "GET",
            "Event",
            namespace,
            action="reading events",
            params={"fieldSelector": f"involvedObject.name={pod}"},
        )
    except KubernetesError:
        return False
    return any(e.get("reason") == "TriggeredScaleUp" for e in (events or {}).get("items", []))


#: Bytes of a crashed container's log read to find its first error.
LOG_LIMIT = 256 * 1024
_ERROR_LINE = re.compile(r"^(minimaldask-entrypoint: |Error: |[A-Za-z_][\w.]*(Error|Exception)\b)")


def first_error(log: str) -> str | None:
    """The first error in a log: a whole Python traceback, or one line that names an error.

    The last lines of a crash often show only the consequence (``Nanny failed to
    start``); the first error shows the cause.
    """
    lines = log.splitlines()
    for i, line in enumerate(lines):
        text = _strip_log_prefix(line)
        if text.startswith("Traceback (most recent call last):"):
            block = [line]
            for following in lines[i + 1 :]:
                block.append(following)
                if following and not following[0].isspace():  # the exception line ends it
                    break
            return "\n".join(block)
        if _ERROR_LINE.match(text):
            return line
    return None


def _strip_log_prefix(line: str) -> str:
    # dask's own log lines start with a timestamp and a logger name: "2026-... - distributed.x - ERROR - ..."
    parts = line.split(" - ", 3)
    return parts[3] if len(parts) == 4 and parts[2].strip().isupper() else line


async def _crash_log(api: kr8s.asyncio.Api, namespace: str, pod: str) -> str:
    """What a crashed container printed: its first error, then its last lines.

    The previous run's log, else the current one's. Right after a crash the
    runtime may not hand out the log yet: a few tries.
    """
    reason = "empty"
    for attempt in range(5):
        for previous in (True, False):
            try:
                log = await pod_log(api, namespace, pod, previous=previous, limit_bytes=LOG_LIMIT)
                tail = "\n".join(log.rstrip().splitlines()[-LOG_TAIL:])
                if len(log.encode()) >= LOG_LIMIT:  # a long log: its end is not in the first part
                    tail = await pod_log(api, namespace, pod, tail=LOG_TAIL, previous=previous)
            except KubernetesError as e:
                reason = str(e)
                continue
            if log.strip() and "unable to retrieve container logs" not in log:
                first = first_error(log)
                if first and first.strip() not in tail:
                    return (
                        f"First error in its log:\n{first.rstrip()}\nLast lines of its log:\n{tail}"
                    )
                return f"Last lines of its log:\n{tail}"
            reason = log.strip() or "empty"
        await asyncio.sleep(0.5 * (attempt + 1))
    return f"Its log is unavailable: {reason}"


async def explain(api: kr8s.asyncio.Api, namespace: str, problem: PodProblem) -> str:
    """The message a user sees for ``problem``: for a crash, with the end of its log."""
    if problem.kind == "crash":
        log = await _crash_log(api, namespace, problem.pod)
        return (
            f"pod {problem.pod}: container {problem.container} {problem.message} "
            f"(CrashLoopBackOff). {log.rstrip()}"
        )
    if problem.kind == "unschedulable":
        return (
            f"pod {problem.pod} cannot be scheduled (Unschedulable): {problem.message.rstrip('. ')}. "
            "Ask for fewer resources (resources=..., scheduler_resources=...) or add nodes"
        )
    if problem.kind == "pull":
        return (
            f"pod {problem.pod}: cannot pull the image: {problem.message}. Check the image "
            "name and tag, and image_pull_secrets for a private registry"
        )
    return f"pod {problem.pod}: container {problem.container} cannot start: {problem.message}"


async def check_pods(
    api: kr8s.asyncio.Api,
    namespace: str,
    deployment: str,
    selector: str,
    crashes_count_after: float | None = None,
) -> list[Obj]:
    """The pods of a Deployment; raise :class:`ClusterStartError` if one cannot run.

    A quota or admission refusal shows on the Deployment, not on a pod. For
    ``crashes_count_after``, see :func:`pod_problem`.
    """
    pods = await list_objects(api, "Pod", namespace, selector)
    for pod in pods:
        if pod["metadata"].get("deletionTimestamp"):
            continue
        problem = pod_problem(pod, crashes_count_after)
        if problem is None:
            continue
        if problem.kind == "unschedulable" and await _scale_up_triggered(
            api, namespace, problem.pod
        ):
            continue
        raise ClusterStartError(await explain(api, namespace, problem))
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    owner = await get(api, "Deployment", namespace, deployment)
    if len(live) < ((owner or {}).get("spec") or {}).get("replicas", 0):
        failure = replica_failure(owner)
        if failure:
            raise ClusterStartError(f"Deployment {deployment} cannot create its pods: {failure}")
    return pods


def ready_since(pod: Mapping[str, Any]) -> float | None:
    """When the pod last became Ready (seconds since the epoch), or None if it is not Ready."""
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready" and cond.get("status") == "True":
            return _time(cond.get("lastTransitionTime"))
    return None


def pod_ready(pod: Mapping[str, Any]) -> bool:
    """Whether the pod's Ready condition is True and it is not being deleted."""
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return False
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (pod.get("status") or {}).get("conditions") or []
    )


def pod_phase(pod: Mapping[str, Any]) -> str:
    """A short state of the pod for progress displays: Pending, ContainerCreating, Running..."""
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return "Terminating"
    status = pod.get("status") or {}
    for cs in status.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting")
        if waiting:
            return str(waiting.get("reason", "Waiting"))
    return str(status.get("phase", "Pending"))


# -- pre-flight ----------------------------------------------------------------------------------

#: (verb, group, resource, subresource) a user needs to run a cluster.
REQUIRED_ACCESS: tuple[tuple[str, str, str, str], ...] = (
    ("create", "apps", "deployments", ""),
    ("patch", "apps", "deployments", ""),
    ("get", "apps", "deployments", ""),
    ("list", "apps", "deployments", ""),
    ("delete", "apps", "deployments", ""),
    ("list", "apps", "replicasets", ""),
    ("create", "", "services", ""),
    ("patch", "", "services", ""),
    ("get", "", "services", ""),
    ("delete", "", "services", ""),
    ("list", "", "pods", ""),
    ("patch", "", "pods", ""),
    ("get", "", "pods", "log"),
)
PORT_FORWARD_ACCESS = ("create", "", "pods", "portforward")
#: Rights to give the scheduler's janitor its own identity and Role (cost controls).
JANITOR_ACCESS: tuple[tuple[str, str, str, str], ...] = (
    ("create", "", "serviceaccounts", ""),
    ("patch", "", "serviceaccounts", ""),
    ("create", "rbac.authorization.k8s.io", "roles", ""),
    ("patch", "rbac.authorization.k8s.io", "roles", ""),
    ("create", "rbac.authorization.k8s.io", "rolebindings", ""),
    ("patch", "rbac.authorization.k8s.io", "rolebindings", ""),
    ("create", "", "configmaps", ""),
    ("patch", "", "configmaps", ""),
)


def _resource_name(group: str, resource: str, subresource: str) -> str:
    full = f"{resource}.{group}" if group else resource
    return f"{full}/{subresource}" if subresource else full


async def whoami(api: kr8s.asyncio.Api) -> str:
    """The user name the API server sees, or "your user" when it will not say."""
    try:
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
        async with api.call_api(
            "POST",
            version="authentication.k8s.io/v1",
            url="selfsubjectreviews",
            content=json.dumps(body),
        ) as r:
            return str(r.json()["status"]["userInfo"]["username"])
    except (kr8s.ServerError, httpx.HTTPError, KeyError):
        return "your user"


async def can(
    api: kr8s.asyncio.Api, namespace: str, verb: str, group: str, resource: str, sub: str = ""
) -> bool:
    """One SelfSubjectAccessReview: whether this user may ``verb`` ``resource`` in ``namespace``."""
    attributes = {"namespace": namespace, "verb": verb, "group": group, "resource": resource}
    if sub:
        attributes["subresource"] = sub
    body = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": attributes},
    }
    async with (
        api_errors("checking permissions"),
        api.call_api(
            "POST",
            version="authorization.k8s.io/v1",
            url="selfsubjectaccessreviews",
            content=json.dumps(body),
        ) as r,
    ):
        return bool(r.json().get("status", {}).get("allowed"))


async def missing_access(
    api: kr8s.asyncio.Api, namespace: str, needed: Iterable[tuple[str, str, str, str]]
) -> list[str]:
    """``verb resource`` for each of ``needed`` that this user may not do in ``namespace``."""
    needed = list(needed)
    answers = await asyncio.gather(*(can(api, namespace, *n) for n in needed))
    return [
        f"{verb} {_resource_name(g, r, s)}"
        for (verb, g, r, s), ok in zip(needed, answers, strict=True)
        if not ok
    ]


async def check_access(api: kr8s.asyncio.Api, namespace: str, port_forward: bool = False) -> None:
    """Raise :class:`ForbiddenError` naming every verb and resource the user lacks."""
    needed = [*REQUIRED_ACCESS, *([PORT_FORWARD_ACCESS] if port_forward else [])]
    answers = await asyncio.gather(*(can(api, namespace, *n) for n in needed))
    missing = [n for n, ok in zip(needed, answers, strict=True) if not ok]
    if not missing:
        return
    user = await whoami(api)
    lacks = ", ".join(f"{verb} {_resource_name(g, r, s)}" for verb, g, r, s in missing)
    if len(missing) == len(needed):
        raise ForbiddenError(
            f"{user} has no rights in namespace {namespace!r} (may not {lacks}); does the "
            "namespace exist? Pick one where you may work (namespace=...), or ask an "
            f"administrator: kubectl create rolebinding minimaldask --clusterrole=edit "
            f"--user=<you> -n {namespace}"
        )
    raise ForbiddenError(
        f"{user} may not {lacks} in namespace {namespace!r}, which minimaldask needs. Ask an "
        f"administrator for a Role that allows it, e.g. kubectl create rolebinding minimaldask "
        f"--clusterrole=edit --user=<you> -n {namespace}"
    )


async def check_namespace(api: kr8s.asyncio.Api, namespace: str) -> None:
    """Raise :class:`NamespaceNotFoundError` when ``namespace`` does not exist.

    A user who may not read namespaces learns it from :func:`check_access` instead.
    """
    k = Kind("v1", "namespaces")
    try:
        async with api.call_api("GET", version=k.api_version, url=f"namespaces/{namespace}"):
            return
    except kr8s.ServerError as e:
        code = _status(e)[0]
        if code == 404:
            raise NamespaceNotFoundError(
                f"namespace {namespace!r} does not exist; create it (kubectl create namespace "
                f"{namespace}) or pick an existing one with namespace=..."
            ) from e
        if code == 403:
            return
        async with api_errors(f"reading namespace {namespace!r}"):
            raise


async def node_architectures(api: kr8s.asyncio.Api) -> set[str] | None:
    """Architectures of the nodes (``linux/amd64``...), or None if this user may not list nodes."""
    try:
        async with api.call_api("GET", version="v1", url="nodes") as r:
            nodes = r.json().get("items", [])
    except kr8s.ServerError as e:
        if _status(e)[0] in (401, 403):
            return None
        async with api_errors("listing nodes"):
            raise
    return {
        f"{n['status']['nodeInfo']['operatingSystem']}/{n['status']['nodeInfo']['architecture']}"
        for n in nodes
        if n.get("status", {}).get("nodeInfo")
    }


# -- connections ---------------------------------------------------------------------------------


async def port_forward(
    api: kr8s.asyncio.Api, namespace: str, pod: str, port: int
) -> tuple[PortForward, int]:
    """Forward a free local port to ``port`` of ``pod`` over the API server; (handle, local port)."""
    obj = Pod({"metadata": {"name": pod, "namespace": namespace}}, api=api)
    forward = obj.portforward(port, local_port="auto")
    async with api_errors(f"port-forwarding to pod {namespace}/{pod}:{port}"):
        local = await forward.start()
    return forward, int(local)
