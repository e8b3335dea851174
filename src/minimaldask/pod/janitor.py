"""The janitor: a scheduler plugin that ends a cluster nobody uses, and scales it.

Loaded into the scheduler with ``--preload minimaldask.pod.janitor``. It runs
where the scheduler runs, so it keeps working when the client is gone: no
operator, no CRD. Settings come from environment variables set by the
backend:

``MINIMALDASK_IDLE_TIMEOUT``
    Seconds with no task processing or waiting before the cluster ends.
``MINIMALDASK_NO_CLIENT_TIMEOUT``
    Seconds with no client (a dask ``Client`` or a live ``MinimalCluster``
    handle) before the cluster ends.
``MINIMALDASK_MAX_LIFETIME``
    Seconds after which the cluster ends, busy or not.
``MINIMALDASK_CLUSTER_NAME``, ``MINIMALDASK_NAMESPACE``
    Which cluster this is. In a pod with a service account token, the
    janitor ends the cluster by deleting its scheduler Deployment (the rest
    goes with it through ownerReferences) and scales workers through the
    Kubernetes API; elsewhere it closes the scheduler.

An empty or missing timeout is off. Each shutdown is logged with its reason,
and every attached client gets the reason as the error of its futures.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin

from minimaldask import contract
from minimaldask.pod.kubeapi import KubernetesAPI

# Under "distributed": the scheduler's own log handler and level apply.
logger = logging.getLogger("distributed.minimaldask.janitor")

#: Idle time does not count before the first worker joins, up to this long.
STARTUP_GRACE = 300.0


@dataclass
class Usage:
    """Resource usage of a cluster, integrated over its workers' lifetimes."""

    started: float = field(default_factory=time.time)
    worker_seconds: float = 0.0
    core_seconds: float = 0.0
    peak_workers: int = 0
    #: worker address -> (time it joined, threads)
    running: dict[str, tuple[float, int]] = field(default_factory=dict)

    def add(self, address: str, nthreads: int) -> None:
        """A worker joined."""
        self.running[address] = (time.time(), nthreads)
        self.peak_workers = max(self.peak_workers, len(self.running))

    def remove(self, address: str) -> None:
        """A worker left."""
        joined = self.running.pop(address, None)
        if joined:
            seconds = time.time() - joined[0]
            self.worker_seconds += seconds
            self.core_seconds += seconds * joined[1]

    def report(self) -> dict[str, float]:
        """Totals up to now."""
        now = time.time()
        live = [(now - t, n) for t, n in self.running.values()]
        return {
            "lifetime": now - self.started,
            "worker_seconds": self.worker_seconds + sum(s for s, _ in live),
            "core_seconds": self.core_seconds + sum(s * n for s, n in live),
            "peak_workers": self.peak_workers,
            "workers": len(self.running),
        }


@dataclass
class AdaptivePolicy:
    """How eagerly the janitor scales: bounds, cool-down, step size."""

    minimum: int
    maximum: int
    #: No scale-down sooner than this after any scaling.
    cooldown: float = 30.0
    #: Workers connected for less than this are never retired.
    min_worker_age: float = 20.0
    #: At most this fraction of the workers (and at least one) goes per step.
    max_fraction: float = 0.5


class AdaptiveScaler:
    """Follows the scheduler's adaptive target by scaling the worker Deployment.

    Scaling up patches replicas. Scaling down lets the scheduler choose and
    retire workers (their data moves first; a worker whose data has nowhere
    to go is kept), gives their pods the lowest pod-deletion-cost so the
    ReplicaSet removes exactly those, then lowers replicas.
    """

    def __init__(self, scheduler: Any, api: KubernetesAPI, worker_deployment: str) -> None:
        self.scheduler = scheduler
        self.api = api
        self.deployment = worker_deployment
        self.policy: AdaptivePolicy | None = None
        self.replicas: int | None = None
        self.last_change = 0.0
        self.joined: dict[str, float] = {}

    async def replicas_now(self) -> int:
        """Replicas asked of the worker Deployment (read once, then tracked)."""
        if self.replicas is None:
            deployment = await self.api.get_deployment(self.deployment)
            self.replicas = int(deployment["spec"].get("replicas") or 0)
        return self.replicas

    async def set_replicas(self, n: int) -> None:
        """Patch replicas and remember when."""
        await self.api.set_replicas(self.deployment, n)
        logger.info("minimaldask adapt: %s replicas %s -> %s", self.deployment, self.replicas, n)
        self.replicas = n
        self.last_change = time.time()

    def target(self) -> int:
        """The scheduler's wish, within the bounds."""
        assert self.policy is not None
        wish = int(self.scheduler.adaptive_target())
        return max(self.policy.minimum, min(self.policy.maximum, wish))

    async def step(self) -> None:
        """One decision: up now, down after the cool-down and in bounded steps."""
        policy = self.policy
        if policy is None:
            return
        replicas = await self.replicas_now()
        target = self.target()
        now = time.time()
        if target > replicas:
            await self.set_replicas(target)
            return
        if target == replicas or now - self.last_change < policy.cooldown:
            return
        if replicas > len(self.scheduler.workers):
            # Pods still starting go first (the ReplicaSet prefers them anyway).
            await self.set_replicas(max(target, len(self.scheduler.workers)))
            return
        # Workers retired earlier whose pods are still there (a failed API call): their
        # data is gone already, so they go before anyone else is retired.
        leftovers = [
            str(ws.name)
            for ws in self.scheduler.workers.values()
            if ws.status.name == "closing_gracefully"
        ]
        if leftovers:
            await self._remove(leftovers[: replicas - target], replicas)
            return
        step = max(1, int(replicas * policy.max_fraction))
        wanted = min(replicas - target, step)
        old_enough = {
            ws.name
            for ws in self.scheduler.workers.values()
            if now - self.joined.get(ws.address, now) >= policy.min_worker_age
            and ws.status.name == "running"
        }
        chosen = [
            str(name)
            for name in self.scheduler.workers_to_close(
                n=len(self.scheduler.workers), attribute="name"
            )
            if str(name) in old_enough
        ][:wanted]
        if not chosen:
            return
        retired = await self.scheduler.retire_workers(
            names=chosen, close_workers=False, remove=False, stimulus_id=f"minimaldask-adapt-{now}"
        )
        names = [str(info.get("name")) for info in retired.values()]
        if not names:
            logger.info(
                "minimaldask adapt: the scheduler kept %s (their data had nowhere to go)", chosen
            )
            self.last_change = now
            return
        await self._remove(names, replicas)

    async def _remove(self, names: list[str], replicas: int) -> None:
        """Remove the pods of these retired workers: lowest deletion cost, then fewer replicas."""
        for name in names:
            await self.api.annotate_pod(
                name, {contract.DELETION_COST: str(contract.RETIRED_DELETION_COST)}
            )
        await self.set_replicas(replicas - len(names))


class Janitor(SchedulerPlugin):
    """Ends the cluster when idle, without clients, or too old; runs adaptive scaling."""

    name = "minimaldask-janitor"

    def __init__(
        self,
        idle_timeout: float | None = None,
        no_client_timeout: float | None = None,
        max_lifetime: float | None = None,
        cluster_name: str = "",
        namespace: str = "",
        interval: float = 1.0,
        api: KubernetesAPI | None = None,
    ) -> None:
        self.idle_timeout = idle_timeout
        self.no_client_timeout = no_client_timeout
        self.max_lifetime = max_lifetime
        self.cluster_name = cluster_name
        self.namespace = namespace
        self.interval = interval
        self.api = api
        #: Runs in a pod (a namespace is set): never end by closing the scheduler.
        self.in_kubernetes = bool(namespace)
        self.usage = Usage()
        self.shutdown_reason: str | None = None
        self.handles: dict[str, float] = {}
        self.last_client = time.time()
        self.adapt_bounds: tuple[int, int] | None = None
        #: When the first worker joined: the idle clock starts then, not during start-up.
        self.ready_at: float | None = None
        self._task: asyncio.Task[None] | None = None
        self.scheduler: Any = None
        self.scaler: AdaptiveScaler | None = None
        self._closing: asyncio.Future[Any] | None = None

    @classmethod
    def from_environment(cls) -> Janitor:
        """Settings from MINIMALDASK_* environment variables (see the module docstring)."""
        settings = contract.JanitorSettings.from_env(os.environ)
        namespace = settings.namespace
        api = KubernetesAPI(namespace) if namespace and KubernetesAPI.available() else None
        return cls(
            idle_timeout=settings.idle_timeout,
            no_client_timeout=settings.no_client_timeout,
            max_lifetime=settings.max_lifetime,
            cluster_name=settings.cluster,
            namespace=namespace,
            interval=settings.interval,
            api=api,
        )

    # -- SchedulerPlugin ----------------------------------------------------------------------

    async def start(self, scheduler: Any) -> None:
        """Register the handlers and start watching (once, however often it is called)."""
        if self._task is not None:
            return
        self.scheduler = scheduler
        scheduler.handlers[contract.HEARTBEAT] = self.heartbeat
        scheduler.handlers[contract.USAGE] = self.report_usage
        scheduler.handlers[contract.ADAPT] = self.adapt
        if self.api is not None:
            self.scaler = AdaptiveScaler(
                scheduler, self.api, contract.worker_name(self.cluster_name)
            )
            await self._restore_adapt_bounds()
        self.usage.started = time.time()
        self.last_client = time.time()
        for address, ws in scheduler.workers.items():
            self.usage.add(address, ws.nthreads)
        mode = f"Kubernetes, cluster {self.cluster_name!r}" if self.api else "closing the scheduler"
        logger.info(
            "minimaldask janitor: idle_timeout=%s no_client_timeout=%s max_lifetime=%s (%s)",
            self.idle_timeout,
            self.no_client_timeout,
            self.max_lifetime,
            mode,
        )
        self._task = asyncio.create_task(self._watch())

    async def close(self) -> None:
        """Stop watching."""
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def add_worker(self, scheduler: Any, worker: str) -> None:
        """Count the worker's time from now."""
        self.usage.add(worker, scheduler.workers[worker].nthreads)
        if self.scaler:
            self.scaler.joined[worker] = time.time()
        if self.ready_at is None:
            self.ready_at = time.time()

    def remove_worker(self, scheduler: Any, worker: str, **kwargs: Any) -> None:
        """Stop counting the worker's time."""
        self.usage.remove(worker)
        if self.scaler:
            self.scaler.joined.pop(worker, None)

    def add_client(self, scheduler: Any, client: str) -> None:
        """A client arrived: the no-client clock stops."""
        self.last_client = time.time()

    def remove_client(self, scheduler: Any, client: str) -> None:
        """A client left: the no-client clock starts when the last one has gone."""
        self.last_client = time.time()

    # -- handlers -------------------------------------------------------------------------------

    def heartbeat(self, handle: str = "") -> dict[str, Any]:
        """A MinimalCluster handle is alive; tell it whether the cluster is ending."""
        if handle:
            self.handles[handle] = time.time()
        return {"shutdown_reason": self.shutdown_reason, **self.status(), **self.usage.report()}

    def adapt(
        self,
        minimum: int | None = None,
        maximum: int | None = None,
        cooldown: float | None = None,
        min_worker_age: float | None = None,
    ) -> dict[str, Any]:
        """Set the adaptive bounds (``maximum=None`` turns adaptive scaling off)."""
        if self.scaler is None:
            raise RuntimeError(
                "adaptive scaling in the scheduler needs the Kubernetes API (the cluster's "
                "service account); this scheduler has none"
            )
        if maximum is None:
            self.scaler.policy = None
            return {"adapt": None}
        policy = AdaptivePolicy(minimum=int(minimum or 0), maximum=int(maximum))
        if cooldown is not None:
            policy.cooldown = float(cooldown)
        if min_worker_age is not None:
            policy.min_worker_age = float(min_worker_age)
        self.scaler.policy = policy
        self.scaler.replicas = None  # the client may have scaled: read again
        logger.info("minimaldask adapt: %s", policy)
        return {"adapt": vars(policy)}

    async def _restore_adapt_bounds(self) -> None:
        """Adaptive bounds survive a scheduler restart: they live in the janitor's ConfigMap."""
        assert self.api is not None
        try:
            data = await self.api.get_config_map(contract.janitor_name(self.cluster_name))
        except Exception as e:
            logger.warning("minimaldask janitor: cannot read adaptive bounds: %s", e)
            return
        try:
            policy = contract.decode_policy(data.get(contract.STATE_ADAPT))
        except ValueError:
            logger.warning("minimaldask janitor: ignoring a malformed adaptive policy %r", data)
            return
        if policy:
            self.adapt(**policy)

    def report_usage(self) -> dict[str, float]:
        """Worker-seconds, core-seconds, peak workers and lifetime so far."""
        return self.usage.report()

    # -- the watch ------------------------------------------------------------------------------

    def clients(self) -> int:
        """Dask clients plus MinimalCluster handles heard from recently."""
        now = time.time()
        self.handles = {h: t for h, t in self.handles.items() if now - t < contract.HANDLE_TTL}
        real = [c for c in self.scheduler.clients if c != "fire-and-forget"]
        return len(real) + len(self.handles)

    def reason_to_end(self, now: float) -> tuple[str, str] | None:
        """Which timeout ends the cluster now and why, or None."""
        if self.max_lifetime and now - self.usage.started > self.max_lifetime:
            return "max_lifetime", f"it reached its max_lifetime of {self.max_lifetime:g}s"
        if self.clients():
            self.last_client = now
        elif self.no_client_timeout and now - self.last_client > self.no_client_timeout:
            return (
                "no_client_timeout",
                f"no client was connected for its no_client_timeout of {self.no_client_timeout:g}s",
            )
        idle_since = self.scheduler.check_idle()
        if idle_since and self.ready_at is None and now - self.usage.started < STARTUP_GRACE:
            idle_since = None  # still starting: waiting for workers is not idleness
        if idle_since and self.ready_at:
            idle_since = max(idle_since, self.ready_at)
        if self.idle_timeout and idle_since and now - idle_since > self.idle_timeout:
            return (
                "idle_timeout",
                f"it was idle (no task to run) for its idle_timeout of {self.idle_timeout:g}s",
            )
        return None

    def status(self) -> dict[str, Any]:
        """What ``minimaldask list`` shows of a running cluster."""
        idle_since = self.scheduler.idle_since
        return {
            "updated": time.time(),
            "idle_since": idle_since,
            "clients": self.clients(),
            "last_client": self.last_client,
            "started": self.usage.started,
            "idle_timeout": self.idle_timeout,
            "no_client_timeout": self.no_client_timeout,
            "max_lifetime": self.max_lifetime,
        }

    async def _report(self) -> None:
        assert self.api is not None
        await self.api.set_config_map_data(
            contract.janitor_name(self.cluster_name),
            {contract.STATE_STATUS: contract.encode_status(self.status())},
        )

    async def _watch(self) -> None:
        last_report = 0.0
        while self.shutdown_reason is None:
            await asyncio.sleep(self.interval)
            if self.api is not None and time.time() - last_report > contract.STATUS_INTERVAL:
                last_report = time.time()
                try:
                    await self._report()
                except Exception as e:
                    logger.warning("minimaldask janitor: cannot report status: %s", e)
            try:
                reason = self.reason_to_end(time.time())
            except Exception:
                logger.exception("minimaldask janitor: check failed")
                continue
            if reason:
                await self.end(*reason)
            elif self.scaler is not None:
                try:
                    await self.scaler.step()
                except Exception as e:
                    logger.error("minimaldask adapt: step failed: %s", e)

    async def end(self, timeout: str, reason: str) -> None:
        """End the cluster: tell every client why, then delete (or close) it."""
        name = self.cluster_name or "this cluster"
        message = f"minimaldask ended cluster {name!r}: {reason}"
        self.shutdown_reason = message
        logger.warning(message)
        self.scheduler.log_event("minimaldask", {"action": "shutdown", "reason": message})
        for client, cs in list(self.scheduler.clients.items()):
            keys = [ts.key for ts in cs.wants_what]
            if keys:
                self.scheduler.stimulus_cancel(
                    keys, client, force=True, reason="minimaldask-shutdown", msg=message
                )
        # Give handles a heartbeat to learn the reason before the scheduler goes.
        await asyncio.sleep(min(2.0, contract.HANDLE_TTL / 2))
        if self.api is not None:
            try:
                await self.api.delete_deployment(contract.scheduler_name(self.cluster_name))
                return
            except Exception as e:  # the pod is still ours to stop: fall back, and say so
                logger.error(
                    "minimaldask janitor: could not delete the cluster (%s); closing the scheduler",
                    e,
                )
        # Not awaited here: closing the scheduler closes this plugin, which ends this task.
        self._closing = asyncio.ensure_future(self.scheduler.close(reason=f"minimaldask-{timeout}"))


async def dask_setup(scheduler: Any) -> None:
    """Entry point of ``--preload minimaldask.pod.janitor``.

    Preloads run before the scheduler starts its plugins, which starts this one.
    """
    scheduler.add_plugin(Janitor.from_environment(), idempotent=True)
