"""The article's example on amd64, arm64 and armv7 worker pods joined to one amd64 scheduler.

The article's users mix x86 machines and Raspberry Pi boards. Here the one x86-64 node of
the local Kubernetes runs arm64 and armv7 worker pods through qemu-user, registered in
binfmt_misc with the fix-binary flag by ``localkube up`` (tests/localkube/test_foreign_arch.py):
each foreign worker runs a single-platform reference, the digest of that platform's manifest
in the image index, where the runtime would otherwise pick the amd64 one.

Every part is Python 3.13: armv7 images exist only for 3.13 (numpy and friends come from
Debian trixie there), and functions pickled by value (a lambda given to ``client.run``, say)
do not cross Python minor versions. So one image index of the three platforms is built at
3.13, the scheduler and an amd64 worker run its amd64 image, and the client is a Python 3.13
virtual environment of pyenv's interpreter running tests/e2e/mixed_arch_client.py (this
suite's client is 3.11). Skipped, with the reason, where qemu for aarch64 or arm is not
registered with the fix-binary flag.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import dask
import filelock
import pytest

import localkube
from pythonfrom import client_venv
from testutil import source_hash

# Alone, after the other e2e tests (exclusive): emulated workers need the CPU that four
# tests at once take, and under that load they did not start within minutes.
pytestmark = [
    pytest.mark.kube,
    pytest.mark.qemu,
    pytest.mark.slow,
    pytest.mark.exclusive,
    pytest.mark.timeout(1800),
]

ROOT = Path(__file__).resolve().parents[2]
PLATFORMS = {"amd64": "linux/amd64", "arm64": "linux/arm64", "armv7": "linux/arm/v7"}
INDEX = "application/vnd.oci.image.index.v1+json"


@pytest.fixture(scope="module")
def emulation():
    """Skip where a foreign platform's pods cannot run on this node."""
    for name in ("arm64", "armv7"):
        missing = localkube.foreign_arch_missing(name)
        if missing:
            pytest.skip(f"no {name} emulation on this machine: {missing}")


@pytest.fixture(scope="module")
def images(emulation, localkube_cluster, localkube_registry):
    """The three platforms' image at Python 3.13, built once for these sources; returns the
    index's reference (pods on this node pick amd64 from it) and each platform's manifest."""
    repository = "minimaldask"
    tag = f"{dask.__version__}-py3.13-{source_hash()}"
    push = localkube_registry.push_address
    with filelock.FileLock(f"/tmp/minimaldask-e2e-image-{tag}.lock", timeout=1200):
        if image_index(push, repository, tag) is None:
            subprocess.run(
                [sys.executable, "-m", "minimaldask.image", "build",
                 "--platform", ",".join(PLATFORMS.values()), "--python", "3.13",
                 "--push", f"{push}/{repository}:{tag}", "--insecure"],
                check=True, timeout=900,
            )  # fmt: skip
    index = image_index(push, repository, tag)
    assert index is not None, f"the build pushed no {repository}:{tag}"
    digests = {
        f"{m['platform']['os']}/{m['platform']['architecture']}"
        + (f"/{m['platform']['variant']}" if m["platform"].get("variant") else ""): m["digest"]
        for m in index["manifests"]
    }
    pull = f"{localkube_registry.pull_name}/{repository}"
    return f"{pull}:{tag}", {
        name: f"{pull}@{digests[platform]}" for name, platform in PLATFORMS.items()
    }


def image_index(registry: str, repository: str, tag: str) -> dict | None:
    """The image index ``repository:tag`` in the local registry, None if it has none."""
    request = urllib.request.Request(
        f"http://{registry}/v2/{repository}/manifests/{tag}", headers={"Accept": INDEX}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise


def test_the_article_example_computes_on_amd64_arm64_and_armv7_workers(images, namespace, kube):
    index, manifests = images
    name = "mixed"
    env = {
        **os.environ,
        "DASK_MINIMALDASK__IMAGE__REPOSITORY": index.rpartition(":")[0],
        "DASK_MINIMALDASK__IMAGE__TAG": index.rpartition(":")[2],
        # The nanny gives its worker process death-timeout to start (60 s by default):
        # under qemu-user that process imports distributed for 70 s and more (arm64,
        # measured at a load of 15 on this machine, 4 minutes at 30), and the nanny gave up.
        "DASK_MINIMALDASK__DEATH_TIMEOUT": "600s",
        # Room for qemu-user's translation cache beside each process.
        "DASK_MINIMALDASK__WORKER__MEMORY": "512Mi",
    }
    run = subprocess.run(
        [str(client_venv("3.13", ROOT)), str(ROOT / "tests/e2e/mixed_arch_client.py"),
         namespace, name, manifests["arm64"], manifests["armv7"]],
        env=env, capture_output=True, text=True, timeout=1500,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    out = json.loads(run.stdout.splitlines()[-1])
    print(json.dumps(out, indent=1))
    # Why each forwarded connection ended (the client logs it at DEBUG): shown with -s.
    print("\n".join(line for line in run.stderr.splitlines() if "port-forward" in line))

    assert out["python"].startswith("3.13")
    assert sorted(out["machines"].values()) == ["aarch64", "armv7l", "x86_64"]
    assert {v[:4] for v in out["pythons"].values()} == {"3.13"}
    # Every architecture computed part of the result, and the result is right.
    assert sorted(out["tasks"]) == ["aarch64", "armv7l", "x86_64"], out["tasks"]
    assert all(n > 0 for n in out["tasks"].values()), out["tasks"]
    assert out["shape"] == [5000]
    assert out["max_abs_error"] < 1e-12
    assert 0.9 < out["mean"] < 1.1  # the mean of x + x.T for uniform x
    # The added worker Deployments went with the cluster.
    assert kube.objects_of(name) == []
