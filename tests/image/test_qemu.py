"""Each platform's image, run by the Docker engine (arm64 and armv7 under qemu-user through binfmt).

Each platform, flavor and Debian Python it supports: every extension module
imports, the image's Debian archive keyring checks the signature of its suite's
current InRelease (what EXTRA_OS_PACKAGES does in a pod), and a scheduler with
one worker runs a small computation for a client in a third container. armv7
has no dataframe flavor (no pyarrow for it anywhere).
"""

import subprocess
import urllib.request

import pytest
from dockerutil import COMPUTE, IMPORT_ALL, Network, docker, platform_options

from minimaldask.image.debian import apt_archive_url
from minimaldask.image.recipe import unsupported_reason

pytestmark = [pytest.mark.docker, pytest.mark.slow]

QEMU = pytest.mark.qemu
CASES = [
    pytest.param("linux/arm64", "default", "3.11", marks=QEMU),
    pytest.param("linux/arm64", "dataframe", "3.11", marks=QEMU),
    pytest.param("linux/arm/v7", "default", "3.13", marks=QEMU),
    pytest.param("linux/amd64", "default", "3.14"),
    pytest.param("linux/arm64", "default", "3.14", marks=QEMU),
    pytest.param("linux/arm/v7", "default", "3.14", marks=QEMU),
]

VERIFY = r"""
import sys
from minimaldask.image.debian import find_keyring
from minimaldask.image.openpgp import verify_clearsigned
keyring = find_keyring()
text, fingerprint = verify_clearsigned(sys.stdin.read(), open(keyring, "rb").read())
print(keyring, fingerprint, text.splitlines()[0])
"""


def test_armv7_has_no_dataframe_flavor():
    assert "pyarrow" in unsupported_reason("linux/arm/v7", "dataframe")


@pytest.mark.parametrize(("platform", "flavor", "python"), CASES)
def test_image_imports_verifies_and_computes(platform, flavor, python, images, load):
    built = images(platform, flavor, python)
    tag = load(built)
    inspect = docker(
        "image", "inspect", "--format",
        '{{.Architecture}} {{index .Config.Labels "org.minimaldask.python.version"}}'
        ' {{index .Config.Labels "org.minimaldask.debian.suite"}}', tag,
    ).stdout.split()  # fmt: skip
    assert inspect[:2] == [platform.split("/")[1], python]
    suite = inspect[2]
    assert f"Python {python} from Debian {suite}" in built.table
    run = [
        "run",
        "--rm",
        "-i",
        *platform_options(platform),
        "--entrypoint",
        "/usr/bin/python3",
        tag,
    ]
    result = docker(*run, "-c", IMPORT_ALL, check=False, timeout=900)
    print(platform, flavor, python, result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    with urllib.request.urlopen(f"{apt_archive_url()}/dists/{suite}/InRelease", timeout=60) as r:
        inrelease = r.read()
    verified = subprocess.run(
        ["docker", *run, "-c", VERIFY], input=inrelease, capture_output=True, timeout=900
    )
    out = verified.stdout.decode()
    assert verified.returncode == 0, verified.stderr.decode()
    assert out.startswith("/usr/share/keyrings/debian-archive-keyring.") and out.strip().endswith(
        "Origin: Debian"
    ), out
    net = Network(tag, platform)
    try:
        net.run("master-node")
        net.run("worker", env={"WORKER": "1", "ARGUMENTS": "--nthreads 2"})
        net.wait_log("master-node", "Scheduler at:", timeout=300)
        client = net.run(
            "client", entrypoint="/usr/bin/python3", args=["-c", COMPUTE, "tcp://master-node:8786"],
            detach=False,
        )  # fmt: skip
        assert client.returncode == 0, client.stdout + client.stderr + net.all_logs()
        assert "computation ok" in client.stdout
    finally:
        net.close()
