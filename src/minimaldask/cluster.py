"""MinimalCluster: a dask cluster manager over the kubernetes and local backends.

The async methods (``_start``, ``_scale``, ``_close``) hold the logic; the
sync API is derived from them with ``self.sync``, as in distributed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
import warnings
from collections.abc import Generator
from typing import Any

from distributed.core import Status, rpc
from distributed.deploy.cluster import Cluster
from distributed.objects import SchedulerInfo
from distributed.security import Security
from distributed.utils import Logs

from minimaldask import contract
from minimaldask.backend import backend_class
from minimaldask.pod import tlsfix
from minimaldask.spec import ClusterSpec

logger = logging.getLogger("minimaldask")

#: Seconds the scheduler may go without answering a heartbeat before the handle says so.
HEARTBEAT_SILENCE = 5.0
#: Seconds close() waits for the heartbeat to stop (one answer's wait, 10 s, and its pause).
HEARTBEAT_STOP = 12.0
#: Seconds to the first count after news of a worker that the scheduler did not run yet (it
#: learns so from the worker milliseconds after its registration); doubling after.
NEWS_SETTLE = 0.02


class MinimalCluster(Cluster):
    """A dask cluster that exists for as long as you need it.

    Options are those of :meth:`minimaldask.spec.ClusterSpec.from_options`
    (``name``, ``namespace``, ``workers``, ``backend``, ``image``,
    ``pip_packages``, ``os_packages``, ``apk_packages``, ``env``,
    ``resources``, ``idle_timeout``, ...), all validated before anything
    starts; defaults come from dask config (``minimaldask.*``).

    Starting a cluster whose name is already running attaches to it: of two
    processes that start one name at once, exactly one creates it. An attaching
    handle changes only the number of workers, unless ``update=True``.

    Parameters
    ----------
    shutdown_on_close:
        Delete the cluster on :meth:`close`. The default: the handle that
        created the cluster deletes it, one that attached leaves it running
        (to end itself when idle). ``False`` only disconnects.
    update:
        When the cluster runs already with other options (env, image,
        resources...), apply this handle's: the scheduler restarts.
    asynchronous, loop, quiet:
        As for every dask cluster manager.

    Examples
    --------
    >>> from distributed import Client
    >>> with MinimalCluster(workers=3, backend="local") as cluster:  # doctest: +SKIP
    ...     client = Client(cluster)
    ...     cluster.scale(1)

    """

    def __init__(
        self,
        *,
        shutdown_on_close: bool | None = None,
        update: bool = False,
        asynchronous: bool = False,
        loop: Any = None,
        quiet: bool = False,
        _attach_only: bool = False,
        **options: Any,
    ) -> None:
        self.spec = ClusterSpec.from_options(**options)
        self._shutdown_on_close = shutdown_on_close
        self._update = update
        self._attach_only = _attach_only
        #: Why the cluster ended itself (idle, no client, max lifetime), once it has.
        self.shutdown_reason: str | None = None
        #: What the cluster's janitor cannot do now (delete the cluster, say), if anything.
        self.janitor_error: str | None = None
        self._janitor_info: dict[str, Any] = {}
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._heartbeat_stopped = False
        self._adapting = False
        #: Set when the scheduler tells of a worker added or removed; cleared when read.
        self._worker_news = asyncio.Event()
        #: The next wait for news while a new worker may not run yet (0: no news of late).
        self._settle = 0.0
        super().__init__(asynchronous=asynchronous, loop=loop, quiet=quiet, name=self.spec.name)
        #: How clients connect: plain TCP until the cluster's TLS credentials are known.
        self.security = Security()
        self._backend = backend_class(self.spec.backend)(self.spec, self._log)
        if not self.asynchronous:
            self._loop_runner.start()
            self.sync(self._start)

    @classmethod
    def from_name(
        cls, name: str, namespace: str | None = None, backend: str | None = None, **kwargs: Any
    ) -> MinimalCluster:
        """Reconnect to a running cluster; closing the handle leaves the cluster running."""
        return cls(name=name, namespace=namespace, backend=backend, _attach_only=True, **kwargs)

    # -- lifecycle ----------------------------------------------------------------------------

    def __await__(self) -> Generator[Any, None, MinimalCluster]:
        async def _() -> MinimalCluster:
            if self.status == Status.created:
                await self._start()
            return self

        return _().__await__()

    @property
    def shutdown_on_close(self) -> bool:
        """Whether :meth:`close` deletes the cluster (by default: if this handle created it)."""
        if self._shutdown_on_close is None:
            return bool(self._backend.created)
        return self._shutdown_on_close

    @shutdown_on_close.setter
    def shutdown_on_close(self, value: bool) -> None:
        self._shutdown_on_close = value

    async def _start(self) -> None:
        if self.status != Status.created:
            return
        self.status = Status.starting
        spec = self.spec
        try:
            address = await self._backend.start(attach_only=self._attach_only, update=self._update)
            if self._backend.security is not None:
                # Client(cluster) takes it from here: TLS with the cluster's client certificate.
                self.security = self._backend.security
                # This process speaks TLS to the cluster now: see minimaldask.pod.tlsfix.
                tlsfix.install(say=logger.info)
            self.scheduler_comm = rpc(
                address, connection_args=self.security.get_connection_args("client")
            )
            await super()._start()
            self._heartbeat_task = asyncio.ensure_future(self._heartbeat())
            if not self._attach_only:
                if not self._backend.created:  # attached: bring its workers to this number
                    await self._backend.scale(spec.workers, self._scheduler)
                self._log(f"Waiting for {spec.workers} worker(s) to connect")
                await self._await_workers(spec.workers, spec.startup_timeout)
        except BaseException:
            await self._abort()
            raise
        self._log(
            f"Cluster {spec.name!r} ({spec.backend}) is ready: {self.scheduler_address}, "
            f"dashboard {self.dashboard_link}"
        )

    async def _abort(self) -> None:
        """Clean up after a failed start, unless the user asked to keep the objects."""
        if self._attach_only:
            await self._backend.disconnect()
        elif self.spec.keep_on_failure:
            self._log(f"Start failed; keeping cluster {self.spec.name!r} (keep_on_failure=True)")
            await self._backend.disconnect()
        else:
            self._log(f"Start failed; removing what was created for {self.spec.name!r}")
            try:
                await self._backend.close()
            except Exception as cleanup:  # the start's own error is the one to raise
                spec = self.spec
                # Said even when quiet (the CLI is): objects may be left, and cost.
                with contextlib.suppress(Warning):  # warnings as errors must not hide the start's
                    self._tell(
                        f"Removing {spec.name!r} after the failed start failed too: {cleanup}. "
                        "Its objects may be left: delete them with delete_dask_cluster("
                        f"namespace={spec.namespace!r}, name={spec.name!r}, "
                        f"backend={spec.backend!r})"
                    )
        self.status = Status.closed
        if self.scheduler_comm:
            await self.scheduler_comm.close_rpc()

    @property
    def _scheduler(self) -> Any:
        if self.scheduler_comm is None:
            raise RuntimeError(f"cluster {self.spec.name!r} is not connected to its scheduler")
        return self.scheduler_comm

    async def _count_workers(self) -> int:
        # A few bytes per worker (identity() sends each worker's metrics): asked often.
        return len(await self._scheduler.ncores_running())

    async def _news_of_workers(self, within: float) -> None:
        """Wait until the scheduler told of a worker added or removed, ``within`` seconds at most.

        The scheduler tells this handle at once (distributed's worker-status
        subscription, started with the handle), so a wait for workers counts
        again when one registered, not at its next pause. A worker counts once it
        runs, which its scheduler learns from it just after telling of it: after
        news, the waits are short (NEWS_SETTLE, doubling) until they reach ``within``.
        """
        wait = min(self._settle, within) if self._settle else within
        try:
            await asyncio.wait_for(self._worker_news.wait(), wait)
        except asyncio.TimeoutError:
            self._settle = self._settle * 2 if self._settle and self._settle < within else 0.0
        else:
            self._worker_news.clear()
            self._settle = NEWS_SETTLE

    async def _await_workers(self, n: int, timeout: float) -> None:
        """Wait until the scheduler runs ``n`` workers (the backend's checks on the way)."""
        await self._backend.wait_for_workers(
            n, self._count_workers, timeout, news=self._news_of_workers
        )

    def _tell(self, message: str) -> None:
        """Say ``message`` even when quiet: in this handle's log, and as a warning."""
        self._log(message)
        warnings.warn(message, RuntimeWarning, stacklevel=2)

    async def _heartbeat(self) -> None:
        """Tell the plugin this handle is alive; learn if the cluster ends, or cannot.

        A scheduler that answers no heartbeat for :data:`HEARTBEAT_SILENCE` is
        said to be unreachable, once; when it answers again after any silence,
        whether it is a new one (its pod was replaced: what the old one held is gone).
        """
        handle = f"{socket.gethostname()}:{os.getpid()}:{id(self)}"
        told, silent_since = False, 0.0
        # Until close() stops it: after the cluster ends, the janitor may still say that
        # it cannot delete it.
        while not self._heartbeat_stopped:
            began = time.monotonic()
            try:
                info = await asyncio.wait_for(
                    getattr(self._scheduler, contract.HEARTBEAT)(handle=handle), 10
                )
            except (OSError, asyncio.TimeoutError) as e:
                silent_since = silent_since or began
                ended = self.shutdown_reason is not None  # its silence is no news then
                if not told and not ended and time.monotonic() - silent_since >= HEARTBEAT_SILENCE:
                    told = True
                    self._tell(
                        f"The scheduler of {self.spec.name!r} has not answered for "
                        f"{time.monotonic() - silent_since:.0f}s ({type(e).__name__}: {e}); its "
                        "pod may be restarting (replaced, evicted, out of memory). This handle "
                        "reaches the new one once it runs"
                    )
                await asyncio.sleep(1)
                continue
            except Exception as e:  # a scheduler without the plugin
                self._log(f"The scheduler runs no minimaldask plugin ({e}); no self-shutdown")
                return
            if not isinstance(info, dict):  # an older scheduler answers unknown handlers with None
                self._log("The scheduler runs no minimaldask plugin; no self-shutdown")
                return
            if silent_since:
                await self._answers_again(time.monotonic() - silent_since, told)
            told, silent_since = False, 0.0
            self._janitor_info = info
            error = info.get("janitor_error")
            if error != self.janitor_error:
                self.janitor_error = error
                if error:  # the truth, once: the cluster cannot end itself right now
                    warnings.warn(error, RuntimeWarning, stacklevel=1)
                    self._log(error)
            if info.get("shutdown_reason") and not self.shutdown_reason:
                self.shutdown_reason = info["shutdown_reason"]
                warnings.warn(self.shutdown_reason, RuntimeWarning, stacklevel=1)
                self._log(self.shutdown_reason)
                # Clients of this cluster close instead of trying to reconnect.
                self.status = Status.closing
            await asyncio.sleep(1)

    async def _answers_again(self, silent: float, told: bool) -> None:
        """The scheduler answers after a silence: say if it is a new one, and watch it.

        A new one (its pod replaced, however fast) is always said: what the old
        one held is gone. The same one is said only to end a silence that was told.
        """
        name = self.spec.name
        with contextlib.suppress(OSError, asyncio.TimeoutError):
            identity = await asyncio.wait_for(self._scheduler.identity(), 10)
            if identity.get("id") != self.scheduler_info.get("id"):
                self._tell(
                    f"The scheduler of {name!r} answers again after {silent:.0f}s: a new one "
                    "(its pod was replaced), so the tasks and data of the old one are gone; "
                    "clients reconnect to it by themselves, resubmit what was lost"
                )
            elif told:
                self._log(f"The scheduler of {name!r} answers again after {silent:.0f}s")
            if self._watch_worker_status_task is None or self._watch_worker_status_task.done():
                await self._watch_workers_again()

    async def _watch_workers_again(self) -> None:
        """Subscribe again to the workers' comings and goings (as distributed's start does)."""
        comm = await self._scheduler.live_comm()
        comm.name = "Cluster worker status"
        await comm.write({"op": "subscribe_worker_status"})
        self.scheduler_info = SchedulerInfo(await comm.read())
        old = self._watch_worker_status_comm
        self._watch_worker_status_comm = comm
        self._watch_worker_status_task = asyncio.ensure_future(self._watch_worker_status(comm))
        if old is not None:
            await old.close()

    async def _usage(self) -> dict[str, float]:
        result: dict[str, float] = await asyncio.wait_for(
            getattr(self._scheduler, contract.USAGE)(), 10
        )
        return result

    def usage(self) -> Any:
        """What the cluster used so far: lifetime, worker- and core-seconds, peak workers."""
        return self.sync(self._usage)

    async def _close(self) -> None:
        if self.status == Status.closed:
            return
        if self._heartbeat_task:
            # Python < 3.12's wait_for may swallow a cancel that meets its answer: the flag
            # ends the loop then, and the wait has a deadline either way.
            self._heartbeat_stopped = True
            self._heartbeat_task.cancel()
            await asyncio.wait({self._heartbeat_task}, timeout=HEARTBEAT_STOP)
        if self.shutdown_reason:
            await self._backend.disconnect()
        elif self.status in (Status.running, Status.starting):
            if self.shutdown_on_close:
                usage = None
                with contextlib.suppress(Exception):
                    usage = await self._usage()
                with contextlib.suppress(Exception):  # workers need not move their data now
                    await asyncio.wait_for(getattr(self._scheduler, contract.CLOSING)(), 5)
                await self._backend.close()
                self._log(f"Cluster {self.spec.name!r} deleted{_usage_text(usage)}")
            else:
                await self._backend.disconnect()
        await super()._close()

    def _update_worker_status(self, op: str, msg: Any) -> None:
        # The scheduler may report the removal of a worker this handle never saw added
        # (it connected and left while the handle refreshed its view, after a scale to 0):
        # distributed's own handler raised a KeyError then, out of close().
        self._worker_news.set()
        if op == "remove":
            self.scheduler_info.get("workers", {}).pop(msg, None)
            return
        super()._update_worker_status(op, msg)

    # -- scaling ------------------------------------------------------------------------------

    def scale(self, n: int) -> Any:
        """Run ``n`` workers. Scaling down retires workers first, so their data moves.

        Scaling by hand turns adaptive scaling off.
        """
        return self.sync(self._scale, n)

    # (minimum, maximum) first, as users write adapt(0, 10); dask's first is Adaptive.
    def adapt(  # type: ignore[override]
        self, minimum: int = 0, maximum: float = math.inf, **kwargs: Any
    ) -> Any:
        """Scale between ``minimum`` and ``maximum`` workers with the workload.

        On Kubernetes the scheduler's janitor does it, so it goes on when this
        client is gone: the bounds are stored on the cluster, workers are
        retired gracefully (their data moves first) and scaling to zero works.
        ``cooldown`` (seconds between a scaling and the next scale-down, default
        10) and ``min_worker_age`` (workers younger than this are never
        retired, default 10) tune it. The local backend uses dask's Adaptive in
        this client, with its options.
        """
        if not self._backend.adapts_in_scheduler:
            return super().adapt(minimum=minimum, maximum=maximum, **kwargs)
        unknown = set(kwargs) - {"cooldown", "min_worker_age"}
        if unknown:
            raise ValueError(
                f"invalid adapt options {sorted(unknown)}: on Kubernetes adapt takes minimum, "
                "maximum, cooldown and min_worker_age (the janitor in the scheduler scales)"
            )
        policy = {k: float(v) for k, v in kwargs.items()}
        if not isinstance(minimum, int) or minimum < 0:
            raise ValueError(f"invalid minimum={minimum!r}: expected a whole number >= 0")
        if not math.isfinite(maximum) or int(maximum) != maximum or maximum < max(minimum, 1):
            raise ValueError(
                f"invalid maximum={maximum!r}: expected a whole number >= max(minimum, 1); "
                "a cluster on Kubernetes needs a finite upper bound, e.g. adapt(0, 10)"
            )
        self._adapting = True
        return self.sync(self._backend.adapt, self._scheduler, minimum, int(maximum), **policy)

    async def _scale(self, n: int) -> None:
        if self._adapting:
            await self._backend.adapt(self._scheduler, 0, None)
            self._adapting = False
        self.spec = self.spec.with_workers(n)
        await self._backend.scale(n, self._scheduler)

    def scale_down(self, workers: list[str]) -> Any:
        """Remove these (already retired) workers: called by dask's Adaptive."""
        return self.sync(self._scale_down, workers)

    async def _scale_down(self, workers: list[str]) -> None:
        await self._backend.remove(list(workers))
        self.spec = self.spec.with_workers(len(self._backend.requested))

    @property
    def plan(self) -> set[str]:
        """Names of the workers asked for."""
        return set(self._backend.requested)

    @property
    def requested(self) -> set[str]:
        """Names of the workers asked for."""
        return set(self._backend.requested)

    # -- information ----------------------------------------------------------------------------

    @property
    def dashboard_link(self) -> str:
        """Dashboard URL as this client reaches it."""
        return self._backend.dashboard_link or super().dashboard_link

    async def _get_logs(
        self, cluster: bool = True, scheduler: bool = True, workers: bool = True
    ) -> Logs:
        logs = await super()._get_logs(cluster=cluster, scheduler=scheduler, workers=workers)
        if scheduler or workers:
            logs.update(await self._backend.logs())
        return logs  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        return (
            f"MinimalCluster({self.spec.name!r}, backend={self.spec.backend!r}, "
            f"{self.scheduler_address!r}, workers={len(self.scheduler_info['workers'])})"
        )


def _usage_text(usage: dict[str, float] | None) -> str:
    if not usage:
        return ""
    return (
        f" after {usage['lifetime']:.0f}s: {usage['worker_seconds']:.0f} worker-seconds, "
        f"{usage['core_seconds']:.0f} core-seconds, {usage['peak_workers']:.0f} workers at peak"
    )
