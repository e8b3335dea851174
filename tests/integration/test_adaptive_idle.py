"""The plugin's "no task left" input to adaptive scaling, read from a real dask scheduler.

A real scheduler and worker in this process (dask's LocalCluster with threads):
whether a task is processing, queued or without a worker is the scheduler's own
state, which a mock would only restate.
"""

from __future__ import annotations

import time

from distributed import Client, Event, LocalCluster

from minimaldask.contract import JanitorSettings
from minimaldask.pod.plugin import Plugin


def _wait_for(what, deadline=30.0):
    end = time.monotonic() + deadline
    while not what():
        assert time.monotonic() < end, "not within the deadline"
        time.sleep(0.05)


def _state(cluster, key):
    ts = cluster.scheduler.tasks.get(key)
    return ts.state if ts else None


def _block(event_name: str) -> int:
    Event(event_name).wait(timeout=60)
    return 1


def test_idle_is_true_only_when_no_task_is_left_to_run():
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        plugin = Plugin(JanitorSettings(cluster="idle-test"))
        plugin.scheduler = cluster.scheduler
        assert plugin.idle()
        done = Event("done", client=client)
        running = client.submit(_block, "done", pure=False)
        # One thread: the second task is queued (or waits on the worker) behind the first.
        queued = client.submit(_block, "done", pure=False)
        _wait_for(lambda: _state(cluster, running.key) == "processing")
        assert not plugin.idle()
        done.set()
        assert running.result(timeout=30) == queued.result(timeout=30) == 1
        # Results held in memory are no work left: they move when workers retire.
        _wait_for(plugin.idle)
        assert all(cluster.scheduler.tasks[f.key].state == "memory" for f in (running, queued))


def test_a_task_with_no_worker_to_run_it_is_work_left():
    with (
        LocalCluster(n_workers=0, processes=False, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        plugin = Plugin(JanitorSettings(cluster="idle-test"))
        plugin.scheduler = cluster.scheduler
        future = client.submit(sum, [1, 2], pure=False)
        _wait_for(lambda: _state(cluster, future.key) in ("queued", "no-worker"))
        assert not plugin.idle()
