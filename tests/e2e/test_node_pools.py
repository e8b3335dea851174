"""Node pools that scale up: a pod with no node for it waits for one until the start's deadline.

The local node is tainted NoSchedule (as admin), as a node pool without a free node looks to
the scheduler; the taint is removed after a while (a node came), or never. Other tests share
the node: the taint is always removed, and these tests run alone (marked exclusive).
"""

from __future__ import annotations

import threading
import time

import budgets
import pytest
from distributed import Client

from minimaldask import MinimalCluster
from minimaldask.exceptions import ClusterStartError

pytestmark = [pytest.mark.kube, pytest.mark.slow, pytest.mark.exclusive]


@pytest.fixture
def taint(kube, localkube_cluster, cluster_name):
    """Taint the node NoSchedule with a key of this test's own; returns the untaint function."""
    node = localkube_cluster.node_name
    key = f"minimaldask-e2e/{cluster_name}"
    lock = threading.Lock()

    def untaint():
        with lock:
            kube.kubectl("taint", "nodes", node, f"{key}:NoSchedule-", admin=True, check=False)

    kube.kubectl("taint", "nodes", node, f"{key}=now:NoSchedule", admin=True)
    try:
        yield key, untaint
    finally:
        untaint()
        taints = kube.kubectl("get", "node", node, "-o", "jsonpath={.spec.taints}", admin=True)
        assert key not in taints.stdout


def test_a_start_waits_for_a_node(namespace, kube, cluster_name, taint, capsys):
    key, untaint = taint
    remover = threading.Timer(20, untaint)
    remover.start()
    t = time.monotonic()
    try:
        with MinimalCluster(name=cluster_name, workers=1, startup_timeout=120) as cluster:
            print(f"started in {time.monotonic() - t:.0f}s; the node was tainted for 20 s")
            with Client(cluster) as client:
                assert client.submit(sum, [1, 2]).result(timeout=60) == 3
    finally:
        remover.cancel()
    out = capsys.readouterr().out
    print(out)
    assert "waiting for a node: 0/1 scheduler pods scheduled: " in out
    assert f"untolerated taint {{{key}: now}}" in out
    assert time.monotonic() - t > 20
    assert kube.objects_of(cluster_name) == []


def test_a_start_that_gets_no_node_fails_at_its_deadline(namespace, kube, cluster_name, taint):
    key, _ = taint
    t = time.monotonic()
    with pytest.raises(ClusterStartError) as info:
        MinimalCluster(name=cluster_name, workers=1, startup_timeout=30)
    elapsed = time.monotonic() - t
    print(f"failed after {elapsed:.0f}s (startup_timeout 30 s): {info.value}")
    message = str(info.value)
    assert "cannot be scheduled (Unschedulable) within startup_timeout=30s" in message
    assert key in message  # the scheduler's reason names the taint
    assert 30 <= elapsed < 30 + budgets.REQUESTS + budgets.delete()
    assert kube.objects_of(cluster_name) == []
