"""The janitor in a real local scheduler: timeouts end the cluster and say why."""

import json
import subprocess
import sys
import textwrap
import time

import psutil
import pytest
from distributed import Client
from distributed.client import FutureCancelledError

from minimaldask import MinimalCluster
from minimaldask.local.backend import state_root
from testutil import cluster_processes, wait_until

pytestmark = pytest.mark.timeout(180)


def test_idle_cluster_with_a_client_attached_ends_itself_and_says_why(cluster_name):
    with pytest.warns(RuntimeWarning, match="idle_timeout of 4s"):
        cluster = MinimalCluster(
            name=cluster_name, backend="local", workers=1, idle_timeout="4s", no_client_timeout=None
        )
        client = Client(cluster)
        assert client.submit(sum, [1, 2]).result() == 3
        assert wait_until(lambda: cluster.shutdown_reason is not None, timeout=20)
    assert cluster.shutdown_reason == (
        f"minimaldask ended cluster {cluster_name!r}: "
        "it was idle (no task to run) for its idle_timeout of 4s"
    )
    # Nothing is left running, and the client closed instead of hanging on a reconnect.
    assert wait_until(lambda: cluster_processes(cluster_name) == [], timeout=30)
    assert wait_until(lambda: client.status == "closed", timeout=30)
    cluster.close()
    client.close()
    # The processes this handle started ended by themselves: none is left a zombie child of
    # this process (a notebook kernel that lives for days would collect them).
    assert wait_until(lambda: zombie_children() == [], timeout=10), zombie_children()


def zombie_children():
    return [
        p for p in psutil.Process().children(recursive=True) if p.status() == psutil.STATUS_ZOMBIE
    ]


def test_max_lifetime_ends_a_busy_cluster_and_waiting_futures_get_the_reason(cluster_name):
    with (
        MinimalCluster(
            name=cluster_name, backend="local", workers=1, max_lifetime="8s", idle_timeout=None
        ) as cluster,
        Client(cluster) as client,
    ):
        busy = client.submit(time.sleep, 120)
        t = time.monotonic()
        with pytest.raises(FutureCancelledError, match="max_lifetime of 8s"):
            busy.result(timeout=60)
        assert time.monotonic() - t < 30
    assert wait_until(lambda: cluster_processes(cluster_name) == [], timeout=30)


def test_killed_client_no_client_timeout_ends_the_cluster(cluster_name):
    script = textwrap.dedent(
        f"""
        import json, time
        from minimaldask import MinimalCluster
        c = MinimalCluster(name={cluster_name!r}, backend="local", workers=1,
                           idle_timeout=None, no_client_timeout="3s", death_timeout="3s", quiet=True)
        print(json.dumps(sorted(c.requested)), flush=True)
        time.sleep(600)
        """
    )
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert len(json.loads(owner.stdout.readline())) == 1
    # While the handle lives, the cluster lives, though no Client ever connected.
    time.sleep(8)
    assert len(cluster_processes(cluster_name)) >= 2
    owner.kill()
    owner.wait()
    t = time.monotonic()
    # Handle heartbeat TTL (10 s) + no_client_timeout (3 s) + death_timeout (3 s).
    assert wait_until(lambda: cluster_processes(cluster_name) == [], timeout=45)
    print(f"gone {time.monotonic() - t:.1f}s after the SIGKILL")
    log = (state_root() / cluster_name / "scheduler.log").read_text()
    assert "no client was connected for its no_client_timeout of 3s" in log


def test_usage_counts_worker_and_core_seconds(cluster_name, capsys):
    with MinimalCluster(
        name=cluster_name, backend="local", workers=2, resources={"cpu": "2", "memory": "1Gi"}
    ) as cluster:
        time.sleep(3)
        usage = cluster.usage()
        assert usage["peak_workers"] == 2
        assert usage["workers"] == 2
        assert 4 <= usage["worker_seconds"] < 30
        assert usage["core_seconds"] == pytest.approx(2 * usage["worker_seconds"], rel=0.01)
        assert usage["lifetime"] >= 3
    out = capsys.readouterr().out
    assert f"Cluster {cluster_name!r} deleted after" in out
    assert "worker-seconds" in out and "core-seconds" in out and "2 workers at peak" in out
