"""The amd64 image in a real Docker engine: the article's cluster, done right.

A scheduler reachable as ``master-node`` and two workers on a user network,
every container on a read-only root filesystem with a tmpfs at /tmp.
"""

import time
import urllib.request

import dask.array as da
import numpy as np
import pytest
from distributed import Client
from dockerutil import IMPORT_ALL, Network, ca_options, docker, free_port

pytestmark = [pytest.mark.docker, pytest.mark.slow]


@pytest.fixture(scope="module")
def amd64(images, load):
    built = images("linux/amd64")
    return load(built)


@pytest.fixture(scope="module")
def cluster(amd64):
    net = Network(amd64)
    port, dashboard = free_port(), free_port()
    try:
        net.run("master-node", "-p", f"127.0.0.1:{port}:8786", "-p", f"127.0.0.1:{dashboard}:8787")
        net.run("worker-1", env={"WORKER": "1"})
        net.run(
            "worker-2",
            *ca_options(),
            env={"WORKER": "1", "EXTRA_PIP_PACKAGES": "camelcase", "EXTRA_OS_PACKAGES": "jq"},
        )
        net.wait_log("master-node", "Scheduler at:")
        client = Client(f"tcp://127.0.0.1:{port}", timeout=60)
        client.wait_for_workers(2, timeout=240)
        yield net, client, dashboard
        client.close()
    except BaseException:
        for name in ("master-node", "worker-1", "worker-2"):
            print(f"--- {name}\n{net.logs(name)}")
        raise
    finally:
        net.close()


def test_every_extension_module_imports(amd64):
    result = docker("run", "--rm", "--entrypoint", "/usr/bin/python3", amd64, "-c", IMPORT_ALL)
    print(result.stdout)


def test_modules_the_pods_load_import_in_the_image(amd64):
    # The scheduler pod preloads the janitor; nothing beyond the image's packages.
    code = "import minimaldask, minimaldask.pod.entrypoint, minimaldask.pod.janitor; print('ok')"
    result = docker("run", "--rm", "--entrypoint", "/usr/bin/python3", amd64, "-c", code)
    assert result.stdout.strip() == "ok"


def test_demo_computation_from_the_host(cluster):
    _, client, _ = cluster
    x = da.random.RandomState(0).random((10000, 10000), chunks=(1000, 1000))
    z = (x + x.T)[::2, 5000:].mean(axis=1)
    start = time.monotonic()
    remote = client.compute(z).result()
    print(f"demo computation: {time.monotonic() - start:.1f} s")
    assert remote.shape == (5000,)
    assert np.allclose(remote, z.compute(scheduler="sync"))


def test_dashboard_answers_on_status(cluster):
    _, _, dashboard = cluster
    with urllib.request.urlopen(f"http://127.0.0.1:{dashboard}/status", timeout=30) as response:
        assert response.status == 200
        assert "bokeh" in response.read().decode().lower()


def test_processes_run_as_uid_1000_on_a_read_only_root(cluster):
    _, client, _ = cluster

    def probe():
        import os

        try:
            open("/usr/lib/probe", "w").close()
            writable = True
        except OSError:
            writable = False
        return os.getuid(), os.getgid(), os.environ["HOME"], writable

    assert set(client.run(probe).values()) == {(1000, 1000, "/home/dask", False)}
    assert client.run_on_scheduler(probe) == (1000, 1000, "/home/dask", False)


def test_extra_pip_and_os_packages_are_installed_at_start(cluster):
    net, client, _ = cluster

    def probe():
        import os
        import subprocess

        if not os.environ.get("EXTRA_OS_PACKAGES"):
            return None
        import camelcase

        jq = subprocess.run(["jq", "--version"], capture_output=True, text=True)
        return camelcase.__file__, jq.stdout.strip()

    found = [v for v in client.run(probe).values() if v is not None]
    assert len(found) == 1, found
    module, jq = found[0]
    assert module.startswith("/tmp/minimaldask/")
    assert jq.startswith("jq-")
    assert "unpacking jq" in net.logs("worker-2")


def test_sigterm_stops_a_worker_gracefully(cluster):
    net, _, _ = cluster
    name = f"{net.name}-worker-1"
    start = time.monotonic()
    docker("kill", "--signal", "TERM", name)
    code = docker("wait", name, timeout=60).stdout.strip()
    seconds = time.monotonic() - start
    print(f"worker stopped in {seconds:.1f} s with exit status {code}")
    assert code == "0", net.logs("worker-1")
    assert seconds < 15
