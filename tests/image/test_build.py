"""The builder end to end: reproducible digests, a lock, a registry push, and bad input."""

import filecmp
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import dask
import pytest
from dockerutil import EPOCH, build_cli

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


def index_digest(stdout):
    return next(ln.split()[1] for ln in stdout.splitlines() if ln.startswith("index "))


def layout_annotations(layout):
    top = json.loads((layout / "index.json").read_text())
    digest = top["manifests"][0]["digest"].split(":")[1]
    return json.loads((layout / "blobs/sha256" / digest).read_bytes())["annotations"]


def test_builds_from_one_lock_give_the_same_digest_and_push(tmp_path, local_registry, images):
    built = images("linux/amd64")  # resolved, and wrote its lock
    ref = f"{local_registry}/minimaldask:{dask.__version__}-py3.11"
    digests, times = [], []
    runs = (
        ("locked", ["--push", ref, "--insecure"]),
        ("locked-again", []),
    )
    for name, extra in runs:
        start = time.monotonic()
        result = build_cli("--platform", "linux/amd64", "--python", "3.11", "--lock", str(built.lock),
                           "--output", str(tmp_path / name), *extra)  # fmt: skip
        times.append(time.monotonic() - start)
        assert result.returncode == 0, result.stderr
        digests.append(index_digest(result.stdout))
    print(f"build times: {', '.join(f'{t:.1f} s' for t in times)}; {digests[0]}")
    # Two builds from one lock, and the build that wrote it: one digest.
    assert digests == [built.digest, built.digest]
    # The blobs: index.json names the tag, which differs.
    compare = filecmp.dircmp(
        built.directory / "oci/blobs/sha256", tmp_path / "locked-again/blobs/sha256"
    )
    assert not compare.diff_files and not compare.left_only and not compare.right_only
    text = built.lock.read_text()
    assert "--hash=sha256:" in text and "\ndistributed==" in text
    annotations = layout_annotations(tmp_path / "locked")
    assert annotations["org.minimaldask.lock.sha256"] == hashlib.sha256(text.encode()).hexdigest()
    assert annotations["org.minimaldask.debian.suite"] == "bookworm"
    assert image_platforms(ref, insecure=True) == ["linux/amd64"]
    assert image_versions(ref, insecure=True) == {
        "dask": dask.__version__,
        "distributed": dask.__version__,
        "python": "3.11",
    }


def test_a_lock_whose_digest_pip_cannot_match_stops_the_build(tmp_path, images):
    text = images("linux/amd64").lock.read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith("toolz=="))
    lock = tmp_path / "image.lock"
    lock.write_text(text.replace(line, line.split(" --hash")[0] + " --hash=sha256:" + "0" * 64))
    result = build_cli("--platform", "linux/amd64", "--python", "3.11", "--lock", str(lock),
                       "--output", str(tmp_path / "out"))  # fmt: skip
    assert result.returncode == 1
    assert "pip could not download the locked wheels for linux/amd64" in result.stderr
    assert "THESE PACKAGES DO NOT MATCH THE HASHES" in result.stderr
    _no_output(tmp_path)


def test_a_build_without_the_debian_keyring_stops_and_names_the_package(tmp_path):
    # The keyring directory hidden by an empty tmpfs in a mount namespace of this test.
    script = (
        "mount -t tmpfs none /usr/share/keyrings && "
        f"SOURCE_DATE_EPOCH={EPOCH} exec {sys.executable} -m minimaldask.image build"
        f" --platform linux/amd64 --python 3.11 --output {tmp_path / 'out'}"
    )
    env = {k: v for k, v in os.environ.items() if k != "MINIMALDASK_DEBIAN_KEYRING"}
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("minimaldask image build: error: no Debian archive keyring")
    assert (
        "install the debian-archive-keyring package (apt-get install debian-archive-keyring)"
        in lines[0]
    )
    _no_output(tmp_path)


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
        (["--debian-keyring", "/nonexistent.gpg"], "--debian-keyring /nonexistent.gpg is not a file"),
        (["--python-from", "/nonexistent"], "--python-from /nonexistent: no such file or directory"),
        (["--lock", "/nonexistent.lock"], "--lock /nonexistent.lock: No such file or directory"),
        (["--python", "3.12"], "unsupported Python '3.12': choose from 3.11, 3.13, 3.14; Python 3.12 has no Debian build: give a relocatable CPython 3.12 with --python-from PATH"),
    ],
)  # fmt: skip
def test_bad_input_stops_with_one_line_and_no_output(args, message, tmp_path):
    python = [] if "--python" in args or "--python-from" in args else ["--python", "3.11"]
    result = build_cli(
        "--platform", "linux/amd64", *args, *python,
        "--output", str(tmp_path / "out"), "--docker-archive", str(tmp_path / "out.tar"),
    )  # fmt: skip
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("minimaldask image build: error: ")
    assert message in lines[0]
    _no_output(tmp_path)
