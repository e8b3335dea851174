"""The image workflow's Pythons and the pinned standalone CPython archives (tools/ci)."""

import hashlib
import importlib.util
import json
import re
from pathlib import Path

import pytest
import yaml

from minimaldask.image.recipe import PLATFORMS, PYTHONS, STANDALONE_PYTHONS, supported_pythons

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("cpython", REPO / "tools/ci/cpython.py")
cpython = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cpython)


def matrix():
    workflow = yaml.safe_load((REPO / ".github/workflows/image.yml").read_text())
    return workflow["jobs"]["build"]["strategy"]["matrix"]["include"]


def test_the_workflow_publishes_every_supported_python():
    assert sorted(e["python"] for e in matrix()) == sorted(supported_pythons())


def test_the_workflow_builds_every_platform_each_python_can_have():
    for entry in matrix():
        python = entry["python"]
        can = [p for p, (arch, _, _, pythons) in PLATFORMS.items() if python in pythons]
        if python in STANDALONE_PYTHONS:
            can = [p for p in PLATFORMS if p != "linux/arm/v7"]
        assert entry["platforms"].split(",") == can, python


def test_every_standalone_python_is_pinned_for_its_platforms():
    pins = json.loads((REPO / "tools/ci/cpython.json").read_text())
    assert sorted(pins["pythons"]) == sorted(STANDALONE_PYTHONS)
    for python in STANDALONE_PYTHONS:
        for platform in ("linux/amd64", "linux/arm64"):
            digest = pins["pythons"][python]["sha256"][platform]
            assert re.fullmatch(r"[0-9a-f]{64}", digest), (python, platform, digest)
    assert not set(PYTHONS) & set(STANDALONE_PYTHONS)


def test_a_placeholder_digest_is_refused_before_any_download():
    pins = json.loads((REPO / "tools/ci/cpython.json").read_text())
    pins["pythons"]["3.12"]["sha256"]["linux/amd64"] = "FILL-IN-FROM-SHA256SUMS"
    with pytest.raises(
        cpython.PinError,
        match="is 'FILL-IN-FROM-SHA256SUMS', not a digest: copy it from the SHA256SUMS",
    ):
        cpython.pin(pins, "3.12", "linux/amd64")


def test_unpinned_python_and_platform_are_refused():
    pins = json.loads((REPO / "tools/ci/cpython.json").read_text())
    with pytest.raises(cpython.PinError, match=r"no standalone CPython pinned for Python 3\.9"):
        cpython.pin(pins, "3.9", "linux/amd64")
    with pytest.raises(
        cpython.PinError, match=r"no standalone CPython 3\.12 pinned for linux/arm/v7"
    ):
        cpython.pin(pins, "3.12", "linux/arm/v7")


def test_fetch_checks_the_digest_and_keeps_nothing_that_differs(tmp_path):
    source = tmp_path / "cpython.tar.gz"
    source.write_bytes(b"not really an archive")
    good = hashlib.sha256(source.read_bytes()).hexdigest()
    dest = tmp_path / "dest"
    with pytest.raises(cpython.PinError, match=f"but {'1' * 64} is pinned: refused"):
        cpython.fetch(source.as_uri(), "1" * 64, dest)
    assert list(dest.iterdir()) == []
    path = cpython.fetch(source.as_uri(), good, dest)
    assert path.read_bytes() == source.read_bytes()
    # A copy already there with the pinned digest is used as it is.
    source.unlink()
    assert cpython.fetch(source.as_uri(), good, dest) == path


def test_the_url_is_made_from_the_pins():
    pins = {
        "release": "20241016",
        "url": "https://example.invalid/{release}/cpython-{version}+{release}-{triple}.tar.gz",
        "triples": {"linux/arm64": "aarch64-unknown-linux-gnu"},
        "pythons": {"3.12": {"version": "3.12.7", "sha256": {"linux/arm64": "a" * 64}}},
    }
    assert cpython.pin(pins, "3.12", "linux/arm64") == (
        "https://example.invalid/20241016/cpython-3.12.7+20241016-aarch64-unknown-linux-gnu.tar.gz",
        "a" * 64,
    )
