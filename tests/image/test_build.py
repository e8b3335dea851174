"""The builder end to end: reproducible digests, a registry push, and bad input."""

import filecmp
import os
import shutil
import socket
import subprocess
import time

import dask
import pytest
from dockerutil import build_cli

from minimaldask.image.registry import image_platforms, image_versions

pytestmark = pytest.mark.slow


@pytest.fixture
def local_registry(tmp_path, docker_engine):
    """Debian's docker-registry (the distribution server) on a free port, plain http.

    tools/ci/docker-up.sh (run by the docker_engine fixture) installs it.
    """
    exe = shutil.which("docker-registry")
    assert exe, "docker-registry is not installed: run tools/ci/docker-up.sh"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "registry.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {tmp_path / 'data'}\nhttp:\n  addr: 127.0.0.1:{port}\n"
    )
    proc = subprocess.Popen(
        [exe, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.2)
    yield f"127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


def test_two_builds_give_the_same_digests_and_push(tmp_path, local_registry):
    ref = f"{local_registry}/minimaldask:{dask.__version__}-py3.11"
    digests, times = [], []
    for name, extra in (("one", []), ("two", ["--push", ref, "--insecure"])):
        start = time.monotonic()
        result = build_cli("--platform", "linux/amd64", "--output", str(tmp_path / name), *extra)
        times.append(time.monotonic() - start)
        assert result.returncode == 0, result.stderr
        digests.append(next(ln for ln in result.stdout.splitlines() if ln.startswith("index ")))
    print(f"build times: {times[0]:.1f} s, {times[1]:.1f} s; {digests[0]}")
    assert digests[0] == digests[1]
    compare = filecmp.dircmp(tmp_path / "one", tmp_path / "two")
    assert not compare.diff_files and not compare.left_only and not compare.right_only
    assert image_platforms(ref, insecure=True) == ["linux/amd64"]
    assert image_versions(ref, insecure=True) == {
        "dask": dask.__version__,
        "distributed": dask.__version__,
        "python": "3.11",
    }


def _no_output(tmp_path):
    leftovers = [p for p in os.listdir(tmp_path) if p.startswith("out")]
    assert leftovers == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--platform", "linux/mips"], "unknown platform 'linux/mips'"),
        (["--deb", "minimaldask-no-such-package"], "Debian package 'minimaldask-no-such-package' does not exist in bookworm for amd64"),
        (["--pip", "pyspark==3.5.0"], "no wheel of 'pyspark' for linux/amd64 and Python 3.11"),
        (["--push", "127.0.0.1:9/minimaldask:x", "--insecure"], "cannot reach the registry 127.0.0.1:9"),
        (["--debian-mirror", "http://127.0.0.1:9/debian"], "cannot reach the Debian archive at http://127.0.0.1:9/debian"),
    ],
)  # fmt: skip
def test_bad_input_stops_with_one_line_and_no_output(args, message, tmp_path):
    result = build_cli(
        "--platform", "linux/amd64", *args, "--python", "3.11",
        "--output", str(tmp_path / "out"), "--docker-archive", str(tmp_path / "out.tar"),
    )  # fmt: skip
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("minimaldask image build: error: ")
    assert message in lines[0]
    _no_output(tmp_path)
