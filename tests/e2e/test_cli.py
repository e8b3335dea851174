"""Every Kubernetes command of `minimaldask`, once, as the namespace-only user."""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.request

import pytest

pytestmark = [pytest.mark.kube, pytest.mark.slow]


def cli(*args: str, timeout: float = 180) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "minimaldask.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, f"minimaldask {' '.join(args)}:\n{result.stdout}{result.stderr}"
    return result.stdout


def test_every_command(namespace, kube, image):
    ns = ["-n", namespace]
    small = ["--cpu", "50m", "--memory", "384Mi", "--image", image]
    out = cli("up", "cli", *ns, "--workers", "1", *small)
    assert "Cluster cli is running" in out
    assert kube.pods("cli", "worker")  # still running after the command exited

    assert "cli" in cli("list", *ns)
    status = cli("status", "cli", *ns)
    assert "scheduler" in status and "worker" in status

    assert "has 2 workers" in cli("scale", "cli", "2", *ns)
    assert len(kube.pods("cli", "worker")) == 2

    logs = cli("logs", "cli", *ns)
    assert "distributed.scheduler" in logs and "distributed.worker" in logs

    proc = subprocess.Popen(
        [sys.executable, "-m", "minimaldask.cli", "dashboard", "cli", *ns],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        link = re.search(r"http://127\.0\.0\.1:\d+", line)
        assert link, line
        with urllib.request.urlopen(f"{link.group(0)}/health", timeout=30) as r:
            assert r.read() == b"ok"
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    yaml_text = cli("manifests", "cli", *ns, "--workers", "2", *small)
    assert yaml_text.count("kind: Deployment") == 2

    assert "Deleted cluster cli" in cli("down", "cli", *ns)
    assert kube.objects_of("cli") == []
    assert "nothing to delete" in cli("down", "cli", *ns)
