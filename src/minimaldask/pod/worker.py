"""The worker's side of scaling down: readiness, the retired flag, and the drain.

Loaded into each worker on Kubernetes with ``--preload minimaldask.pod.worker``.
It adds to the worker's HTTP server (the port of its probes):

``GET /minimaldask/ready``
    The readiness probe: 200 while the worker runs and was not retired by
    minimaldask; 503 before it has joined its scheduler and once retired. The
    ReplicaSet removes pods that are not Ready first, so lowering replicas by the
    number of retired workers removes exactly their pods.
``POST /minimaldask/drain?timeout=SECONDS``
    From the pod itself only (its preStop hook, :mod:`minimaldask.pod.drain`):
    before the pod stops (deleted, evicted, drained, a spot node reclaimed), the
    scheduler moves this worker's data to the others, within ``timeout``.

and handlers the scheduler calls: when it retired this worker (the flag), and
to learn which tasks it still executes (their results move before it goes).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from tornado.web import RequestHandler

from minimaldask import contract
from minimaldask.pod import nanny, tlsfix

logger = logging.getLogger("distributed.minimaldask.worker")

# Before this process opens any connection: one TLS connection's error must not end another.
tlsfix.install()


#: Worker statuses before it has joined its scheduler: a drain waits for it.
STARTING = frozenset({"undefined", "created", "init", "starting"})
#: Worker statuses of a worker that has joined and may hold data.
JOINED = frozenset({"running", "paused", "closing_gracefully"})


def _status(worker: Any) -> str:
    return str(getattr(worker.status, "name", ""))


class _State:
    """What the worker's routes need to know about it."""

    def __init__(self, worker: Any) -> None:
        self.worker = worker
        #: Set once the scheduler retired this worker for minimaldask.
        self.retired = False
        self.drain: asyncio.Task[bool] | None = None

    def ready(self) -> bool:
        return not self.retired and getattr(self.worker.status, "name", "") == "running"

    async def drain_data(self, timeout: float) -> bool:
        """Ask the scheduler to move this worker's data to the others; whether it did.

        A worker that still starts is waited for (within ``timeout``): once it has
        joined, it may take tasks, and those must move too before SIGTERM comes.
        """
        worker = self.worker
        started = time.monotonic()
        while _status(worker) in STARTING and time.monotonic() - started < timeout:
            await asyncio.sleep(0.05)
        if _status(worker) not in JOINED:
            logger.info("minimaldask drain: this worker has not joined (%s)", _status(worker))
            return False
        left = max(timeout - (time.monotonic() - started), 1.0)
        try:
            answer = await asyncio.wait_for(
                getattr(worker.scheduler, contract.DRAIN)(worker=worker.address, timeout=left),
                left + 5,
            )
        except (OSError, asyncio.TimeoutError) as e:
            logger.warning("minimaldask drain: could not move this worker's data: %r", e)
            return False
        moved = bool((answer or {}).get("moved"))
        logger.info(
            "minimaldask drain: %s in %.1fs",
            "data moved"
            if moved
            else "nothing moved (the cluster ends, or the data had nowhere to go)",
            time.monotonic() - started,
        )
        return moved


class _Ready(RequestHandler):
    def initialize(self, state: _State) -> None:
        self.state = state

    def get(self) -> None:
        self.set_status(200 if self.state.ready() else 503)
        self.write("ok" if self.state.ready() else "not ready")


class _Drain(RequestHandler):
    def initialize(self, state: _State) -> None:
        self.state = state

    async def post(self) -> None:
        if self.request.remote_ip not in ("127.0.0.1", "::1"):
            self.set_status(403)  # only the pod's own preStop hook may drain it
            return
        timeout = float(self.get_argument("timeout", "30"))
        state = self.state
        if state.drain is None:  # the hook is delivered at least once: drain once
            state.drain = asyncio.ensure_future(state.drain_data(timeout))
        moved = await asyncio.shield(state.drain)
        self.write(json.dumps({"moved": moved}))


async def dask_setup(worker: Any) -> None:
    """Entry point of ``--preload minimaldask.pod.worker``."""
    if worker.nanny is None:
        # Its own registration comes after its preloads: as a nanny's does (pod/nanny.py).
        await nanny.wait_for_scheduler(
            worker.scheduler.address,
            worker.security.get_connection_args("worker"),
            nanny.connect_timeout(),
        )
    state = _State(worker)

    def retired() -> None:
        state.retired = True
        logger.info("minimaldask: retired; this worker's pod reports not ready")

    def unretired() -> None:
        state.retired = False

    def executing() -> list[str]:
        state = worker.state
        return [str(ts.key) for ts in (*state.executing, *state.long_running)]

    worker.handlers[contract.WORKER_EXECUTING] = executing
    worker.handlers[contract.WORKER_RETIRED] = retired
    worker.handlers[contract.WORKER_UNRETIRED] = unretired
    worker.http_application.add_handlers(
        r".*",
        [
            (contract.READY_PATH, _Ready, {"state": state}),
            (contract.DRAIN_PATH, _Drain, {"state": state}),
        ],
    )
