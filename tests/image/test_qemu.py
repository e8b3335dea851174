"""The arm64 and armv7 images, run under qemu-user (binfmt) by the Docker engine.

Each platform and flavor it supports: every extension module imports, and a
scheduler with one worker runs a small computation for a client in a third
container. armv7 has no dataframe flavor (no pyarrow for it anywhere).
"""

import pytest
from dockerutil import COMPUTE, IMPORT_ALL, Network, docker

from minimaldask.image.recipe import unsupported_reason

pytestmark = [pytest.mark.qemu, pytest.mark.docker, pytest.mark.slow]

CASES = [
    ("linux/arm64", "default"),
    ("linux/arm64", "dataframe"),
    ("linux/arm/v7", "default"),
]


def test_armv7_has_no_dataframe_flavor():
    assert "pyarrow" in unsupported_reason("linux/arm/v7", "dataframe")


@pytest.mark.parametrize(("platform", "flavor"), CASES)
def test_foreign_image_imports_and_computes(platform, flavor, images, load):
    built = images(platform, flavor)
    tag = load(built)
    arch = docker("image", "inspect", "--format", "{{.Architecture}}", tag).stdout.strip()
    assert arch == platform.split("/")[1]
    result = docker(
        "run", "--rm", "--platform", platform, "--entrypoint", "/usr/bin/python3", tag,
        "-c", IMPORT_ALL, check=False, timeout=900,
    )  # fmt: skip
    print(platform, flavor, result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    net = Network(tag, platform)
    try:
        net.run("master-node")
        net.run("worker", env={"WORKER": "1", "ARGUMENTS": "--nthreads 2"})
        net.wait_log("master-node", "Scheduler at:", timeout=300)
        client = net.run(
            "client", entrypoint="/usr/bin/python3", args=["-c", COMPUTE, "tcp://master-node:8786"],
            detach=False,
        )  # fmt: skip
        assert client.returncode == 0, client.stdout + client.stderr + net.logs("worker")
        assert "computation ok" in client.stdout
    finally:
        net.close()
