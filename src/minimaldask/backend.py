"""What a backend does for a MinimalCluster: start, scale, close, logs, list, delete.

A backend owns where the scheduler and workers run (processes on this
machine, pods in Kubernetes). The cluster owns the dask side: which workers
to retire, moving their data first, the client-facing API.
"""

from __future__ import annotations

import abc
import asyncio
import importlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from distributed.core import rpc
from distributed.security import Security

if TYPE_CHECKING:
    from minimaldask.spec import ClusterSpec

#: Counts the workers the scheduler has connected and running.
WorkerCounter = Callable[[], Awaitable[int]]
#: Waits until the scheduler told of a worker added or removed since the last call, or for
#: the given seconds at most: a wait for workers counts again when there is news, not later.
WorkerNews = Callable[[float], Awaitable[None]]


async def until_news(news: WorkerNews | None, seconds: float) -> None:
    """Wait for ``news`` of the workers, ``seconds`` at most (all of them without news)."""
    await (asyncio.sleep(seconds) if news is None else news(seconds))


#: Reports progress to the user (one line per call).
Logger = Callable[[str], None]


@dataclass
class ClusterInfo:
    """What ``list_clusters`` reports about one cluster."""

    name: str
    namespace: str
    backend: str
    scheduler_address: str = ""
    workers: int = 0
    requested_workers: int = 0
    created: float | None = None
    details: dict[str, Any] = field(default_factory=dict)


async def scheduler_answers(address: str, security: Security | None = None) -> bool:
    """Whether a dask scheduler answers at ``address`` within a few seconds."""
    args = security.get_connection_args("client") if security else {}
    try:
        async with rpc(address, timeout=2, connection_args=args) as r:
            await asyncio.wait_for(r.identity(), 3)
    except (OSError, asyncio.TimeoutError):
        return False
    return True


class Backend(abc.ABC):
    """Runs the scheduler and workers of one cluster."""

    #: Name used for ``backend=...``.
    name: ClassVar[str]
    #: Whether adaptive scaling runs in the scheduler (the janitor) rather than in
    #: this client (dask's Adaptive), so that it goes on when the client is gone.
    adapts_in_scheduler: ClassVar[bool] = False

    def __init__(self, spec: ClusterSpec, log: Logger) -> None:
        self.spec = spec
        self.log = log
        #: Names of the workers asked for (started or starting).
        self.requested: set[str] = set()
        #: This handle created the cluster (rather than attached to a running one).
        self.created = False
        #: How this client connects to the scheduler (TLS), once the cluster is known.
        self.security: Security | None = None

    @abc.abstractmethod
    async def start(self, attach_only: bool = False, update: bool = False) -> str:
        """Create the cluster, or attach to a running one of the same name.

        Returns the scheduler address as this client reaches it, once the
        scheduler answers. With ``attach_only``, raise
        :class:`~minimaldask.exceptions.ClusterNotFoundError` instead of creating.
        With ``update``, a running cluster takes this spec's options.
        """

    @abc.abstractmethod
    async def wait_for_workers(
        self, n: int, count: WorkerCounter, timeout: float, news: WorkerNews | None = None
    ) -> None:
        """Wait until ``count()`` reaches ``n``; fail fast when a worker cannot start.

        ``count()`` is asked again when ``news`` (if given) returns, or after a
        pause of the backend's own.
        """

    @abc.abstractmethod
    async def scale(self, n: int, scheduler: Any) -> None:
        """Run ``n`` workers; those that go are retired through ``scheduler`` first."""

    async def remove(self, names: list[str]) -> None:
        """Remove these workers, already retired (by dask's Adaptive, in the client)."""
        raise NotImplementedError(f"the {self.name} backend adapts in the scheduler")

    @abc.abstractmethod
    async def close(self) -> None:
        """Delete the cluster: every process or object it has. Idempotent."""

    async def disconnect(self) -> None:  # noqa: B027  (optional hook)
        """Release what this client holds (a port-forward), leaving the cluster running."""

    @abc.abstractmethod
    async def logs(self) -> dict[str, str]:
        """Logs of the scheduler and workers as the backend sees them (process, pod)."""

    async def adapt(
        self, scheduler: Any, minimum: int, maximum: int | None, **policy: float
    ) -> dict[str, Any]:
        """Store the adaptive policy and hand it to the janitor (``maximum=None``: off)."""
        raise NotImplementedError(f"the {self.name} backend adapts in the client")

    @property
    def dashboard_link(self) -> str | None:
        """Dashboard URL as this client reaches it, if the backend knows it better than dask."""
        return None

    @classmethod
    @abc.abstractmethod
    async def delete(cls, name: str, namespace: str, timeout: float) -> bool:
        """Delete the named cluster and wait until it is gone. False if there was none."""

    @classmethod
    @abc.abstractmethod
    async def list_clusters(cls, namespace: str) -> list[ClusterInfo]:
        """The clusters of this backend in ``namespace``."""


#: Where each backend lives, by the value of ``backend=...``; imported on demand:
#: the Kubernetes client is not needed to run locally.
BACKENDS = {
    "kubernetes": "minimaldask.kubernetes.backend:KubernetesBackend",
    "local": "minimaldask.local.backend:LocalBackend",
}


def backend_class(name: str) -> type[Backend]:
    """The backend class for ``backend=name``."""
    try:
        module, _, attribute = BACKENDS[name].partition(":")
    except KeyError:
        raise ValueError(
            f"invalid backend={name!r}: expected one of {', '.join(map(repr, BACKENDS))}"
        ) from None
    cls: type[Backend] = getattr(importlib.import_module(module), attribute)
    return cls
