"""A worker that starts before its scheduler registers as soon as the scheduler answers
(minimaldask.pod.nanny, as a nanny's preload; minimaldask.pod.worker without a nanny).

Real ``dask worker`` and ``dask scheduler`` processes, with the options the pods get
(the entrypoint's nanny preload and contract.worker_arguments); the scheduler starts after the worker has been refused
for a while, as in a pod whose scheduler is not routed to yet.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time

import pytest
from distributed import Client

from minimaldask import contract
from testutil import workers_of

pytestmark = pytest.mark.timeout(180)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stamp(line: str) -> float:
    """The time of a dask log line (``2026-12-01 05:51:24,819 - ...``)."""
    match = re.match(r"\d{4}-\d\d-\d\d (\d\d):(\d\d):(\d\d),(\d{3})", line)
    assert match, line
    h, m, s, ms = map(int, match.groups())
    return h * 3600 + m * 60 + s + ms / 1000


def start_worker(port: int, extra: list[str], env: dict[str, str] | None = None):
    # As the image's entrypoint starts a worker: its nanny preload, then the client's options.
    arguments = [
        "--preload-nanny",
        contract.NANNY_MODULE,
        *contract.worker_arguments("w1", 1, 60, None, ["--no-dashboard", *extra]),
    ]
    return subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_worker", f"tcp://127.0.0.1:{port}",
         "--host", "127.0.0.1", *arguments],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip


def start_scheduler(port: int):
    return subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
         "--port", str(port), "--dashboard-address", ":0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip


def stop(*procs: subprocess.Popen) -> list[str]:
    outputs = []
    for proc in procs:
        proc.terminate()
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        outputs.append(out)
    return outputs


@pytest.mark.parametrize("extra", [[], ["--no-nanny"]], ids=["nanny", "no-nanny"])
def test_a_worker_started_first_registers_once_its_scheduler_answers(extra):
    port = free_port()
    worker = start_worker(port, extra)
    time.sleep(2)  # refused all along: distributed's own next try would be up to 2.6 s away
    scheduler = start_scheduler(port)
    try:
        with Client(f"tcp://127.0.0.1:{port}", timeout=60) as client:
            client.wait_for_workers(1, timeout=60)
            assert [w["name"] for w in workers_of(client).values()] == ["w1"]
            assert client.submit(lambda x: x + 1, 1).result(timeout=30) == 2
    finally:
        worker_log, scheduler_log = stop(worker, scheduler)
    print(scheduler_log, worker_log, sep="\n")
    answered = [line for line in worker_log.splitlines() if "the scheduler answered after" in line]
    assert len(answered) == 1, worker_log
    listening = next(line for line in scheduler_log.splitlines() if "Scheduler at:" in line)
    registered = next(line for line in worker_log.splitlines() if "Registered to:" in line)
    print(f"registered {stamp(registered) - stamp(listening):.2f}s after the scheduler listened")
    # The tries left nothing in the scheduler's log: each made dask's whole handshake.
    assert "closed before handshake" not in scheduler_log
    assert not re.search(r" - (WARNING|ERROR) - ", scheduler_log), scheduler_log


def test_a_scheduler_that_never_answers_is_waited_for_within_the_connect_timeout():
    port = free_port()
    t = time.monotonic()
    worker = start_worker(port, [], {"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "2s"})
    try:
        out, _ = worker.communicate(timeout=120)  # it gives up, as without the preload
    finally:
        worker.kill()
    print(out)
    print(f"exited with {worker.returncode} after {time.monotonic() - t:.1f}s")
    assert "did not answer within 2s" in out
    assert worker.returncode != 0
