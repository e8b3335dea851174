"""An image around a CPython no Debian suite ships (--python-from), built and run in Docker.

The CPython is pyenv's 3.12 of this machine, as an archive laid out like the
standalone CPython builds (tests/image/pythonfrom.py). The image runs a
scheduler and two workers; a client of the image's own Python computes.
The workflow's build step (tools/ci/build-image.sh) builds the same image
from the same archive pinned by URL and sha256.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest
from dockerutil import EPOCH, IMPORT_ALL, REPO, Network, build_cli, docker

from minimaldask import contract
from pythonfrom import pyenv_prefix, standalone_archive

pytestmark = [pytest.mark.docker, pytest.mark.slow]

CLIENT = r"""
import sys
import dask.array as da
import numpy as np
from distributed import Client
client = Client(sys.argv[1], timeout=120)
client.wait_for_workers(2, timeout=300)
versions = client.get_versions(check=True)
pythons = {w["host"]["python"].split(".")[:2] == ["3", "12"] for w in versions["workers"].values()}
assert pythons == {True}, versions
x = da.random.RandomState(0).random((4000, 4000), chunks=(1000, 1000))
z = (x + x.T)[::2, 2000:].mean(axis=1)
remote = z.compute()
assert np.allclose(remote, z.compute(scheduler="sync"))
print("computation ok on", len(versions["workers"]), "workers,", sys.version.split()[0])
"""


@pytest.fixture(scope="module")
def archive():
    return standalone_archive("3.12")


@pytest.fixture(scope="module")
def py312(images, archive):
    return images("linux/amd64", python="3.12", python_from=archive)


def test_image_records_where_its_python_came_from(py312, archive, load):
    tag = load(py312)
    labels = json.loads(
        docker("image", "inspect", "--format", "{{json .Config.Labels}}", tag).stdout
    )
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    assert labels["org.minimaldask.python.version"] == "3.12"
    assert labels["org.minimaldask.python.source"] == "standalone"
    assert labels["org.minimaldask.python.archive.sha256"] == digest
    assert labels["org.minimaldask.debian.suite"] == "trixie"
    assert f"Python 3.12: CPython 3.12 for linux/amd64 from archive sha256:{digest}" in py312.table
    assert f"--python-from {archive}: CPython 3.12" in py312.table  # the path in the log only
    user = docker(
        "image", "inspect", "--format", "{{.Config.User}} {{json .Config.Entrypoint}}", tag
    )
    uid, entrypoint = user.stdout.split(" ", 1)
    assert uid == f"{contract.IMAGE_UID}:{contract.IMAGE_UID}"
    # The module the contract names (it moved to minimaldask.pod in the refactor).
    assert json.loads(entrypoint) == [
        "/usr/bin/tini",
        "--",
        "/usr/bin/python3",
        "-m",
        contract.ENTRYPOINT_MODULE,
    ]


def test_every_extension_module_imports_and_bytecode_is_there(py312, load):
    tag = load(py312)
    result = docker(
        "run", "--rm", "--entrypoint", "/usr/bin/python3", tag, "-c", IMPORT_ALL, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    code = (
        "import importlib.util, sys, distributed, dask.array;"
        "print(sys.version_info[:2], importlib.util.cache_from_source(distributed.__file__));"
        "print(sys.modules['distributed'].__cached__)"
    )
    out = docker(
        "run", "--rm", "--read-only", "--entrypoint", "/usr/bin/python3", tag, "-c", code
    ).stdout
    assert out.startswith("(3, 12)")
    assert "__pycache__/__init__.cpython-312.pyc" in out


def test_scheduler_and_two_workers_compute(py312, load):
    tag = load(py312)
    net = Network(tag)
    try:
        net.run("master-node")
        net.run("worker-1", env={"WORKER": "1"})
        net.run("worker-2", env={"WORKER": "1"})
        net.wait_log("master-node", "Scheduler at:")
        client = net.run(
            "client", entrypoint="/usr/bin/python3", args=["-c", CLIENT, "tcp://master-node:8786"],
            detach=False,
        )  # fmt: skip
        logs = "".join(net.logs(n) for n in ("master-node", "worker-1", "worker-2"))
        assert client.returncode == 0, client.stdout + client.stderr + logs
        assert "computation ok on 2 workers, 3.12" in client.stdout
    finally:
        net.close()


def pins(tmp_path, archive, digest):
    """tools/ci/cpython.json's shape, pointing at a local copy of the archive."""
    served = tmp_path / "served"
    served.mkdir()
    shutil.copy(archive, served / "cpython-3.12.1+local-x86_64-unknown-linux-gnu.tar.gz")
    path = tmp_path / "pins.json"
    path.write_text(json.dumps({
        "release": "local",
        "url": f"file://{served}/cpython-{{version}}+{{release}}-{{triple}}.tar.gz",
        "triples": {"linux/amd64": "x86_64-unknown-linux-gnu"},
        "pythons": {"3.12": {"version": "3.12.1", "sha256": {"linux/amd64": digest}}},
    }))  # fmt: skip
    return path


def build_step(tmp_path, pins_file, **env):
    return subprocess.run(
        ["bash", str(REPO / "tools/ci/build-image.sh")],
        capture_output=True, text=True, timeout=900,
        env={**os.environ, "SOURCE_DATE_EPOCH": EPOCH, "BUILDER_PYTHON": sys.executable,
             "PYTHON": "3.12", "PLATFORMS": "linux/amd64", "CPYTHON_PINS": str(pins_file),
             "CPYTHON_DIR": str(tmp_path / "downloads"), "OUTPUT": str(tmp_path / "oci"), **env},
    )  # fmt: skip


def test_workflow_build_step_builds_the_same_image_from_the_pinned_archive(
    tmp_path, archive, py312
):
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    result = build_step(tmp_path, pins(tmp_path, archive, digest))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Python 3.12: CPython 3.12 for linux/amd64" in result.stdout
    assert f"index {py312.digest}" in result.stdout


def test_workflow_build_step_refuses_an_archive_of_another_digest(tmp_path, archive):
    result = build_step(tmp_path, pins(tmp_path, archive, "0" * 64))
    assert result.returncode == 1
    assert f"but {'0' * 64} is pinned: refused" in result.stderr
    assert not list((tmp_path / "downloads").iterdir())
    assert not (tmp_path / "oci").exists()


def test_a_library_no_debian_package_provides_stops_the_build(tmp_path):
    # A prefix whose extension module needs Tk, which the builder does not add.
    prefix = pyenv_prefix("3.12")
    fake = tmp_path / "prefix"
    (fake / "bin").mkdir(parents=True)
    shutil.copy(prefix / "bin/python3.12", fake / "bin/python3.12")
    (fake / "lib").mkdir()
    for lib in prefix.glob("lib/libpython3.12.so*"):
        os.symlink(lib, fake / "lib" / lib.name)
    dynload = fake / "lib/python3.12/lib-dynload"
    dynload.mkdir(parents=True)
    shutil.copy(prefix / "lib/python3.12/os.py", fake / "lib/python3.12/os.py")
    (tkinter,) = prefix.glob("lib/python3.12/lib-dynload/_tkinter.*.so")
    shutil.copy(tkinter, dynload / "_tk.cpython-312-x86_64-linux-gnu.so")
    result = build_cli("--python-from", str(fake), "--output", str(tmp_path / "out"))
    assert result.returncode == 1
    line = result.stderr.strip().splitlines()[-1]
    # Tcl and Tk: the first in name order is named, the other counted.
    named = "needs libtcl8.6.so (for /usr/lib/python3.12/lib-dynload/_tk.cpython-312-x86_64-linux-gnu.so) (and 1 more)"
    assert named in line, line
    assert "no Debian package of trixie known to the builder provides it" in line
    assert not (tmp_path / "out").exists()
