"""zstd layers: containerd (>= 1.5) runs them; Debian's Docker 20.10 cannot load them.

gzip stays the default: Docker before 23 does not read zstd layers. The level is named through the
CLI's --compression-level (9, the default: 4.6 CPU-s for the default image's layers where 19
takes 92; the decoder reads every level alike).
"""

import os
import shutil
import subprocess
import tarfile
import time

import pytest
from dockerutil import IMPORT_ALL, build_cli

pytestmark = [pytest.mark.docker, pytest.mark.slow]

SOCKETS = ("/run/containerd/containerd.sock", "/var/run/docker/containerd/containerd.sock")


def test_zstd_image_runs_in_containerd(tmp_path, docker_engine):
    socket = next((s for s in SOCKETS if os.path.exists(s)), None)
    assert socket and shutil.which("ctr"), "containerd (started by dockerd) and ctr are needed"
    start = time.monotonic()
    result = build_cli(
        "--platform", "linux/amd64", "--compression", "zstd", "--compression-level", "9",
        "--output", str(tmp_path / "oci"), "--tag", "minimaldask-test:zstd",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    print(f"zstd build: {time.monotonic() - start:.1f} s\n{result.stdout}")
    archive = tmp_path / "oci.tar"
    with tarfile.open(archive, "w") as tar:
        for name in sorted(os.listdir(tmp_path / "oci")):
            tar.add(tmp_path / "oci" / name, arcname=name)
    ctr = ["ctr", "-a", socket, "-n", "minimaldask-test"]
    subprocess.run([*ctr, "images", "import", str(archive)], check=True, capture_output=True)
    try:
        run = subprocess.run(
            [*ctr, "run", "--rm", "minimaldask-test:zstd", f"zstd-{os.getpid()}",
             "/usr/bin/python3", "-c", IMPORT_ALL],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        print(run.stdout)
        assert run.returncode == 0, run.stdout + run.stderr
    finally:
        subprocess.run([*ctr, "images", "rm", "minimaldask-test:zstd"], capture_output=True)
