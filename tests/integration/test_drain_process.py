"""The drain before a worker's pod stops, with real dask processes (no Kubernetes).

The kubelet runs the worker pod's preStop hook (:mod:`minimaldask.pod.drain`),
then sends SIGTERM. These tests play the kubelet: they call the hook's code,
then send SIGTERM to the real ``dask worker`` process, and check from the
scheduler's transition log that no key was computed twice, i.e. nothing the
worker held or was computing went with it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from distributed import Client

from minimaldask import contract
from minimaldask.pod import drain
from testutil import computed_more_than_once, workers_of


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(args: list[str], log) -> subprocess.Popen:
    env = {**os.environ, "MINIMALDASK_CLUSTER_NAME": "drain-test", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", *args], env=env, stdout=log, stderr=subprocess.STDOUT
    )


class Processes:
    """A scheduler with the minimaldask plugin and workers with its preload, as in the pods."""

    def __init__(self, tmp_path) -> None:
        self.port = _free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.tmp_path = tmp_path
        self.procs: dict[str, subprocess.Popen] = {}
        self.http: dict[str, int] = {}

    def scheduler(self) -> None:
        log = open(self.tmp_path / "scheduler.log", "w")  # noqa: SIM115 (closed with the process)
        args = [
            "distributed.cli.dask_scheduler",
            "--host", "127.0.0.1", "--port", str(self.port),
            "--dashboard-address", f"127.0.0.1:{_free_port()}",
            *contract.scheduler_arguments(),
        ]  # fmt: skip
        self.procs["scheduler"] = _spawn(args, log)

    def worker(self, name: str) -> None:
        self.http[name] = _free_port()
        log = open(self.tmp_path / f"{name}.log", "w")  # noqa: SIM115
        args = [
            "distributed.cli.dask_worker", self.address,
            "--host", "127.0.0.1",
            "--dashboard-address", f"127.0.0.1:{self.http[name]}", "--no-dashboard",
            *contract.worker_arguments(name, 1, 120, None),
        ]  # fmt: skip
        self.procs[name] = _spawn(args, log)

    def drain_url(self, name: str, timeout: float) -> str:
        return f"http://127.0.0.1:{self.http[name]}{contract.DRAIN_PATH}?timeout={timeout:g}"

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text()}" for p in sorted(self.tmp_path.glob("*.log"))
        )

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)


@pytest.fixture
def processes(tmp_path):
    p = Processes(tmp_path)
    yield p
    p.close()


def _task(marks: str, seconds: float):
    """A task that leaves a mark each time it starts: two marks, computed twice."""

    def run(i):
        import os
        import time
        import uuid

        open(os.path.join(marks, f"{i}-{uuid.uuid4().hex}"), "w").close()
        time.sleep(seconds)
        return i

    return run


def _started_more_than_once(marks) -> dict:
    from collections import Counter

    counts = Counter(p.name.split("-")[0] for p in marks.iterdir())
    return {k: n for k, n in counts.items() if n > 1}


def _each_computed_once(client: Client, futures: list, marks, processes: Processes) -> None:
    """Every result is there, none was stored twice, and no task started twice."""
    assert client.gather(futures) == list(range(len(futures)))
    assert computed_more_than_once(client, [f.key for f in futures]) == {}, processes.logs()
    assert _started_more_than_once(marks) == {}, processes.logs()


def _stop_like_the_kubelet(proc: subprocess.Popen, grace: float = 30) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=grace)


def _low_level_log() -> dict[str, str]:
    return {"DASK_DISTRIBUTED__ADMIN__LOW_LEVEL_LOG_LENGTH": "1000000"}


@pytest.fixture(autouse=True)
def _keep_every_transition(monkeypatch):
    for k, v in _low_level_log().items():
        monkeypatch.setenv(k, v)


def test_a_drain_that_comes_while_the_worker_starts_waits_for_it_to_join_then_moves_its_work(
    processes,
):
    """A pod deleted while its worker starts (scale-up then down at once): the preStop
    hook comes before the worker answers or has joined. The hook must not let SIGTERM
    through before the worker joined, or the worker joins, takes tasks and dies with them."""
    processes.worker("early")  # its scheduler does not exist yet: it waits to join
    answer: dict = {}

    def hook():
        # The hook's own code, as the kubelet runs it: it must wait for the worker.
        answer["value"] = drain.request(processes.drain_url("early", 60), 60)
        answer["at"] = time.monotonic()

    hooked = threading.Thread(target=hook)
    hooked.start()
    time.sleep(3)
    assert hooked.is_alive(), f"the hook returned before the worker joined: {answer}"
    processes.scheduler()
    with Client(processes.address, timeout=60) as client:
        # Work waits for the first worker to join: the one being drained takes it.
        marks = processes.tmp_path / "marks"
        marks.mkdir()
        futures = client.map(_task(str(marks), 0.01), range(400), pure=False)
        # Its data and results can go nowhere until another worker joins: the drain
        # waits for one (a deleted pod's replacement, in a Deployment).
        processes.worker("stays")
        hooked.join(timeout=120)
        assert not hooked.is_alive(), processes.logs()
        assert answer["value"].get("moved") is True, (answer, processes.logs())
        # The kubelet sends SIGTERM when the hook returns.
        _stop_like_the_kubelet(processes.procs["early"])
        _each_computed_once(client, futures, marks, processes)


def test_a_drain_waits_for_the_tasks_the_worker_is_computing(processes):
    """The worker being drained computes tasks: their results must move too, not go with it."""
    processes.scheduler()
    processes.worker("busy")
    processes.worker("stays")
    with Client(processes.address, timeout=60) as client:
        client.wait_for_workers(2, timeout=120)
        marks = processes.tmp_path / "marks"
        marks.mkdir()
        futures = client.map(_task(str(marks), 1.5), range(6), pure=False)
        deadline = time.monotonic() + 60
        while not client.processing().get(_address(client, "busy")):
            assert time.monotonic() < deadline, "the worker never got a task"
            time.sleep(0.05)
        answer = drain.request(processes.drain_url("busy", 60), 60)
        assert answer.get("moved") is True, (answer, processes.logs())
        _stop_like_the_kubelet(processes.procs["busy"])
        _each_computed_once(client, futures, marks, processes)


def _address(client: Client, name: str) -> str:
    for address, info in workers_of(client).items():
        if info["name"] == name:
            return address
    raise AssertionError(f"no worker named {name!r}")


def test_the_hook_gives_up_at_its_deadline_when_no_worker_ever_answers():
    """A worker that never starts its HTTP server: the hook waits its timeout, not forever."""
    url = f"http://127.0.0.1:{_free_port()}{contract.DRAIN_PATH}?timeout=2"
    t = time.monotonic()
    answer = drain.request(url, 2)
    assert 1.5 < time.monotonic() - t < 10
    assert answer == {"moved": False, "error": answer["error"]}
    assert "did not answer" in answer["error"]


def test_two_workers_drained_at_once_lose_nothing(processes):
    """A pod deleted, another evicted at once: the first moves keys to the second, and
    dask counts the second's copy as safe though it leaves too. Both go; the keys stay."""
    processes.scheduler()
    for name in ("first", "second", "stays"):
        processes.worker(name)
    with Client(processes.address, timeout=60) as client:
        client.wait_for_workers(3, timeout=120)
        marks = processes.tmp_path / "marks"
        marks.mkdir()
        futures = client.map(_task(str(marks), 0), range(300), pure=False)  # on all three
        client.gather(futures)
        answers: dict[str, dict] = {}

        def kubelet(name: str, after: float) -> None:
            # Each pod's kubelet: the hook, then SIGTERM at once.
            time.sleep(after)
            answers[name] = drain.request(processes.drain_url(name, 60), 60)
            _stop_like_the_kubelet(processes.procs[name])

        # The second pod goes while the first one's data is on its way (to it, maybe).
        threads = [
            threading.Thread(target=kubelet, args=(name, after))
            for name, after in (("first", 0), ("second", 0.05))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert all(a.get("moved") for a in answers.values()), (answers, processes.logs())
        _each_computed_once(client, futures, marks, processes)
