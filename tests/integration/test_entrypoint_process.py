"""The entrypoint as a real process: bad variables stop it with one clear line."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from distributed import Client

from testutil import workers_of


def run_entrypoint(env, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "minimaldask.pod.entrypoint"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PORT": "eighty"}, "minimaldask-entrypoint: PORT='eighty' is not a port number"),
        ({"ARGUMENTS": "--name 'x"}, "minimaldask-entrypoint: ARGUMENTS could not be split"),
        ({"EXTRA_APK_PACKAGES": "apache2", "PATH": os.path.dirname(sys.executable)}, "not Alpine"),
        (
            {"EXTRA_PIP_PACKAGES": "minimaldask-no-such-package-4c1f9e"},
            "EXTRA_PIP_PACKAGES='minimaldask-no-such-package-4c1f9e' could not be installed: ERROR",
        ),
    ],
)
def test_bad_variable_exits_non_zero_with_one_line(env, message, tmp_path):
    result = run_entrypoint({"MINIMALDASK_PREFIX": str(tmp_path), **env})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_scheduler_and_worker_exec_dask_and_sigterm_is_graceful(tmp_path):
    port = _free_port()
    env = {**os.environ, "PORT": str(port), "DASHBOARD_PORT": str(_free_port())}
    scheduler = subprocess.Popen(
        [sys.executable, "-m", "minimaldask.pod.entrypoint"],
        env={**env, "ARGUMENTS": "--host 127.0.0.1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    worker = subprocess.Popen(
        [sys.executable, "-m", "minimaldask.pod.entrypoint"],
        env={
            **env,
            "WORKER": "1",
            "DASK_SCHEDULER_ADDRESS": f"tcp://127.0.0.1:{port}",
            "EXTRA_PIP_PACKAGES": "camelcase",
            "MINIMALDASK_PREFIX": str(tmp_path),
            "ARGUMENTS": "--name w1 --nthreads 1 --no-dashboard --host 127.0.0.1",
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        with Client(f"tcp://127.0.0.1:{port}", timeout=60) as client:
            client.wait_for_workers(1, timeout=120)
            # The pip package installed at start is importable in the worker.
            assert client.submit(lambda: __import__("camelcase").__name__).result() == "camelcase"
            assert next(iter(workers_of(client).values()))["name"] == "w1"
        # exec: the process we started *is* the dask worker, so it gets SIGTERM itself.
        worker.send_signal(signal.SIGTERM)
        t = time.monotonic()
        assert worker.wait(timeout=30) == 0
        assert time.monotonic() - t < 15
        assert b"starting the worker" in worker.stdout.read()
    finally:
        for p in (worker, scheduler):
            p.kill()
            p.wait()
