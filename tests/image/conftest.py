"""Images built once per test run (cached outside the repository by their inputs) and Docker.

The cache key holds everything that decides an image: platform, flavor,
Python, dask version, the minimaldask sources and the day (the Debian archive
and the package index move). ``MINIMALDASK_TEST_CACHE`` moves the cache.
"""

import hashlib
import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import dask
import pytest
from dockerutil import build_cli

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(
    os.environ.get("MINIMALDASK_TEST_CACHE", "~/.cache/minimaldask/test-images")
).expanduser()


def source_hash() -> str:
    h = hashlib.sha256()
    for path in sorted((REPO / "src" / "minimaldask").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            h.update(str(path.relative_to(REPO)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def python_for(platform):
    return "3.13" if platform == "linux/arm/v7" else "3.11"


# This machine's Debian mirror is a frozen snapshot: forky's InRelease is past its
# Valid-Until (a mirror that follows Debian renews it weekly). Accepted for the
# 3.14 images only, and the builder says so in its output.
IGNORE_VALID_UNTIL = {"3.14"}


@dataclass
class Built:
    platform: str
    flavor: str
    python: str
    directory: Path
    digest: str
    seconds: float
    table: str

    @property
    def archive(self):
        return self.directory / "image.tar"

    @property
    def lock(self):
        return self.directory / "image.lock"

    @property
    def tag(self):
        slug = self.platform.replace("/", "-")
        return f"minimaldask-test:{slug}-{self.flavor}-{self.directory.name[:8]}"


def build_image(platform, flavor="default", python=None, python_from=None):
    """Build an image (or take it from the cache); ``python_from``: a CPython archive."""
    python = python or python_for(platform)
    source = []
    if python_from is not None:
        source = ["--python-from", str(python_from)]
        python_from = hashlib.sha256(Path(python_from).read_bytes()).hexdigest()
    elif python in IGNORE_VALID_UNTIL:
        source = ["--python", python, "--ignore-valid-until"]
    else:
        source = ["--python", python]
    key_text = json.dumps(
        [platform, flavor, python, python_from, dask.__version__, source_hash(),
         time.strftime("%Y-%m-%d")]
    )  # fmt: skip
    key = hashlib.sha256(key_text.encode()).hexdigest()[:16]
    directory = CACHE / key
    done = directory / "done.json"
    if done.exists():
        return Built(**{**json.loads(done.read_text()), "directory": directory})
    directory.mkdir(parents=True, exist_ok=True)
    slug = platform.replace("/", "-")
    tag = f"minimaldask-test:{slug}-{flavor}-{key[:8]}"
    start = time.monotonic()
    result = build_cli(
        "--platform", platform, "--flavor", flavor, *source,
        "--docker-archive", str(directory / "image.tar"),
        "--output", str(directory / "oci"), "--tag", tag,
        "--write-lock", str(directory / "image.lock"),
    )  # fmt: skip
    seconds = time.monotonic() - start
    assert result.returncode == 0, result.stderr + result.stdout
    digest = next(
        line.split()[1] for line in result.stdout.splitlines() if line.startswith("index ")
    )
    print(f"\nbuilt {platform} {flavor} in {seconds:.1f} s\n{result.stdout}")
    record = {
        "platform": platform,
        "flavor": flavor,
        "python": python,
        "digest": digest,
        "seconds": seconds,
        "table": result.stdout,
    }
    done.write_text(json.dumps(record))
    return Built(**record, directory=directory)


@pytest.fixture(scope="session")
def images():
    """Build (or take from the cache) an image: ``images(platform, flavor, python, python_from)``."""
    built = {}

    def get(platform, flavor="default", python=None, python_from=None):
        key = (platform, flavor, python, python_from)
        if key not in built:
            built[key] = build_image(platform, flavor, python, python_from)
        return built[key]

    return get


@pytest.fixture(scope="session")
def docker_engine():
    """A running Docker engine and qemu binfmt entries: tools/ci/docker-up.sh (idempotent)."""
    up = subprocess.run(
        ["bash", str(REPO / "tools/ci/docker-up.sh")], capture_output=True, text=True, timeout=900
    )
    print(up.stdout)
    assert up.returncode == 0, up.stdout + up.stderr
    return "docker"


@pytest.fixture(scope="session")
def load(docker_engine):
    """Load a built image into Docker (once) and return its tag."""
    loaded = set()

    def do(built):
        if built.tag not in loaded:
            result = subprocess.run(
                ["docker", "load", "-i", str(built.archive)], capture_output=True, text=True
            )
            assert result.returncode == 0, result.stderr
            loaded.add(built.tag)
        return built.tag

    return do
