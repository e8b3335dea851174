"""Helpers shared by the tests."""

import time

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
