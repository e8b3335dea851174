"""The scheduler's close ends its workers through their nannies (Plugin.before_close).

A real scheduler in this process with the plugin, and real nannies whose worker
processes are children of this one. Closed by its scheduler, a worker under a nanny
leaves its process 2 s late (distributed's nanny waits that long for a stop message
that never comes); ended through the nanny it does not. The seconds are measured by
bench/startup.py (the close of a cluster); here, which way the workers ended.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time

import pytest
from distributed import Nanny, Scheduler

from minimaldask.contract import JanitorSettings
from minimaldask.pod import plugin as plugin_module
from minimaldask.pod.plugin import Plugin


class Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def logs():
    handler = Records()
    names = ("distributed.nanny", "distributed.minimaldask.plugin")
    for name in names:
        logging.getLogger(name).addHandler(handler)
    yield handler.messages
    for name in names:
        logging.getLogger(name).removeHandler(handler)


async def _cluster(nannies: int):
    scheduler = await Scheduler(dashboard_address=":0", port=0)
    plugin = Plugin(JanitorSettings(cluster="close-test"))
    plugin.scheduler = scheduler
    scheduler.add_plugin(plugin, name="minimaldask")
    started = [await Nanny(scheduler.address, nthreads=1, dashboard_address=":0")
               for _ in range(nannies)]  # fmt: skip
    deadline = time.monotonic() + 60
    while len(scheduler.workers) < nannies:
        assert time.monotonic() < deadline, "the workers did not join within 60 s"
        await asyncio.sleep(0.05)
    return scheduler, started


def test_the_scheduler_close_ends_each_worker_through_its_nanny(logs):
    async def main():
        scheduler, nannies = await _cluster(2)
        await scheduler.close(reason="test")
        await asyncio.wait_for(asyncio.gather(*(n.finished() for n in nannies)), 60)

    asyncio.run(main())
    ended = [
        m for m in logs if m.startswith("Closing Nanny at") and "minimaldask-scheduler-close" in m
    ]
    assert len(ended) == 2, logs
    assert not [m for m in logs if "Reason: scheduler-close" in m], logs
    assert "minimaldask: 2 of 2 workers ended through their nannies" in " ".join(logs)


def test_a_nanny_that_never_answers_does_not_hold_the_close(logs, monkeypatch):
    monkeypatch.setattr(plugin_module, "END_WORKERS_WITHIN", 2.0)
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(8)  # accepts (the kernel does), never answers: a black-holed nanny

    async def main():
        scheduler, nannies = await _cluster(2)
        # One worker's nanny address now leads to the hole.
        ws = sorted(scheduler.workers.values(), key=lambda w: w.address)[0]
        ws.nanny = f"tcp://127.0.0.1:{hole.getsockname()[1]}"
        start = time.monotonic()
        await scheduler.close(reason="test")
        closed = time.monotonic() - start
        await asyncio.wait_for(asyncio.gather(*(n.finished() for n in nannies)), 60)
        return closed

    try:
        closed = asyncio.run(main())
    finally:
        hole.close()
    assert "minimaldask: 1 of 2 workers ended through their nannies" in " ".join(logs), logs
    # The close went on after END_WORKERS_WITHIN, not after the comm's connect timeout (30 s).
    assert closed < 25, closed
