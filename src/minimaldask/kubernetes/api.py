"""The one module that talks to the Kubernetes API (through kr8s).

Server-side apply, deletes that wait until objects are gone, waits whose
failures say why (image pull, crash, unschedulable, quota, forbidden),
pre-flight checks, logs and port-forwards. Errors of the API are translated
into :mod:`minimaldask.exceptions` here, at one boundary (:func:`api_errors`).
Which objects a cluster has is not known here: callers pass
:class:`~minimaldask.kubernetes.objects.Kind` objects and names.

Every request has a connect and a read timeout, and ends by the deadline of
the operation it is part of (:func:`deadline`); a request that may be sent
twice is retried, with backoff, on 429 (after its Retry-After), 5xx, timeouts
and dropped connections, until that deadline. A port-forward is not a
request: see :class:`Forward`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import email.utils
import functools
import json
import logging
import random
import ssl
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Mapping,
)
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import httpx
import kr8s
import kr8s.asyncio

from minimaldask import contract
from minimaldask._version import __version__
from minimaldask.exceptions import (
    ClusterStartError,
    ForbiddenError,
    KubernetesError,
    NamespaceNotFoundError,
)
from minimaldask.kubernetes.objects import (
    DEPLOYMENT,
    NAMESPACE,
    NODE,
    POD,
    Access,
    Kind,
    Obj,
)
from minimaldask.kubernetes.status import (
    PodProblem,
    first_error,
    pod_problem,
    replica_failure,
    serving_pod,
)

logger = logging.getLogger("minimaldask.kubernetes")
T = TypeVar("T")
P = ParamSpec("P")

#: Field manager of every server-side apply.
FIELD_MANAGER = "minimaldask"
#: Seconds between two looks at the cluster while waiting.
POLL = 0.5
#: Seconds between two looks at a deleted cluster's objects (the kinds still there only).
GONE_POLL = 0.25
#: Lines of a crashed container's log shown in the error.
LOG_TAIL = 20
#: Bytes of a crashed container's log read to find its first error.
LOG_LIMIT = 256 * 1024

#: Seconds to open a connection to the API server (TCP and TLS).
CONNECT_TIMEOUT = 10.0
#: Seconds the API server may take to answer one request. Our requests are small
#: (one object, the pods of one cluster): a server that takes longer is stuck.
READ_TIMEOUT = 30.0
#: Seconds an operation without a deadline of its own may take (a list, logs, an apply):
#: all its requests, retries included.
DEFAULT_DEADLINE = 60.0
#: Seconds before the first retry; each next one waits twice as long, up to BACKOFF_MAX.
BACKOFF = 0.25
BACKOFF_MAX = 5.0
#: Seconds a request made once its deadline has passed still gets: enough to read what
#: the error about that deadline should say (a pod's log), from a server that answers.
LATE_ATTEMPT = 3.0
#: HTTP statuses after which a request that may be sent twice is sent again.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


# -- errors --------------------------------------------------------------------------------------


def _status(e: kr8s.ServerError) -> tuple[int, str, str]:
    code = e.response.status_code if e.response is not None else 0
    status = _status_object(e)
    return code, str(status.get("reason", "")), str(status.get("message") or e)


def _status_object(e: kr8s.ServerError) -> dict[str, Any]:
    return e.status if isinstance(e.status, dict) else {}


def server_of(api: Any) -> str:
    """The API server's URL as this client reaches it (for messages); "" before it is read."""
    return str(getattr(getattr(api, "auth", None), "server", "") or "")


@contextlib.asynccontextmanager
async def api_errors(action: str, api: Any = None) -> AsyncIterator[None]:
    """Translate what kr8s and httpx raise into minimaldask errors naming ``action``.

    With ``api``, the errors name its server too (read when they happen: the
    kubeconfig may not have been read before).
    """
    try:
        yield
    except kr8s.ServerError as e:
        code, reason, message = _status(e)
        # The API server says quota only in the message (the reason is Forbidden either way).
        if code == 403 and "exceeded quota" in message:
            raise KubernetesError(f"{action}: refused by a ResourceQuota: {message}") from e
        if code == 403:
            raise ForbiddenError(
                f"{action}: forbidden: {message}. Ask an administrator of the namespace "
                "for a Role that allows it (see docs/kubernetes.md, 'Permissions')"
            ) from e
        if code == 404 and (_status_object(e).get("details") or {}).get("kind") == "namespaces":
            raise NamespaceNotFoundError(f"{action}: {message}") from e
        raise KubernetesError(f"{action}: {reason or code}: {message}") from e
    except kr8s.APITimeoutError as e:
        at = f" at {server}" if (server := server_of(api)) else ""
        raise KubernetesError(
            f"{action}: the Kubernetes API server{at} did not answer in time"
        ) from e
    except (httpx.TransportError, OSError) as e:
        at = f" at {server}" if (server := server_of(api)) else ""
        raise KubernetesError(
            f"{action}: cannot reach the Kubernetes API server{at}: {_describe(e)}"
        ) from e


def _describe(e: BaseException) -> str:
    """``Type: message``; a group (httpx-ws' task group) by what is in it."""
    inner = getattr(e, "exceptions", None)  # an ExceptionGroup (a backport's on 3.10)
    if isinstance(inner, tuple) and inner:
        return "; ".join(_describe(x) for x in inner)
    text = str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


# -- deadlines and retries -----------------------------------------------------------------------


@dataclass(frozen=True)
class Deadline:
    """When the requests of one operation must be done (``time.monotonic()``), and its name."""

    at: float
    #: The limit as the user set it, for messages: ``startup_timeout=120s``.
    what: str

    def remaining(self) -> float:
        """Seconds left."""
        return self.at - time.monotonic()


_DEADLINE: contextvars.ContextVar[Deadline | None] = contextvars.ContextVar(
    "minimaldask_api_deadline", default=None
)


@contextlib.contextmanager
def deadline(at: float, what: str) -> Iterator[Deadline]:
    """Every API request made inside ends by ``at`` (``time.monotonic()``), retries included.

    ``what`` names the limit in errors (``startup_timeout=120s``). Inside an
    earlier deadline, the earlier one holds. It follows the task (a context
    variable): tasks started inside inherit it.
    """
    outer = _DEADLINE.get()
    mine = Deadline(at, what)
    token = _DEADLINE.set(outer if outer is not None and outer.at <= at else mine)
    try:
        yield _DEADLINE.get() or mine
    finally:
        _DEADLINE.reset(token)


def bounded(
    function: Callable[P, Coroutine[Any, Any, T]],
) -> Callable[P, Coroutine[Any, Any, T]]:
    """``function`` with one deadline for all its requests: :data:`DEFAULT_DEADLINE` from its call."""

    @functools.wraps(function)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        with deadline(time.monotonic() + DEFAULT_DEADLINE, f"{DEFAULT_DEADLINE:g}s"):
            return await function(*args, **kwargs)

    return wrapper


def _retry_after(response: httpx.Response | None) -> float | None:
    """The seconds a 429 or 503 asks the client to wait (Retry-After: seconds or a date)."""
    value = response.headers.get("Retry-After") if response is not None else None
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def retry_delay(e: BaseException, idempotent: bool, attempt: int) -> float | None:
    """Seconds to wait before sending a failed request again; None: do not send it again.

    A request that may not be sent twice (a create) is sent again only when the
    first cannot have reached the server: no connection was made, or a 429 (the
    API server's flow control refuses before it acts).
    """
    backoff = min(BACKOFF * 2.0 ** (attempt - 1), BACKOFF_MAX) * random.uniform(0.5, 1.0)
    cause = e.__cause__ if isinstance(e, kr8s.APITimeoutError) else e
    if _untrusted(e):  # a certificate that does not verify will not verify on a second try
        return None
    if isinstance(e, kr8s.ServerError):
        code = e.response.status_code if e.response is not None else 0
        if code not in RETRY_STATUSES or (code != 429 and not idempotent):
            return None
        after = _retry_after(e.response) if code in (429, 503) else None
        return backoff if after is None else after
    if isinstance(cause, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)):
        return backoff
    if not idempotent:
        return None
    if isinstance(cause, (httpx.TransportError, OSError)):  # timeouts, dropped connections
        return backoff
    return None


def _untrusted(e: BaseException | None) -> bool:
    seen = 0
    while e is not None and seen < 10:
        if isinstance(e, ssl.SSLCertVerificationError):
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


def _gave_up(action: str, server: str, limit: Deadline, attempts: int, last: BaseException) -> str:
    if isinstance(last, kr8s.ServerError):
        code = last.response.status_code if last.response is not None else 0
        why = (
            "kept refusing this client: too many requests (429)"
            if code == 429
            else f"kept failing: {code} {_status(last)[2]}"
        )
    elif isinstance(last, (kr8s.APITimeoutError, httpx.TimeoutException, asyncio.TimeoutError)):
        why = "did not answer"
    else:
        why = f"could not be reached ({_describe(last)})"
    at = f" at {server}" if server else ""
    return (
        f"{action}: the Kubernetes API server{at} {why} within {limit.what} "
        f"({attempts} tries). Check that it is up and reachable from here (kubectl cluster-info)"
    )


async def retrying(
    api: Any,
    action: str,
    attempt: Callable[[httpx.Timeout], Awaitable[T]],
    idempotent: bool = True,
) -> T:
    """``attempt(timeout)`` until it succeeds, retried as :func:`retry_delay` says, by the deadline.

    Each attempt gets the request timeouts, cut to what is left of the deadline
    (:func:`deadline`, else :data:`DEFAULT_DEADLINE` from now).
    """
    limit = _DEADLINE.get() or Deadline(
        time.monotonic() + DEFAULT_DEADLINE, f"{DEFAULT_DEADLINE:g}s"
    )
    attempts = 0
    while True:
        left = max(limit.remaining(), 0.1 if attempts else LATE_ATTEMPT)
        attempts += 1
        timeout = httpx.Timeout(min(READ_TIMEOUT, left), connect=min(CONNECT_TIMEOUT, left))
        try:
            # The hard stop: what the timeouts do not cover (reading a kubeconfig, TLS set-up).
            return await asyncio.wait_for(attempt(timeout), left + 1)
        except Exception as e:
            if isinstance(e, asyncio.TimeoutError):  # the hard stop: the deadline is out
                delay: float | None = 0.0 if idempotent else None
            else:
                delay = retry_delay(e, idempotent, attempts)
            if delay is None:
                raise
            if delay >= limit.remaining():
                await asyncio.sleep(max(limit.remaining(), 0))
                raise KubernetesError(_gave_up(action, server_of(api), limit, attempts, e)) from e
            logger.debug("%s: %s; again in %.1fs", action, _describe(e), delay)
        await asyncio.sleep(delay)


class _Api(kr8s.asyncio.Api):
    """kr8s' client, whose User-Agent names minimaldask and the cluster it works for."""

    agent = ""

    @property
    def __version__(self) -> str:
        # kr8s sends this as the User-Agent of every request, port-forwards included.
        return f"{self.agent} {super().__version__}".strip()


def user_agent(cluster: str = "", namespace: str = "") -> str:
    """What this client's requests call themselves: ``minimaldask/VERSION (cluster NS/NAME)``.

    The API server's audit log records it, so that its administrators (and
    ``bench/api_calls.py``) tell one cluster's requests from another's of the same user.
    kr8s' own ``kr8s/VERSION`` follows it in the header.
    """
    where = f" (cluster {namespace}/{cluster})" if cluster else ""
    return f"minimaldask/{__version__}{where}"


async def connect(cluster: str = "", namespace: str = "") -> kr8s.asyncio.Api:
    """A client of the API server, from the kubeconfig (``$KUBECONFIG``) or the pod's account.

    Its requests name ``cluster`` in their User-Agent (see :func:`user_agent`).
    """
    try:
        # Our own client, not kr8s' per-loop cache: a cached one may outlive its loop.
        api = _Api(bypass_factory=True)
    except (ValueError, KeyError, FileNotFoundError) as e:
        raise _no_configuration(e) from e
    api.agent = user_agent(cluster, namespace)
    # kr8s makes its HTTP client without timeouts: one hung request would hang everything.
    api.timeout = httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT)

    async def attempt(timeout: httpx.Timeout) -> kr8s.asyncio.Api:
        await api  # reads the kubeconfig, then asks the server its version
        return api

    try:
        async with api_errors("connecting to Kubernetes", api):
            return await retrying(api, "connecting to Kubernetes", attempt)
    except (ValueError, KeyError, FileNotFoundError) as e:
        raise _no_configuration(e) from e


def _no_configuration(e: Exception) -> KubernetesError:
    return KubernetesError(
        f"connecting to Kubernetes: no usable configuration ({e}); set KUBECONFIG "
        "or run inside a pod with a service account"
    )


async def _request(
    api: kr8s.asyncio.Api,
    method: str,
    *,
    action: str,
    idempotent: bool | None = None,
    missing_ok: bool = False,
    answers: frozenset[int] = frozenset(),
    **request: Any,
) -> httpx.Response | None:
    """One API request, retried if it may be sent twice; None if missing (with ``missing_ok``).

    GET, DELETE and PATCH (a server-side apply, a merge patch of values) may be
    sent twice; a POST only with ``idempotent=True`` (a review, which changes
    nothing). An error status in ``answers`` is returned as the response, not raised.
    """
    if idempotent is None:
        idempotent = method in ("GET", "DELETE", "PATCH")

    async def attempt(timeout: httpx.Timeout) -> httpx.Response | None:
        try:
            return await _send(api, method, timeout=timeout, **request)
        except kr8s.ServerError as e:
            code = _status(e)[0]
            if missing_ok and code == 404:
                return None
            if code in answers and e.response is not None:
                return e.response
            raise

    async with api_errors(action, api):
        return await retrying(api, action, attempt, idempotent)


def refusal(r: httpx.Response) -> kr8s.ServerError:
    """The error for the error response ``r``: its Status object's message, else its text."""
    try:
        status = r.json()
        message = str(status["message"])
    except (ValueError, KeyError, TypeError):
        status, message = r.text, f"HTTP {r.status_code}"
    return kr8s.ServerError(message, status=status, response=r)


async def _send(api: kr8s.asyncio.Api, method: str, **request: Any) -> httpx.Response:
    """One request; an error response raises ``kr8s.ServerError``.

    kr8s answers a 401 or a 403 by reading the credentials again and asking
    again, three times: right for an expired credential (401), but four
    requests for one answer when the request is simply not allowed (403),
    which the pre-flight and the leftovers check meet with a user of few
    rights. Only a 401 is left to kr8s.
    """
    async with api.call_api(method, raise_for_status=False, **request) as r:
        if r.status_code != 401:
            if r.is_error:
                raise refusal(r)
            return r
    async with api.call_api(method, **request) as r:
        return r


async def _call(
    api: kr8s.asyncio.Api,
    method: str,
    kind: Kind,
    namespace: str | None,
    name: str = "",
    *,
    action: str,
    subresource: str = "",
    params: Mapping[str, Any] | None = None,
    body: Any = None,
    headers: Mapping[str, str] | None = None,
    missing_ok: bool = False,
    idempotent: bool | None = None,
) -> Obj | None:
    url = "/".join(p for p in (kind.plural, name, subresource) if p)
    kwargs: dict[str, Any] = {}
    if params:
        kwargs["params"] = dict(params)
    if body is not None:
        kwargs["content"] = json.dumps(body)
    if headers:
        kwargs["headers"] = dict(headers)
    r = await _request(
        api,
        method,
        action=action,
        idempotent=idempotent,
        missing_ok=missing_ok,
        version=kind.api_version,
        namespace=namespace,
        url=url,
        **kwargs,
    )
    if r is None:
        return None
    out: Obj = r.json()
    return out


# -- apply and delete ----------------------------------------------------------------------------


async def discover(api: kr8s.asyncio.Api, api_version: str, kind_name: str) -> Kind:
    """The :class:`Kind` the API server serves for ``apiVersion`` and ``kind`` (API discovery)."""
    group, _, version = api_version.rpartition("/")
    path = f"apis/{group}/{version}" if group else f"api/{version}"
    r = await _request(
        api,
        "GET",
        action=f"finding where the API serves {kind_name} ({api_version})",
        base=f"/{path}",
        version="",
        url="",
    )
    assert r is not None
    resources = r.json().get("resources", [])
    for resource in resources:
        if resource.get("kind") == kind_name and "/" not in resource.get("name", "/"):
            return Kind(group, version, kind_name, resource["name"])
    raise ValueError(f"the API server serves no kind {kind_name!r} in {api_version!r}")


async def apply(api: kr8s.asyncio.Api, kind: Kind, obj: Mapping[str, Any]) -> Obj:
    """Create ``obj`` or update it in place, by server-side apply (field manager ``minimaldask``).

    Applying the same object twice changes nothing; changing a field updates
    the object in place. Returns the object as the API server stored it.
    """
    meta = obj.get("metadata") or {}
    name, namespace = meta.get("name"), meta.get("namespace")
    if not name or not namespace:
        raise ValueError(f"update_or_deploy needs metadata.name and metadata.namespace: {obj!r}")
    out = await _call(
        api,
        "PATCH",
        kind,
        namespace,
        name,
        action=f"applying {kind.name} {namespace}/{name}",
        params={"fieldManager": FIELD_MANAGER, "force": "true"},
        body=obj,
        headers={"Content-Type": "application/apply-patch+yaml"},
    )
    assert out is not None
    return out


async def create(api: kr8s.asyncio.Api, kind: Kind, obj: Mapping[str, Any]) -> Obj | None:
    """Create ``obj``; None when an object of that name exists already (it is left as it is).

    Not retried once it may have reached the server: a second create would find
    the first one's object and take it for another's.
    """
    meta = obj.get("metadata") or {}
    name, namespace = meta.get("name"), meta.get("namespace")
    try:
        return await _call(
            api,
            "POST",
            kind,
            namespace,
            action=f"creating {kind.name} {namespace}/{name}",
            params={"fieldManager": FIELD_MANAGER},
            body=obj,
        )
    except KubernetesError as e:
        cause = e.__cause__
        if isinstance(cause, kr8s.ServerError) and _status(cause)[0] == 409:
            return None
        raise


@bounded
async def update_or_deploy(obj: Mapping[str, Any], api: kr8s.asyncio.Api | None = None) -> Obj:
    """:func:`apply` for an object of any kind the API server serves (the article's function)."""
    api = api or await connect()
    kind = await discover(api, str(obj.get("apiVersion", "")), str(obj.get("kind", "")))
    return await apply(api, kind, obj)


async def get(api: kr8s.asyncio.Api, kind: Kind, namespace: str, name: str) -> Obj | None:
    """The object, or None when it does not exist."""
    return await _call(
        api,
        "GET",
        kind,
        namespace,
        name,
        action=f"reading {kind.name} {namespace}/{name}",
        missing_ok=True,
    )


async def list_objects(
    api: kr8s.asyncio.Api, kind: Kind, namespace: str, selector: str = ""
) -> list[Obj]:
    """Objects of ``kind`` in ``namespace`` matching the label ``selector``."""
    out = await _call(
        api,
        "GET",
        kind,
        namespace,
        action=f"listing {kind.plural} in namespace {namespace!r}",
        params={"labelSelector": selector} if selector else None,
    )
    assert out is not None
    items: list[Obj] = out.get("items", [])
    return items


async def delete(api: kr8s.asyncio.Api, kind: Kind, namespace: str, name: str) -> bool:
    """Delete one object (its dependents in the background). False if it did not exist."""
    out = await _call(
        api,
        "DELETE",
        kind,
        namespace,
        name,
        action=f"deleting {kind.name} {namespace}/{name}",
        body={"propagationPolicy": "Background"},
        missing_ok=True,
    )
    return out is not None


async def leftovers(
    api: kr8s.asyncio.Api, namespace: str, cluster: str, kinds: Iterable[Kind]
) -> list[str]:
    """``Kind/name`` of every object of ``kinds`` labelled as part of ``cluster``.

    Kinds this user may not list are not checked. One request at a time, to be
    light on the API server: a request per kind.
    """
    selector = contract.label_selector(cluster)
    left = []
    for kind in kinds:
        try:
            items = await list_objects(api, kind, namespace, selector)
        except ForbiddenError:
            continue
        left += [f"{kind.name}/{o['metadata']['name']}" for o in items]
    return left


async def delete_cluster(
    api: kr8s.asyncio.Api,
    namespace: str,
    cluster: str,
    objects: Iterable[tuple[Kind, str, bool]],
    kinds: Iterable[Kind],
    timeout: float,
) -> bool:
    """Delete ``objects`` (kind, name, optional) and wait until no object of ``kinds`` is left.

    The first object (the root) is deleted first, the others at once after it.

    An optional object (the janitor's, which a user without the rights to make
    it could not have made) may be forbidden to delete. Returns False when none
    of them existed.
    """

    async def one(kind: Kind, name: str, optional: bool) -> bool:
        try:
            return await delete(api, kind, namespace, name)
        except ForbiddenError:
            if not optional:
                raise
            return False

    # The first (the root: what it owns goes with it), then the rest at once; the
    # first failure in their order is told.
    todo = list(objects)
    existed = await one(*todo[0]) if todo else False
    results = await asyncio.gather(*(one(*o) for o in todo[1:]), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
        existed |= result
    kinds = list(kinds)
    deadline = time.monotonic() + timeout
    # While objects linger (pods ending), only their kinds are listed again, not all a
    # cluster may have; a full pass confirms the end, since a controller may still have
    # made an object (a ReplicaSet's pod) of a kind that was empty.
    look = kinds
    while True:
        left = await leftovers(api, namespace, cluster, look)
        if not left:
            if look == kinds:
                return existed
            look = kinds
            continue
        if time.monotonic() > deadline:
            raise KubernetesError(
                f"cluster {cluster!r} in namespace {namespace!r} was deleted but after "
                f"{timeout:g}s these objects are still there: {', '.join(left)}"
            )
        look = [k for k in kinds if any(o.startswith(f"{k.name}/") for o in left)]
        await asyncio.sleep(GONE_POLL)


async def set_replicas(
    api: kr8s.asyncio.Api, namespace: str, deployment: str, replicas: int
) -> None:
    """Change only the replicas of a Deployment (whatever else its spec says stays)."""
    await _call(
        api,
        "PATCH",
        DEPLOYMENT,
        namespace,
        deployment,
        action=f"scaling Deployment {namespace}/{deployment} to {replicas}",
        params={"fieldManager": FIELD_MANAGER},
        body={"spec": {"replicas": replicas}},
        headers={"Content-Type": "application/merge-patch+json"},
    )


async def merge_patch(
    api: kr8s.asyncio.Api,
    kind: Kind,
    namespace: str,
    name: str,
    patch: Mapping[str, Any],
    missing_ok: bool = False,
) -> None:
    """Merge ``patch`` into an object (JSON merge patch: ``None`` values remove keys)."""
    await _call(
        api,
        "PATCH",
        kind,
        namespace,
        name,
        action=f"updating {kind.name} {namespace}/{name}",
        body=dict(patch),
        headers={"Content-Type": "application/merge-patch+json"},
        missing_ok=missing_ok,
    )


# -- what went wrong -----------------------------------------------------------------------------


async def pod_log(
    api: kr8s.asyncio.Api,
    namespace: str,
    pod: str,
    tail: int | None = None,
    previous: bool = False,
    limit_bytes: int | None = None,
    container: str = "",
) -> str:
    """A pod's log (its last ``tail`` lines; the previous container's with ``previous``).

    ``limit_bytes`` reads at most that much from the start of the log;
    ``container`` names one of the pod's containers (required when it has several).
    """
    params: dict[str, Any] = {}
    if container:
        params["container"] = container
    if tail:
        params["tailLines"] = tail
    if limit_bytes:
        params["limitBytes"] = limit_bytes
    if previous:
        params["previous"] = "true"
    r = await _request(
        api,
        "GET",
        action=f"reading the log of pod {namespace}/{pod}",
        version=POD.api_version,
        namespace=namespace,
        url=f"{POD.plural}/{pod}/log",
        params=params,
    )
    assert r is not None
    return str(r.text)


async def _crash_log(api: kr8s.asyncio.Api, namespace: str, pod: str, container: str) -> str:
    """What a crashed container printed: its first error, then its last lines.

    The previous run's log, else the current one's. Right after a crash the
    runtime may not hand out the log yet: a few tries.
    """
    reason = "empty"
    for attempt in range(5):
        for previous in (True, False):
            try:
                log = await pod_log(
                    api,
                    namespace,
                    pod,
                    previous=previous,
                    limit_bytes=LOG_LIMIT,
                    container=container,
                )
                tail = "\n".join(log.rstrip().splitlines()[-LOG_TAIL:])
                if len(log.encode()) >= LOG_LIMIT:  # a long log: its end is not in the first part
                    tail = await pod_log(
                        api, namespace, pod, tail=LOG_TAIL, previous=previous, container=container
                    )
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


async def explain(
    api: kr8s.asyncio.Api, namespace: str, problem: PodProblem, deadline: str = ""
) -> str:
    """The message a user sees for ``problem``: for a crash, with the end of its log.

    A problem that time might have cured (:attr:`PodProblem.transient`) is told
    with the ``deadline`` it lasted until (``startup_timeout=120s``).
    """
    within = f" within {deadline}" if deadline else ""
    if problem.kind == "crash":
        log = await _crash_log(api, namespace, problem.pod, problem.container)
        return (
            f"pod {problem.pod}: container {problem.container} {problem.message} "
            f"(CrashLoopBackOff). {log.rstrip()}"
        )
    if problem.kind == "unschedulable":
        return (
            f"pod {problem.pod} cannot be scheduled (Unschedulable){within}: "
            f"{problem.message.rstrip('. ')}. Ask for fewer resources (resources=..., "
            "scheduler_resources=...), tolerate the nodes' taints (tolerations=...) or add "
            "nodes; a node pool that is adding a node may need a longer startup_timeout=..."
        )
    if problem.kind == "pull" and problem.transient:
        return (
            f"pod {problem.pod}: cannot pull the image{within}: {problem.message}. The "
            "registry refuses for now (a rate limit, an overloaded registry): try again "
            "later, or pull from a mirror (image=...)"
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

    A problem that time may cure (no node yet, a rate-limited pull) is no reason
    to fail: the caller waits for it until its deadline. A quota or admission
    refusal shows on the Deployment, not on a pod. For ``crashes_count_after``,
    see :func:`pod_problem`.
    """
    pods = await list_objects(api, POD, namespace, selector)
    for pod in pods:
        if pod["metadata"].get("deletionTimestamp"):
            continue
        problem = pod_problem(pod, crashes_count_after)
        if problem is None or problem.transient:
            continue
        raise ClusterStartError(await explain(api, namespace, problem))
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    owner = await get(api, DEPLOYMENT, namespace, deployment)
    if len(live) < ((owner or {}).get("spec") or {}).get("replicas", 0):
        failure = replica_failure(owner)
        if failure:
            raise ClusterStartError(f"Deployment {deployment} cannot create its pods: {failure}")
    return pods


# -- pre-flight ----------------------------------------------------------------------------------


async def server_version(api: kr8s.asyncio.Api) -> str:
    """The API server's version (``v1.33.13``): proof that it answers."""
    r = await _request(
        api, "GET", action="asking the API server its version", version="", base="/version"
    )
    assert r is not None
    return str(r.json().get("gitVersion", ""))


async def _review(
    api: kr8s.asyncio.Api,
    group: str,
    kind: str,
    spec: Mapping[str, Any],
    action: str,
    answers: frozenset[int] = frozenset(),
) -> httpx.Response:
    """POST one of the user's reviews of itself (``group``.k8s.io/v1): it changes nothing."""
    version = f"{group}.k8s.io/v1"
    body: dict[str, Any] = {"apiVersion": version, "kind": kind}
    if spec:  # a SelfSubjectReview has none
        body["spec"] = dict(spec)
    r = await _request(
        api,
        "POST",
        action=action,
        idempotent=True,
        answers=answers,
        version=version,
        url=kind.lower() + "s",
        content=json.dumps(body),
    )
    assert r is not None
    return r


async def whoami(api: kr8s.asyncio.Api) -> str:
    """The user name the API server sees, or "your user" when it will not say."""
    try:
        r = await _review(api, "authentication", "SelfSubjectReview", {}, "asking who this user is")
        return str(r.json()["status"]["userInfo"]["username"])
    except (KubernetesError, KeyError):
        return "your user"


async def can(api: kr8s.asyncio.Api, namespace: str, access: Access) -> bool:
    """One SelfSubjectAccessReview: whether this user has ``access`` in ``namespace``."""
    attributes = {
        "namespace": namespace,
        "verb": access.verb,
        "group": access.kind.group,
        "resource": access.kind.plural,
    }
    if access.subresource:
        attributes["subresource"] = access.subresource
    spec = {"resourceAttributes": attributes}
    r = await _review(api, "authorization", "SelfSubjectAccessReview", spec, "checking permissions")
    return bool(r.json().get("status", {}).get("allowed"))


async def rules(api: kr8s.asyncio.Api, namespace: str) -> list[dict[str, Any]]:
    """The rules that grant this user rights in ``namespace``: one SelfSubjectRulesReview.

    What they grant is granted; what they do not may still be (another authorizer than
    RBAC, a list the server marked incomplete): see :func:`missing_access`.
    """
    r = await _review(
        api,
        "authorization",
        "SelfSubjectRulesReview",
        {"namespace": namespace},
        "checking permissions",
        answers=frozenset({403, 404}),  # a server that does not offer it: ask one by one
    )
    if r.status_code in (403, 404):
        return []
    return list((r.json().get("status") or {}).get("resourceRules") or [])


def granted(rules: Iterable[Mapping[str, Any]], access: Access) -> bool:
    """Whether one of ``rules`` (RBAC's PolicyRule) grants ``access`` on any object.

    As RBAC matches: the verb, the API group and the resource (``pods/portforward`` for a
    subresource; ``*`` and ``*/portforward`` match too). A rule limited to named objects
    (``resourceNames``) grants nothing here: creating and listing name no object.
    """
    resource = access.kind.plural + (f"/{access.subresource}" if access.subresource else "")
    for rule in rules:
        if rule.get("resourceNames"):
            continue
        verbs, groups = rule.get("verbs") or [], rule.get("apiGroups") or []
        resources = rule.get("resources") or []
        if not ("*" in verbs or access.verb in verbs):
            continue
        if not ("*" in groups or access.kind.group in groups):
            continue
        if (
            "*" in resources
            or resource in resources
            or (access.subresource and f"*/{access.subresource}" in resources)
        ):
            return True
    return False


async def missing_access(
    api: kr8s.asyncio.Api,
    namespace: str,
    needed: Iterable[Access],
    known: Awaitable[list[dict[str, Any]]] | None = None,
) -> list[Access]:
    """Those of ``needed`` that this user does not have in ``namespace``.

    One SelfSubjectRulesReview grants most (an RBAC Role: all of them in one request,
    not one each); each right it does not grant is asked on its own
    (SelfSubjectAccessReview), which every authorizer answers. ``known``: the rules
    already asked for (a Future, which several checks may await).
    """
    needed = list(dict.fromkeys(needed))
    mine = await (known if known is not None else rules(api, namespace))
    unknown = [n for n in needed if not granted(mine, n)]
    answers = await asyncio.gather(*(can(api, namespace, n) for n in unknown))
    return [n for n, ok in zip(unknown, answers, strict=True) if not ok]


async def check_access(
    api: kr8s.asyncio.Api,
    namespace: str,
    needed: Iterable[Access],
    known: Awaitable[list[dict[str, Any]]] | None = None,
) -> None:
    """Raise :class:`ForbiddenError` naming every right of ``needed`` the user lacks."""
    needed = list(dict.fromkeys(needed))
    missing = await missing_access(api, namespace, needed, known)
    if not missing:
        return
    user = await whoami(api)
    lacks = ", ".join(map(str, missing))
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
    r = await _request(
        api,
        "GET",
        action=f"reading namespace {namespace!r}",
        answers=frozenset({403, 404}),
        version=NAMESPACE.api_version,
        url=f"{NAMESPACE.plural}/{namespace}",
    )
    if r is not None and r.status_code == 404:
        raise NamespaceNotFoundError(
            f"namespace {namespace!r} does not exist; create it (kubectl create namespace "
            f"{namespace}) or pick an existing one with namespace=..."
        )


async def node_architectures(api: kr8s.asyncio.Api) -> set[str] | None:
    """Architectures of the nodes (``linux/amd64``...), or None if this user may not list nodes."""
    r = await _request(
        api,
        "GET",
        action="listing nodes",
        answers=frozenset({401, 403}),
        version=NODE.api_version,
        url=NODE.plural,
    )
    if r is None or r.status_code in (401, 403):
        return None
    nodes = r.json().get("items", [])
    return {
        f"{n['status']['nodeInfo']['operatingSystem']}/{n['status']['nodeInfo']['architecture']}"
        for n in nodes
        if n.get("status", {}).get("nodeInfo")
    }


# -- connections ---------------------------------------------------------------------------------

#: Seconds a new connection through a port-forward waits for a pod to serve it (a
#: scheduler pod being replaced), as for a server that restarts; then it is closed.
WAIT_FOR_POD = 30.0
#: Seconds stopping a port-forward waits for its connections to end.
STOP_WAIT = 5.0
#: Seconds between the pings that keep a forwarded connection's websocket alive; one
#: unanswered for as long, while nothing else came either, ends it (a dead API server or
#: node is noticed). See :class:`_Keepalive`.
WS_PING = 15.0
#: Seconds a ping's deadline waits for what arrived while the event loop was held.
LATE_LOOK = 0.5
#: Seconds between two looks for a running pod while a port-forward's connection waits for one.
PICK_EVERY = 0.25
#: Seconds between two dials of a pod that refused a forwarded connection (its server not
#: listening yet); the client's first bytes go again.
REDIAL_EVERY = 0.1
#: Bytes of a connection's first flight kept to send again; a longer one is not replayed.
REPLAY_LIMIT = 1 << 20


class Forward:
    """A local port whose every connection goes over the API server to the pod that serves now.

    Each new connection asks which pod of ``selector`` serves
    (:func:`~minimaldask.kubernetes.status.serving_pod`): after a pod is
    replaced (killed, evicted, out of memory), the next connection reaches the
    new one. While none runs, a new connection waits for one (up to
    WAIT_FOR_POD), as for a server that restarts: closed at once, a TLS
    handshake would fail for good. A pod that runs but does not listen yet
    refuses the dial, which the pod's node reports on the error channel before
    anything reached the server: the connection is dialled again every
    REDIAL_EVERY with the bytes its client sent so far (:class:`_Flight`), so a
    start reaches its scheduler as soon as it listens rather than a readiness
    probe later. kr8s' PortForward does none of this: aimed at a Pod it keeps
    trying the old pod's name; aimed at a Service it keeps the first pod it
    picked until that one is gone, a terminating one included.

    Not a plain request: finding the pod has its own deadline (WAIT_FOR_POD),
    the websocket's upgrade has the client's connect and read timeouts, then it
    lives as long as its connection, and pings (WS_PING) end it when the other
    side is gone (:class:`_Keepalive`: not when the local reader is the slow one).
    """

    def __init__(self, api: kr8s.asyncio.Api, namespace: str, selector: str, port: int) -> None:
        self.api, self.namespace, self.selector, self.port = api, namespace, selector, port
        #: The local port, once started.
        self.local_port = 0
        #: The pod the last connection reached.
        self.pod: str | None = None
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task[Any]] = set()

    async def start(self) -> int:
        """Listen on a free port of 127.0.0.1; returns it."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.local_port = int(self._server.sockets[0].getsockname()[1])
        return self.local_port

    async def stop(self) -> None:
        """Stop listening and end every forwarded connection (waiting STOP_WAIT at most)."""
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            # A websocket's close handshake is shielded from cancellation: bounded here.
            _, stuck = await asyncio.wait(set(self._connections), timeout=STOP_WAIT)
            if stuck:
                logger.warning(
                    "port-forward of port %d: %d connection(s) did not end within %gs",
                    self.port,
                    len(stuck),
                    STOP_WAIT,
                )
        self._server = None

    async def _pick(self) -> str | None:
        """The pod to reach, once one runs; None if none does by the deadline."""
        while True:
            pods = await list_objects(self.api, POD, self.namespace, self.selector)
            pod = serving_pod(pods)
            limit = _DEADLINE.get()
            if pod or limit is None or limit.remaining() < PICK_EVERY:
                break
            # Often: a start waits here for its scheduler's container.
            await asyncio.sleep(PICK_EVERY)
        if pod and pod != self.pod:
            logger.info("port-forward of port %d reaches pod %s/%s", self.port, self.namespace, pod)
        self.pod = pod
        return pod

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        # A connection's task inherits the context in which the server started: the
        # deadline of a start long over. Its own, then.
        _DEADLINE.set(Deadline(time.monotonic() + WAIT_FOR_POD, f"{WAIT_FOR_POD:g}s"))
        pod = None
        flight = _Flight()
        try:
            while True:
                pod = await self._pick()
                if pod is None:
                    logger.debug("port-forward of port %d: no pod runs", self.port)
                    return
                flight.refused = None
                try:
                    await self._dial(pod, reader, writer, flight)
                    return
                except Exception:
                    # Raised through httpx-ws' task group: the flight says what it was.
                    limit = _DEADLINE.get()
                    if (
                        flight.refused is None
                        or flight.data is None  # not replayable
                        or reader.at_eof()  # its client is gone
                        or limit is None
                        or limit.remaining() < REDIAL_EVERY
                    ):
                        raise
                    if flight.refusals == 0:
                        logger.debug(
                            "port-forward to %s:%d refused (not listening yet?): dialling "
                            "again every %gs: %s",
                            pod,
                            self.port,
                            REDIAL_EVERY,
                            flight.refused,
                        )
                    flight.refusals += 1
                    await asyncio.sleep(REDIAL_EVERY)
        except asyncio.CancelledError:
            # stop() ends this connection. Not re-raised: asyncio's stream server reports
            # a cancelled connection task as an error.
            return
        except Exception as e:  # one connection: say why it ended, and serve the next
            logger.debug("port-forward to %s:%d ended: %s", pod, self.port, _describe(e))
        finally:
            self._connections.discard(task)
            writer.close()

    async def _dial(
        self,
        pod: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        flight: _Flight,
    ) -> None:
        async with self.api.open_websocket(
            version=POD.api_version,
            namespace=self.namespace,
            url=f"{POD.plural}/{pod}/portforward",
            params={"ports": str(self.port)},
            # httpx-ws' own keepalive takes a pong queued behind data that the
            # local reader has not taken yet for silence: ours does not.
            keepalive_ping_interval_seconds=None,
        ) as ws:
            await _relay(ws, reader, writer, flight)


class _Refused(ConnectionError):
    """The pod refused a forwarded connection: nothing reached a server."""


def _refusal(message: str) -> bool:
    """Whether the error channel says the pod-side dial was refused (nothing listens).

    The node's runtime dials the port inside the pod's network namespace when the
    stream opens, and reports a failed dial with Go's error text, e.g. containerd:
    ``error forwarding port 8786 to pod ...: failed to connect to localhost:8786
    inside namespace ...: dial tcp 127.0.0.1:8786: connect: connection refused``.
    """
    return "connect: connection refused" in message


class _Flight:
    """What a forwarded connection's client sent while its pod had not answered yet.

    Sent again when the pod refused the dial: no byte of it reached a server
    then. None once the pod answered (nothing is replayed after that) or once it
    grew past REPLAY_LIMIT.
    """

    def __init__(self) -> None:
        self.data: bytearray | None = bytearray()
        #: Dials refused so far.
        self.refusals = 0
        #: Why the last dial was refused (the node's words); None if it was not.
        self.refused: str | None = None

    def sent(self, chunk: bytes) -> None:
        """The client sent ``chunk`` towards the pod."""
        if self.data is not None:
            self.data += chunk
            if len(self.data) > REPLAY_LIMIT:
                self.data = None

    def answered(self) -> None:
        """The pod's server sent its first bytes: it took the connection."""
        self.data = None


class _Keepalive:
    """Whether a forwarded connection's other side is gone: pings, judged fairly.

    httpx-ws takes a websocket's frames off the network in the background and
    queues them (512 at most) until the relay takes them; while that queue is
    full it reads nothing more, a pong included. Its own keepalive then ends a
    connection whose API server answered at once, because the local reader
    (a dask client on a busy or starved machine, a large result) is slower than
    the pod: with a local websocket server and pings every second, a reader
    taking 10 ms per 32 KiB frame lost its connection after 2.1 s
    (tests/integration/test_forward_keepalive.py). Here a ping unanswered for
    WS_PING ends the connection only if the relay has waited on an empty queue
    for all that time: nothing at all came, so nothing hides the pong. And the
    look at the deadline waits LATE_LOOK more, so that a pong that arrived while
    the event loop was held (a long pause of the process) is counted first.
    """

    def __init__(self) -> None:
        #: Since when the relay has waited for a frame (monotonic); None while it delivers one.
        self.idle_since: float | None = time.monotonic()

    def silent_for(self, seconds: float) -> bool:
        """Whether the relay has waited on an empty queue for ``seconds`` at least."""
        return self.idle_since is not None and time.monotonic() - self.idle_since >= seconds

    async def run(self, ws: Any) -> None:
        """Ping every WS_PING; raise ConnectionError when the other side is silent."""
        while True:
            await asyncio.sleep(WS_PING)
            pong = await ws.ping()
            while True:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(pong.wait(), WS_PING)
                # What came while the loop was held is read first.
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(pong.wait(), LATE_LOOK)
                if pong.is_set():
                    break
                if self.silent_for(WS_PING):
                    raise ConnectionError(f"no answer to a ping for {WS_PING:g}s")


async def _relay(
    ws: Any,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    flight: _Flight | None = None,
) -> None:
    """Copy bytes both ways until one side ends (Kubernetes' port-forward websocket protocol).

    Every frame starts with its channel: 0 carries the data, 1 the errors; the
    first frame of each channel names the port. A silent other side ends it
    (:class:`_Keepalive`). With a ``flight``, what it holds goes first, and a
    refused dial raises :class:`_Refused`.
    """
    keepalive = _Keepalive()
    flight = flight or _Flight()

    async def to_pod() -> None:
        if flight.data:
            await ws.send_bytes(b"\x00" + bytes(flight.data))
        while data := await reader.read(64 * 1024):
            flight.sent(data)
            await ws.send_bytes(b"\x00" + data)

    async def from_pod() -> None:
        seen: set[int] = set()
        while True:
            keepalive.idle_since = time.monotonic()
            message = await ws.receive_bytes()
            keepalive.idle_since = None
            channel, data = message[0], message[1:]
            if channel not in seen:
                seen.add(channel)
            elif channel == 1:
                error = data.decode(errors="replace")
                if flight.data is not None and _refusal(error):
                    flight.refused = error
                    raise _Refused(error)
                raise ConnectionError(error)
            elif data:
                flight.answered()
                writer.write(data)
                await writer.drain()

    tasks = [
        asyncio.ensure_future(to_pod()),
        asyncio.ensure_future(from_pod()),
        asyncio.ensure_future(keepalive.run(ws)),
    ]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if tasks[1] not in done and flight.data is not None:
            # A refusal may come just after the send that it made fail: read it first.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait({tasks[1]}, timeout=LATE_LOOK)
            done = {t for t in tasks if t.done()}
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    errors = [e for t in done if not t.cancelled() and (e := t.exception()) is not None]
    for error in sorted(errors, key=lambda e: not isinstance(e, _Refused)):
        raise error


async def port_forward(api: kr8s.asyncio.Api, namespace: str, selector: str, port: int) -> Forward:
    """Forward a free local port to ``port`` of the pod of ``selector`` that serves now."""
    forward = Forward(api, namespace, selector, port)
    await forward.start()
    return forward
