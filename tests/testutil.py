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


def workers_of(client) -> dict:
    """The scheduler's workers now, by address, asked of the scheduler itself.

    Not ``client.scheduler_info()["workers"]``: distributed (2026.8.0) returns its
    cache from that call, which the client's periodic poll (every 2 s, no per-worker
    details) can overwrite between the fresh fetch and the return: now and then the
    answer has no workers at all (tests/integration/test_local_backend.py counts how
    often). A CI run once failed on it (a scale-down test's KeyError).
    """
    return client.sync(client.scheduler.identity, n_workers=-1)["workers"]


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


def why_recomputed(client, twice: dict, lines: int = 200) -> str:
    """What the scheduler saw of keys computed twice: one key's story and its own log.

    For an assertion's message: the first key's transitions (which worker held
    it, and the stimulus that lost it), then the scheduler's last ``lines`` log
    lines (the plugin's drains and retirements, workers leaving).
    """
    if not twice:
        return ""
    key = sorted(twice)[0]
    story = client.run_on_scheduler(
        lambda dask_scheduler, key=key: [str(t) for t in dask_scheduler.story(key)]
    )
    logs = [f"{level} {text}" for level, text in client.get_scheduler_logs(n=lines)]
    return "\n".join(
        [f"{len(twice)} keys computed twice; the story of {key}:", *story,
         f"the scheduler's last {lines} log lines (newest first):", *logs]
    )  # fmt: skip


def computed_more_than_once(client, keys) -> dict:
    """Keys whose result the scheduler stored more than once: each time, a result was lost.

    From the scheduler's transition log (keep it long enough with
    ``DASK_DISTRIBUTED__ADMIN__LOW_LEVEL_LOG_LENGTH``): a result is stored at
    ``processing -> memory``. A task that was only queued on a worker that left
    is sent to another (``processing`` twice) but computed once: that is no loss.
    """
    from collections import Counter

    log = client.run_on_scheduler(
        lambda dask_scheduler: [
            t[0] for t in dask_scheduler.transition_log if t[1] == "processing" and t[2] == "memory"
        ]
    )
    keys = set(keys)
    return {k: n for k, n in Counter(k for k in log if k in keys).items() if n > 1}
