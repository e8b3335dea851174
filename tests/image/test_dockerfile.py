"""The Dockerfile, built by the local Docker engine from a locally made Debian base."""

import subprocess
import time

import dask
import pytest
from dockerutil import COMPUTE, REPO, Network, docker

pytestmark = [pytest.mark.docker, pytest.mark.slow]

BASE = "minimaldask-debian-base:bookworm"


def test_dockerfile_builds_and_computes(docker_engine):
    made = subprocess.run(
        ["bash", str(REPO / "tools/image/debian-base.sh"), "bookworm", BASE],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    print(made.stdout)
    assert made.returncode == 0, made.stderr
    tag = "minimaldask-dockerfile:test"
    start = time.monotonic()
    # The legacy builder of Debian's docker.io does not set the platform
    # arguments that buildx sets; pass them.
    docker(
        "build", "--network", "host", "-t", tag,
        "--build-arg", f"BUILDER_IMAGE={BASE}",
        "--build-arg", "BUILDPLATFORM=linux/amd64", "--build-arg", "TARGETPLATFORM=linux/amd64",
        "--build-arg", "PYTHON=3.11", "--build-arg", f"DASK={dask.__version__}",
        str(REPO), timeout=1200,
    )  # fmt: skip
    print(f"docker build: {time.monotonic() - start:.1f} s")
    user = docker("image", "inspect", "--format", "{{.Config.User}}", tag).stdout.strip()
    assert user == "1000:1000"
    net = Network(tag)
    try:
        net.run("master-node")
        net.run("worker", env={"WORKER": "1"})
        net.wait_log("master-node", "Scheduler at:")
        client = net.run(
            "client", entrypoint="/usr/bin/python3", args=["-c", COMPUTE, "tcp://master-node:8786"],
            detach=False,
        )  # fmt: skip
        assert client.returncode == 0, client.stdout + client.stderr + net.all_logs()
        assert "computation ok" in client.stdout
    finally:
        net.close()
