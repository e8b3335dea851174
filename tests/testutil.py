"""Helpers shared by the tests."""

import hashlib
import time
from pathlib import Path

import psutil

from minimaldask.local.backend import state_root


def cluster_processes(name):
    """Processes (any parent) that belong to the local cluster ``name``."""
    marker = str(state_root() / name)
    found = []
    for p in psutil.process_iter(["cmdline", "cwd"]):
        try:
            if p.info["cwd"] == marker or any(
                marker in a or f"{name}-worker-" in a for a in p.info["cmdline"] or []
            ):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def wait_until(predicate, timeout, interval=0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def source_hash() -> str:
    """A digest of minimaldask's sources: what an image built from them depends on."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for path in sorted((root / "src" / "minimaldask").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            h.update(str(path.relative_to(root)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]
