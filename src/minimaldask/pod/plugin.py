"""The scheduler plugin: what only the scheduler can do for the janitor and the client.

Loaded into every scheduler with ``--preload minimaldask.pod.plugin``. It

- answers the handles' heartbeats (a live ``MinimalCluster`` counts as a client)
  and reports usage;
- retires workers with a deadline, undoing a retirement that does not finish,
  and flags the retired ones (their pods report not ready: see
  :mod:`minimaldask.pod.scaling`);
- runs adaptive scaling, through the janitor's rights;
- tells the janitor what it sees (idle since, clients, workers) and learns from
  it when the cluster ends, to tell every client why.

On Kubernetes the janitor (:mod:`minimaldask.pod.janitor`) runs beside the
scheduler in its pod and decides when the cluster ends; it keeps deciding when
this scheduler is gone. Outside Kubernetes (the local backend) the plugin
decides itself, with the same clocks, and ends the cluster by closing the
scheduler. On Kubernetes without a janitor (its user may not grant it rights)
nothing ends the cluster but its user, and the plugin says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin

from minimaldask import contract
from minimaldask.pod import scaling, tlsfix
from minimaldask.pod.clocks import Clocks, Facts

# Under "distributed": the scheduler's own log handler and level apply.
logger = logging.getLogger("distributed.minimaldask.plugin")

# Before this process opens any connection: one TLS connection's error must not end another.
tlsfix.install()

#: Seconds a retirement may take in an adaptive step before it is undone.
ADAPT_RETIRE_TIMEOUT = 120.0
#: Seconds a retired worker has to take its flag (or say what it executes).
FLAG_TIMEOUT = 10.0
#: Seconds between two looks at a retired worker that still executes a task.
POLL = 0.2
#: Seconds the scheduler's close waits for the nannies to end their workers.
END_WORKERS_WITHIN = 5.0
#: Seconds between two reports until the janitor has heard from this scheduler once: a
#: scheduler that never reported is waited for as one that still starts (the janitor's
#: FIRST_REPORT_WITHIN), not ended as one that stopped answering (GONE_AFTER).
FIRST_REPORT_EVERY = 0.2
#: Seconds without a first report after which a janitor out of reach is a warning.
QUIET_UNTIL_REPORTED = 10.0


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
    """How eagerly the cluster scales: bounds, cool-down, step size."""

    minimum: int
    maximum: int
    #: No scale-down sooner than this after any scaling, nor before fewer have been
    #: wanted this long (see :meth:`decide`; bench/cost.py measures the choice).
    cooldown: float = 10.0
    #: Workers connected for less than this are never retired.
    min_worker_age: float = 10.0
    #: While work is left, at most this fraction of the workers (and at least one)
    #: goes per step.
    max_fraction: float = 0.5

    def decide(
        self,
        wanted: int,
        asked: int,
        connected: int,
        low_since: float | None,
        last: float,
        now: float,
        idle_since: float | None = None,
    ) -> tuple[int | None, float | None]:
        """The replicas to ask for now (None: no change), and since when fewer are wanted.

        ``wanted`` is the scheduler's adaptive target, ``asked`` the replicas asked
        for (pods still starting included), ``connected`` the workers connected,
        ``last`` when the replicas last changed, ``idle_since`` since when the
        scheduler has had no task left to run (none processing, queued or without a
        worker; None: work is left). Up is at once. Down only once fewer have been
        wanted for a whole ``cooldown``, and a ``cooldown`` after the last change (up
        or down): a target that dips while new workers still start (their first
        tasks run fast, the queue looks short) removes nobody, so the cluster does
        not flap between scaling up and removing the pods it just asked for.

        While work is left, down goes by steps of at most ``max_fraction``: the
        target is an estimate from the tasks' durations, and a step that is too
        large costs a pod start. Once no task has been left for a whole
        ``cooldown`` the target is no estimate, and down goes straight to it: each
        step would cost a whole cool-down of the workers above it (the results held
        still move first, see :func:`~minimaldask.pod.scaling.scale_to`). That
        cool-down counts from the last task, not from the dip of the target at the
        end of a burst (its last seconds of queue look short): a gap between bursts
        shorter than a cool-down keeps every worker.
        """
        target = max(self.minimum, min(self.maximum, wanted))
        current = max(asked, connected)
        if target >= current:
            return (target if target != asked else None), None
        low_since = now if low_since is None else low_since
        if now - low_since < self.cooldown or now - last < self.cooldown:
            return None, low_since
        if idle_since is None:
            return max(target, current - max(1, int(current * self.max_fraction))), low_since
        if now - idle_since < self.cooldown:
            return None, low_since
        return target, low_since


class JanitorLink:
    """The janitor beside this scheduler, over the pod's loopback (standard library HTTP)."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read() or b"null")

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        """One request to the janitor, off the event loop."""
        return await asyncio.to_thread(self._call, method, path, body)


class JanitorReplicas:
    """The worker Deployment, through the janitor's rights (see :mod:`~minimaldask.pod.scaling`)."""

    def __init__(self, link: JanitorLink) -> None:
        self.link = link

    async def pods(self) -> scaling.Pods:
        """Replicas, live and Ready pods, from the Deployment's status."""
        answer = await self.link.call("GET", "/workers")
        return scaling.Pods(answer["replicas"], answer["live"], answer["ready"])

    async def set(self, replicas: int) -> None:
        """Ask for this many worker pods."""
        await self.link.call("POST", "/workers", {"replicas": replicas})


class SchedulerWorkers:
    """The workers as this scheduler has them (see :mod:`~minimaldask.pod.scaling`)."""

    def __init__(self, plugin: Plugin) -> None:
        self.plugin = plugin

    async def connected(self) -> scaling.Connected:
        """Running and retired workers, by name."""
        return self.plugin.connected()

    async def retire(self, n: int, timeout: float) -> list[str]:
        """Retire ``n`` workers old enough to be retired (adaptive scaling's rule)."""
        return await self.plugin.retire(n=n, timeout=timeout, adaptive=True)


class Plugin(SchedulerPlugin):
    """Heartbeats, usage, retirement, adaptive scaling; reports to the janitor."""

    name = "minimaldask"

    def __init__(self, settings: contract.JanitorSettings) -> None:
        self.settings = settings
        self.link = JanitorLink(settings.janitor_port) if settings.janitor_port else None
        #: The local backend: no Kubernetes, so the plugin ends the cluster itself.
        self.local = not settings.namespace
        self.usage = Usage()
        self.shutdown_reason: str | None = None
        #: What the janitor last said it could not do (a delete refused, say).
        self.janitor_error: str | None = None
        self.janitor_status: dict[str, Any] = {}
        #: The janitor has taken a report of this scheduler (the first one, often in the
        #: first second: sent at once, then every FIRST_REPORT_EVERY until it lands).
        self.reported = False
        self._since = time.monotonic()
        self.handles: dict[str, float] = {}
        self.policy: AdaptivePolicy | None = None
        self.joined: dict[str, float] = {}
        #: Names of the workers this plugin retired (their pods report not ready).
        self.retired: set[str] = set()
        #: The cluster is being deleted (by its user or its janitor): nothing to save.
        self.closing = False
        self.last_scaling = 0.0
        #: Since when adaptive scaling has wanted fewer workers than asked for.
        self.low_since: float | None = None
        #: Since when the scheduler has had no task left to run (None: work is left).
        self.idle_since: float | None = None
        self.scheduler: Any = None
        self.clocks: Clocks | None = None
        self._task: asyncio.Task[None] | None = None
        self._scaling: asyncio.Task[Any] | None = None
        self._closing: asyncio.Future[Any] | None = None

    @classmethod
    def from_environment(cls) -> Plugin:
        """Settings from the scheduler's environment (see :class:`~minimaldask.contract.JanitorSettings`)."""
        return cls(contract.JanitorSettings.from_env(os.environ))

    # -- SchedulerPlugin ----------------------------------------------------------------------

    async def start(self, scheduler: Any) -> None:
        """Register the handlers and start watching (once, however often it is called)."""
        if self._task is not None:
            return
        self.scheduler = scheduler
        scheduler.handlers[contract.HEARTBEAT] = self.heartbeat
        scheduler.handlers[contract.USAGE] = self.report_usage
        scheduler.handlers[contract.ADAPT] = self.adapt
        scheduler.handlers[contract.RETIRE] = self.retire_handler
        scheduler.handlers[contract.WORKERS] = self.workers_handler
        scheduler.handlers[contract.DRAIN] = self.drain_handler
        scheduler.handlers[contract.CLOSING] = self.closing_handler
        now = time.time()
        self.usage.started = now
        for address, ws in scheduler.workers.items():
            self.usage.add(address, ws.nthreads)
        if self.local:
            self.clocks = Clocks(self.settings, created=now, last_client=now)
            mode = "ends the cluster by closing this scheduler"
        elif self.link:
            mode = f"reports to its janitor (cluster {self.settings.cluster!r})"
            await self._restore_policy()
        else:
            mode = "no janitor: nothing but its user ends this cluster"
        s = self.settings
        logger.info(
            "minimaldask: idle_timeout=%s no_client_timeout=%s max_lifetime=%s; %s",
            s.idle_timeout,
            s.no_client_timeout,
            s.max_lifetime,
            mode,
        )
        self._task = asyncio.create_task(self._watch())

    async def before_close(self) -> None:
        """End every worker through its nanny, before the scheduler closes its comms.

        Told to close by its scheduler, a worker under a nanny leaves its process
        2 s late: the process waits that long for the nanny's stop message, which
        then never comes (distributed's nanny.py: ``thread.join(timeout=2)``).
        Ended by its nanny (``terminate``), the process exits as soon as the worker
        has closed. The cluster's end (its pods gone) comes 2 s sooner. A nanny
        that does not answer within END_WORKERS_WITHIN is left to the close.
        """
        nannies = sorted({ws.nanny for ws in self.scheduler.workers.values() if ws.nanny})
        if not nannies:
            return
        start = time.monotonic()

        async def end(address: str) -> None:
            # The nanny closes this comm too as it ends: CommClosedError is its answer.
            with contextlib.suppress(OSError):  # CommClosedError is an OSError
                await self.scheduler.rpc(address).terminate(reason="minimaldask-scheduler-close")

        tasks = {asyncio.ensure_future(end(a)): a for a in nannies}
        done, late = await asyncio.wait(tasks, timeout=END_WORKERS_WITHIN)
        for task in late:
            task.cancel()
        for task in done:
            if task.exception() is not None:
                logger.warning("minimaldask: ending %s: %r", tasks[task], task.exception())
        logger.info(
            "minimaldask: %d of %d workers ended through their nannies in %.1fs",
            len(nannies) - len(late),
            len(nannies),
            time.monotonic() - start,
        )

    async def close(self) -> None:
        """Stop watching and scaling."""
        for task in (self._task, self._scaling):
            if task:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def add_worker(self, scheduler: Any, worker: str) -> None:
        """Count the worker's time from now."""
        self.usage.add(worker, scheduler.workers[worker].nthreads)
        self.joined[worker] = time.time()

    def remove_worker(self, scheduler: Any, worker: str, **kwargs: Any) -> None:
        """Stop counting the worker's time."""
        self.usage.remove(worker)
        self.joined.pop(worker, None)

    # -- handlers -------------------------------------------------------------------------------

    def heartbeat(self, handle: str = "") -> dict[str, Any]:
        """A MinimalCluster handle is alive; tell it whether the cluster is ending, and why."""
        if handle:
            self.handles[handle] = time.time()
        return {
            "shutdown_reason": self.shutdown_reason,
            "janitor_error": self.janitor_error,
            "janitor": self.janitor_status,
            **self.usage.report(),
        }

    def report_usage(self) -> dict[str, float]:
        """Worker-seconds, core-seconds, peak workers and lifetime so far."""
        return self.usage.report()

    def adapt(
        self,
        minimum: int | None = None,
        maximum: int | None = None,
        cooldown: float | None = None,
        min_worker_age: float | None = None,
    ) -> dict[str, Any]:
        """Set the adaptive bounds (``maximum=None`` turns adaptive scaling off)."""
        if maximum is None:
            self.policy = None
            return {"adapt": None}
        if self.link is None:
            raise RuntimeError(
                "adaptive scaling in the scheduler needs its janitor (the cluster's rights "
                "to scale its workers); this cluster has none"
            )
        policy = AdaptivePolicy(minimum=int(minimum or 0), maximum=int(maximum))
        if cooldown is not None:
            policy.cooldown = float(cooldown)
        if min_worker_age is not None:
            policy.min_worker_age = float(min_worker_age)
        self.policy = policy
        logger.info("minimaldask adapt: %s", policy)
        return {"adapt": vars(policy)}

    async def _restore_policy(self) -> None:
        """Adaptive bounds survive a scheduler restart: the janitor keeps them."""
        assert self.link is not None
        try:
            state = await self.link.call("GET", "/state")
        except OSError as e:
            logger.warning("minimaldask: cannot read the adaptive policy from the janitor: %s", e)
            return
        policy = (state or {}).get("adapt")
        if policy:
            self.adapt(**policy)

    def workers_handler(self) -> dict[str, list[str]]:
        """Running and retired workers, by name (the client's side of a scale-down)."""
        connected = self.connected()
        return {"running": sorted(connected.running), "retired": sorted(connected.retired)}

    async def retire_handler(
        self, n: int | None = None, names: list[str] | None = None, timeout: float = 60
    ) -> dict[str, list[str]]:
        """Retire ``n`` workers the scheduler chooses (or those ``names``), within ``timeout``."""
        retired = await self.retire(n=n, names=names, timeout=timeout)
        return {"retired": retired}

    async def drain_handler(self, worker: str, timeout: float = 30) -> dict[str, bool]:
        """A worker's pod stops: move its data to the others first, unless the cluster ends."""
        if self.closing or self.shutdown_reason:
            return {"moved": False}
        ws = self.scheduler.workers.get(worker)
        if ws is None:
            return {"moved": False}
        if str(ws.name) in self.retired:  # retired already: its data moved
            return {"moved": True}
        deadline = time.monotonic() + timeout
        # The only worker (a one-worker cluster's node drained): its Deployment starts
        # a replacement at once, and the data can go there.
        while not any(self._staying(w) and w is not ws for w in self.scheduler.workers.values()):
            if time.monotonic() + POLL >= deadline:
                return {"moved": False}
            await asyncio.sleep(POLL)
        left = max(deadline - time.monotonic(), 1.0)
        retired = await self.retire(names=[str(ws.name)], timeout=left, undo=False)
        return {"moved": bool(retired)}

    def closing_handler(self) -> None:
        """The cluster is being deleted: workers that stop now hand nothing over."""
        self.closing = True

    # -- retirement -----------------------------------------------------------------------------

    def connected(self) -> scaling.Connected:
        """Workers connected now: running (not retired by us), and retired by us."""
        running, retired = set(), set()
        for ws in self.scheduler.workers.values():
            name = str(ws.name)
            if name in self.retired:
                retired.add(name)
            elif ws.status.name == "running":
                running.add(name)
        self.retired &= {str(ws.name) for ws in self.scheduler.workers.values()}
        return scaling.Connected(frozenset(running), frozenset(retired))

    async def retire(
        self,
        n: int | None = None,
        names: list[str] | None = None,
        timeout: float = 60,
        adaptive: bool = False,
        undo: bool = True,
    ) -> list[str]:
        """Move the data of ``n`` workers (or of ``names``) elsewhere, then flag them retired.

        The scheduler chooses which (``workers_to_close``: least data first); with
        ``adaptive``, only workers older than the policy's minimum age. A worker
        whose data has nowhere to go is kept. The tasks a worker was computing when
        it stopped taking new ones finish there, and their results move too: dask's
        own retirement would let them go, to be computed again. A retirement that
        does not finish within ``timeout`` (a receiving worker frozen, a long task)
        is undone, unless ``undo`` is false (the pod stops anyway): its workers run
        again. Returns the names of the retired workers.
        """
        deadline = time.monotonic() + timeout
        scheduler = self.scheduler
        candidates = [
            ws
            for ws in scheduler.workers.values()
            if ws.status.name == "running" and str(ws.name) not in self.retired
        ]
        if names is not None:
            wanted = {str(x) for x in names}
            chosen = [
                ws
                for ws in scheduler.workers.values()
                if str(ws.name) in wanted and ws.status.name in ("running", "closing_gracefully")
            ]
        else:
            now = time.time()
            eligible = {
                ws.address
                for ws in candidates
                if not adaptive
                or self.policy is None
                or now - self.joined.get(ws.address, now) >= self.policy.min_worker_age
            }
            order = scheduler.workers_to_close(n=len(scheduler.workers), attribute="address")
            chosen = [scheduler.workers[a] for a in order if a in eligible][: n or 0]
        if not chosen:
            return []
        addresses = [ws.address for ws in chosen]
        stimulus = f"minimaldask-retire-{time.time()}"
        task = asyncio.ensure_future(
            scheduler.retire_workers(
                workers=addresses, close_workers=False, remove=False, stimulus_id=stimulus
            )
        )
        try:
            result = await asyncio.wait_for(asyncio.shield(task), timeout)
            late = await self._settle(list(result), deadline)
        except asyncio.TimeoutError:
            task.cancel()
            result, late = {}, addresses
        if late:
            for address in late:
                result.pop(address, None)
            if undo:
                self._undo(late, stimulus)
            logger.warning(
                "minimaldask: retiring %s took more than %gs; %s",
                [str(scheduler.workers[a].name) for a in late if a in scheduler.workers],
                timeout,
                "undone, they run again" if undo else "given up",
            )
        retired = []
        for address, info in result.items():
            name = str(info.get("name", address))
            self.retired.add(name)
            retired.append(name)
            try:  # a frozen worker does not answer: its probe fails anyway, and it holds nothing
                await asyncio.wait_for(
                    getattr(scheduler.rpc(address), contract.WORKER_RETIRED)(), FLAG_TIMEOUT
                )
            except (OSError, asyncio.TimeoutError) as e:
                logger.warning("minimaldask: could not flag %s as retired: %r", name, e)
        kept = sorted(set(addresses) - set(result))
        if kept:
            logger.info("minimaldask: the scheduler kept %s: their data had nowhere to go", kept)
        return retired

    async def _settle(self, addresses: list[str], deadline: float) -> list[str]:
        """Wait until retired workers execute nothing and hold no key only leavers hold.

        Returns the workers still late at the ``deadline``.

        dask's retirement is done once each key has a second holder, and it counts
        holders that are leaving too: of two workers drained one after the other
        (a pod deleted, another evicted), the first moves keys to the second, which
        then counts them as safe, and both go with them. And the task a worker
        executes when it is retired finishes there, after the retirement. So the
        keys held only by leaving workers are copied to a worker that stays, and a
        worker that still executes a task is waited for. Those whose keys have
        nowhere to go are returned at once.
        """
        scheduler = self.scheduler
        pending = set(addresses)
        while pending:
            pending &= set(scheduler.workers)
            busy = set()
            for address in list(pending):
                ws = scheduler.workers.get(address)
                if ws is not None and ws.processing and await self._executing(address):
                    busy.add(address)
            exposed = {
                a: keys
                for a in pending - busy
                if a in scheduler.workers
                and (keys := self._held_only_by_leavers(scheduler.workers[a]))
            }
            for keys in exposed.values():
                if not await self._copy_to_a_stayer(keys, deadline):
                    return sorted(exposed)
            pending = busy | set(exposed)
            if not pending or time.monotonic() >= deadline:
                break
            await asyncio.sleep(POLL)
        return sorted(pending)

    def _staying(self, ws: Any) -> bool:
        """Whether a worker stays: it runs (or is paused) and is not being retired."""
        return ws.status.name in ("running", "paused") and str(ws.name) not in self.retired

    def _held_only_by_leavers(self, ws: Any) -> list[Any]:
        """The keys of ``ws`` that no staying worker holds."""
        return [ts for ts in ws.has_what if not any(self._staying(w) for w in ts.who_has or ())]

    async def _copy_to_a_stayer(self, keys: list[Any], deadline: float) -> bool:
        """Copy ``keys`` to the staying worker with the least data; whether there was one."""
        stayers = [ws for ws in self.scheduler.workers.values() if self._staying(ws)]
        if not stayers:
            return False
        to = min(stayers, key=lambda ws: ws.nbytes)
        who_has = {ts.key: [w.address for w in ts.who_has or ()] for ts in keys}
        with contextlib.suppress(asyncio.TimeoutError):  # looked at again by the caller
            await asyncio.wait_for(
                self.scheduler.gather_on_worker(to.address, who_has),
                max(deadline - time.monotonic(), 0.1),
            )
        return True

    async def _executing(self, address: str) -> bool:
        """Whether the worker still executes a task (a worker that does not answer does not)."""
        try:
            keys = await asyncio.wait_for(
                getattr(self.scheduler.rpc(address), contract.WORKER_EXECUTING)(), FLAG_TIMEOUT
            )
        except (OSError, asyncio.TimeoutError):
            return False
        return bool(keys)

    def _undo(self, addresses: list[str], stimulus: str) -> None:
        """Make workers whose retirement did not finish run again, and stop moving their data."""
        from distributed.active_memory_manager import RetireWorker

        scheduler = self.scheduler
        amm = scheduler.extensions.get("amm")
        for policy in list(getattr(amm, "policies", ())):
            if isinstance(policy, RetireWorker) and policy.address in addresses:
                amm.policies.discard(policy)
        for address in addresses:
            ws = scheduler.workers.get(address)
            if ws is None or ws.status.name != "closing_gracefully":
                continue
            from distributed.core import Status

            scheduler.handle_worker_status_change(Status.running, ws, stimulus)
            scheduler.stream_comms[address].send(
                {"op": "worker-status-change", "status": "running", "stimulus_id": stimulus}
            )

    # -- the watch --------------------------------------------------------------------------------

    def clients(self) -> int:
        """Dask clients plus MinimalCluster handles heard from recently."""
        now = time.time()
        self.handles = {h: t for h, t in self.handles.items() if now - t < contract.HANDLE_TTL}
        real = [c for c in self.scheduler.clients if c != "fire-and-forget"]
        return len(real) + len(self.handles)

    def facts(self) -> Facts:
        """What the scheduler says about itself now."""
        self.scheduler.check_idle()
        return Facts(
            idle_since=self.scheduler.idle_since,
            clients=self.clients(),
            workers=len(self.scheduler.workers),
        )

    async def _watch(self) -> None:
        # The first look at once, and looks every FIRST_REPORT_EVERY until the janitor has
        # heard from us: a scheduler that crashes seconds after its start (a package that
        # breaks it later) has reported by then, and its janitor ends it GONE_AFTER later.
        while True:
            try:
                await self._look()
            except Exception:  # one bad look must not stop the next
                logger.exception("minimaldask: a look at the cluster failed")
            first = self.link is not None and not self.reported
            await asyncio.sleep(FIRST_REPORT_EVERY if first else self.settings.interval)

    async def _look(self) -> None:
        facts = self.facts()
        now = time.time()
        if self.clocks is not None:  # local: decide here
            self.clocks.observe(now, facts)
            reason = self.clocks.reason(now)
            if reason and self.shutdown_reason is None:
                await self.end(*reason)
            return
        if self.link is not None:
            try:
                answer = await self.link.call("POST", "/report", {"facts": facts.to_json()})
            except (OSError, urllib.error.URLError, ValueError) as e:
                # Its janitor starts beside it: out of reach for a moment at first.
                starting = time.monotonic() - self._since < QUIET_UNTIL_REPORTED
                say = logger.debug if not self.reported and starting else logger.warning
                say("minimaldask: cannot reach the janitor: %s", e)
                return
            self.reported = True
            self.janitor_error = answer.get("error")
            self.janitor_status = answer.get("status") or {}
            if answer.get("end") and self.shutdown_reason is None:
                self.announce(answer["end"])
            elif self.policy is not None and self.shutdown_reason is None:
                self._adapt_step(now)

    def _adapt_step(self, now: float) -> None:
        """Start one adaptive scaling, unless one runs: the checks never wait for scaling."""
        # Looked at every check, also while a scaling runs: work that came and went
        # meanwhile restarts the clock.
        if not self.idle():
            self.idle_since = None
        elif self.idle_since is None:
            self.idle_since = now
        if self._scaling is not None and not self._scaling.done():
            return
        assert self.policy is not None and self.link is not None
        wanted = int(self.scheduler.adaptive_target())
        self._scaling = asyncio.create_task(self._scale(wanted, now))

    def idle(self) -> bool:
        """Whether no task is left to run: none processing, queued or without a worker.

        A task that waits for others has one of those upstream, so it need not be
        looked for (that would cost a walk over every task, every look).
        """
        scheduler = self.scheduler
        return not (
            scheduler.queued
            or scheduler.unrunnable
            or any(ws.processing for ws in scheduler.workers.values())
        )

    async def _scale(self, wanted: int, now: float) -> None:
        assert self.link is not None and self.policy is not None
        replicas = JanitorReplicas(self.link)
        before = await replicas.pods()
        target, self.low_since = self.policy.decide(
            wanted,
            asked=before.replicas,
            connected=len(self.scheduler.workers),
            low_since=self.low_since,
            last=self.last_scaling,
            now=now,
            idle_since=self.idle_since,
        )
        if target is None and before.live <= before.replicas:
            return
        target = before.replicas if target is None else target
        outcome = await scaling.scale_to(
            target, replicas, SchedulerWorkers(self), ADAPT_RETIRE_TIMEOUT
        )
        self.last_scaling = time.time()
        self.low_since = None
        logger.info(
            "minimaldask adapt: %s -> %s workers (retired %s%s)",
            before.replicas,
            target,
            outcome.retired,
            f"; {outcome.reason}" if outcome.reason else "",
        )

    def announce(self, message: str) -> None:
        """The cluster ends: every client learns why (its futures are cancelled with it)."""
        self.shutdown_reason = message
        self.closing = True
        logger.warning(message)
        self.scheduler.log_event("minimaldask", {"action": "shutdown", "reason": message})
        for client, cs in list(self.scheduler.clients.items()):
            keys = [ts.key for ts in cs.wants_what]
            if keys:
                self.scheduler.stimulus_cancel(
                    keys, client, force=True, reason="minimaldask-shutdown", msg=message
                )

    async def end(self, timeout: str, reason: str) -> None:
        """Outside Kubernetes: tell every client why, then close the scheduler."""
        self.announce(f"minimaldask ended cluster {self.settings.cluster!r}: {reason}")
        # Give handles a heartbeat to learn the reason before the scheduler goes.
        await asyncio.sleep(min(2.0, contract.HANDLE_TTL / 2))
        # Not awaited here: closing the scheduler closes this plugin, which ends this task.
        self._closing = asyncio.ensure_future(self.scheduler.close(reason=f"minimaldask-{timeout}"))


def _minor(packages: Any) -> Any:
    """A copy of a versions table with Python's version cut to major.minor."""
    if not isinstance(packages, dict) or not isinstance(packages.get("python"), str):
        return packages
    return {**packages, "python": ".".join(packages["python"].split(".")[:2])}


def _without_patch_level(versions: Any) -> Any:
    if not isinstance(versions, dict):
        return versions
    return {**versions, "packages": _minor(versions.get("packages"))}


def quiet_patch_levels() -> None:
    """Compare Python versions at major.minor when clients and workers connect.

    Pickled code moves between Pythons of one minor version (3.11.2 and 3.11.7
    make the same bytecode), so a difference in patch level alone is noise: the
    client would print distributed's "Mismatched versions" table on every
    connect. The client's own check (the image's labels, before a cluster
    starts) still refuses a minor version that differs.
    """
    from distributed import versions

    original = versions.error_message
    if getattr(original, "minimaldask", False):
        return

    def error_message(
        scheduler: Any, workers: Any, source: Any, source_name: str = "Client"
    ) -> Any:
        workers = {w: _without_patch_level(v) for w, v in (workers or {}).items()}
        return original(
            _without_patch_level(scheduler), workers, _without_patch_level(source), source_name
        )

    error_message.minimaldask = True  # type: ignore[attr-defined]
    versions.error_message = error_message


async def dask_setup(scheduler: Any) -> None:
    """Entry point of ``--preload minimaldask.pod.plugin``.

    Preloads run before the scheduler starts its plugins, which starts this one.
    """
    quiet_patch_levels()
    scheduler.add_plugin(Plugin.from_environment(), idempotent=True)
