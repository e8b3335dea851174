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


def test_a_worker_forks_its_process_and_keeps_what_a_spawned_one_has(tmp_path):
    """Two workers started by the entrypoint: each worker process is forked from its
    nanny, hashes strings as every other worker (with the seed distributed gives a
    spawned worker), and started with distributed's trim threshold and thread counts."""

    # Defined here: sent to the workers by value.
    def _worker_process_facts():
        import ctypes
        import multiprocessing
        import os

        import numpy  # noqa: F401  (loads its BLAS)

        with open("/proc/self/environ", "rb") as f:
            start_env = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
        with open("/proc/self/cmdline") as f:
            cmdline = f.read()
        with open("/proc/self/maps") as f:
            libs = {line.split()[-1] for line in f if "openblas" in line.split()[-1]}
        blas_threads = None
        for lib in libs:
            for symbol in (
                "scipy_openblas_get_num_threads64_",
                "openblas_get_num_threads64_",
                "openblas_get_num_threads",
            ):
                get = getattr(ctypes.CDLL(lib), symbol, None)
                if get is not None:
                    blas_threads = get()
        return {
            "blas_threads": blas_threads,
            "forked": multiprocessing.parent_process() is not None and "spawn_main" not in cmdline,
            "hash": hash("minimaldask"),
            "trim_at_start": start_env.get(b"MALLOC_TRIM_THRESHOLD_", b"").decode(),
            "omp": os.environ.get("OMP_NUM_THREADS"),
        }

    port = _free_port()
    env = {**os.environ, "PORT": str(port), "DASHBOARD_PORT": str(_free_port())}
    for name in ("PYTHONHASHSEED", "MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS"):
        env.pop(name, None)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "minimaldask.pod.entrypoint"],
            env={**env, "ARGUMENTS": "--host 127.0.0.1"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    for i in range(2):
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "minimaldask.pod.entrypoint"],
                env={
                    **env,
                    "WORKER": "1",
                    "DASK_SCHEDULER_ADDRESS": f"tcp://127.0.0.1:{port}",
                    "ARGUMENTS": f"--name w{i} --nthreads 1 --no-dashboard --host 127.0.0.1",
                },
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    try:
        with Client(f"tcp://127.0.0.1:{port}", timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
            facts = list(client.run(_worker_process_facts).values())
            nanny_has_numpy = client.run(lambda: "numpy" in sys.modules, nanny=True)
            seeded = subprocess.run(
                [sys.executable, "-c", "print(hash('minimaldask'))"],
                env={**env, "PYTHONHASHSEED": "6640"},
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            assert [f["forked"] for f in facts] == [True, True], facts
            # Every worker hashes alike, with the seed a spawned worker gets from its nanny.
            assert {str(f["hash"]) for f in facts} == {seeded}, facts
            assert {f["trim_at_start"] for f in facts} == {"65536"}, facts
            assert {f["omp"] for f in facts} == {"1"}, facts
            # OpenBLAS read its thread count when the nanny loaded numpy (distributed
            # imports it): the nanny started with distributed's value.
            assert all(nanny_has_numpy.values()), nanny_has_numpy
            assert {f["blas_threads"] for f in facts} == {1}, facts
    finally:
        for p in procs:
            p.kill()
            p.wait()
