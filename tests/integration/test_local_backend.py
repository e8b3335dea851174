"""The local backend with real dask processes."""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap

import distributed
import numpy as np
import psutil
import pytest
from distributed import Client

from minimaldask import (
    MinimalCluster,
    delete_dask_cluster,
    list_clusters,
    start_dask_cluster,
)
from minimaldask.cli import article_computation
from minimaldask.exceptions import ClusterNotFoundError, ClusterStartError
from minimaldask.local.backend import state_root
from testutil import cluster_processes, computed_more_than_once, wait_until, workers_of

pytestmark = pytest.mark.timeout(300)


def test_article_computation_on_two_local_workers(cluster_name):
    z = article_computation()
    with MinimalCluster(name=cluster_name, backend="local", workers=2) as cluster:
        with Client(cluster) as client:
            assert len(workers_of(client)) == 2
            result = client.compute(z).result()
        assert cluster.dashboard_link.startswith("http://127.0.0.1:")
    np.testing.assert_allclose(result, z.compute(scheduler="sync"))
    assert result.shape == (5000,)


def test_scale_up_and_down_keeps_every_persisted_key(cluster_name):
    with MinimalCluster(name=cluster_name, backend="local", workers=1) as cluster:
        with Client(cluster) as client:
            cluster.scale(3)
            client.wait_for_workers(3, timeout=60)
            addresses = sorted(workers_of(client))
            # 200 keys, pinned round-robin so that every worker holds some.
            futures = [
                client.submit(np.full, 1000, i, workers=[addresses[i % 3]], pure=False)
                for i in range(200)
            ]
            distributed.wait(futures)
            holders = {w for ws in client.who_has(futures).values() for w in ws}
            assert len(holders) == 3
            cluster.scale(1)
            assert wait_until(lambda: len(workers_of(client)) == 1, 30)
            assert len(cluster.requested) == 1
            values = client.gather(futures)
            assert [int(v[0]) for v in values] == list(range(200))
            # Nothing was recomputed: each key was computed once and then moved.
            assert computed_more_than_once(client, [f.key for f in futures]) == {}


def test_close_leaves_no_child_process(cluster_name):
    cluster = MinimalCluster(name=cluster_name, backend="local", workers=2)
    assert len(cluster_processes(cluster_name)) >= 3  # scheduler + 2 worker nannies (+ workers)
    cluster.close()
    assert psutil.Process().children(recursive=True) == []
    assert cluster_processes(cluster_name) == []
    assert not (state_root() / cluster_name).exists()


def test_client_killed_with_sigkill_leaves_no_process_after_its_timeouts(cluster_name, tmp_path):
    script = textwrap.dedent(
        f"""
        import json, sys, time
        from minimaldask import MinimalCluster
        c = MinimalCluster(name={cluster_name!r}, backend="local", workers=2,
                           idle_timeout="4s", death_timeout="4s", quiet=True)
        print(json.dumps(sorted(c.requested)), flush=True)
        time.sleep(600)
        """
    )
    client = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    workers = json.loads(client.stdout.readline())
    assert len(workers) == 2
    assert len(cluster_processes(cluster_name)) >= 3
    client.send_signal(signal.SIGKILL)
    client.wait()
    # idle_timeout (4 s, checked every second or so) + death_timeout (4 s) + exit.
    assert wait_until(lambda: cluster_processes(cluster_name) == [], timeout=40), [
        p.info["cmdline"] for p in cluster_processes(cluster_name)
    ]


def test_start_dask_cluster_twice_attaches_and_delete_removes_it(cluster_name):
    first = start_dask_cluster(name=cluster_name, backend="local", workers=1, pip_packages="")
    try:
        address = first.scheduler_address
        infos = [c for c in list_clusters(backend="local") if c.name == cluster_name]
        assert len(infos) == 1 and infos[0].scheduler_address == address
        second = MinimalCluster.from_name(cluster_name, backend="local")
        assert second.scheduler_address == address
        second.close()  # from_name leaves the cluster running
        assert [c.name for c in list_clusters(backend="local")].count(cluster_name) == 1
        again = start_dask_cluster(name=cluster_name, backend="local", workers=2)
        assert again.scheduler_address == address
        again.wait_for_workers(2, timeout=60)
        again.shutdown_on_close = False
        again.close()
    finally:
        first.shutdown_on_close = False
        first.close()
    assert delete_dask_cluster(name=cluster_name, backend="local") is True
    assert cluster_processes(cluster_name) == []
    assert cluster_name not in [c.name for c in list_clusters(backend="local")]
    # Deleting what does not exist is not an error.
    assert delete_dask_cluster(name=cluster_name, backend="local") is False


def test_from_name_of_a_missing_cluster_says_how_to_start_one(cluster_name):
    with pytest.raises(ClusterNotFoundError, match=f"no local cluster named '{cluster_name}'"):
        MinimalCluster.from_name(cluster_name, backend="local")


def test_failed_start_shows_the_log_and_cleans_up(cluster_name):
    with pytest.raises(ClusterStartError) as info:
        MinimalCluster(
            name=cluster_name,
            backend="local",
            workers=1,
            pip_packages="minimaldask-no-such-pkg-7d2",
        )
    assert "exited during start-up" in str(info.value)
    assert "EXTRA_PIP_PACKAGES" in str(info.value)
    assert cluster_processes(cluster_name) == []
    assert not (state_root() / cluster_name).exists()


def test_demo_command_runs_and_checks_the_result():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "minimaldask.cli",
            "demo",
            "--backend",
            "local",
            "--workers",
            "2",
            "--name",
            f"demo-{os.getpid()}",
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"matches in-process\s+│ yes", result.stdout), result.stdout
    assert re.search(r"backend\s+│ local", result.stdout)


def test_the_start_sees_its_worker_when_the_scheduler_tells_not_at_its_next_count(
    cluster_name, monkeypatch
):
    # The wait counts at once (no worker yet), then pauses COUNT_EVERY unless the scheduler
    # tells of a worker (distributed's worker-status stream): with a pause of 10 minutes,
    # only that news ends the start within the test's timeout.
    monkeypatch.setattr("minimaldask.local.backend.COUNT_EVERY", 600)
    with MinimalCluster(name=cluster_name, backend="local", workers=2) as cluster:
        with Client(cluster) as client:
            assert len(workers_of(client)) == 2
