"""A scheduler pod that is replaced (killed, evicted, out of memory) does not strand its user:
the handle's port-forward follows the new pod, and the handle says what happened.
"""

from __future__ import annotations

import socket
import time

import pytest
from distributed import Client

from minimaldask import MinimalCluster
from testutil import wait_until

pytestmark = [pytest.mark.kube, pytest.mark.slow]

#: The promise: a replaced scheduler is reachable through the same handle within this.
WITHIN = 120


def test_the_port_forward_follows_a_replaced_scheduler_pod(namespace, kube, cluster_name):
    def inc(x):  # local: sent by value, the workers cannot import this module
        return x + 1

    with MinimalCluster(name=cluster_name, workers=1) as cluster:
        address = cluster.scheduler_address
        client = Client(cluster)
        assert client.submit(inc, 10).result(timeout=60) == 11
        (old,) = kube.pods(cluster_name, "scheduler")
        kube.kubectl("delete", "pod", old, "-n", namespace, "--wait=false")
        deleted = time.monotonic()
        # Until the old pod is gone, its scheduler may still answer: wait for that first.
        assert wait_until(
            lambda: old not in kube.pods(cluster_name, "scheduler", live=False), WITHIN
        ), "the old scheduler pod was not deleted"
        gone = time.monotonic() - deleted

        tries = []

        def inc_works() -> bool:
            nonlocal client
            try:
                if client.status in ("closed", "closing"):  # it gave up reconnecting: a new one
                    tries.append("new client")
                    client = Client(cluster, timeout=10)
                return client.submit(inc, 1, pure=False).result(timeout=10) == 2
            except Exception as e:  # the old scheduler is gone: lost futures, closed comms
                tries.append(type(e).__name__)
                return False

        remaining = WITHIN - (time.monotonic() - deleted)
        assert wait_until(inc_works, remaining, interval=1), f"no answer within {WITHIN}s: {tries}"
        elapsed = time.monotonic() - deleted
        print(
            f"the old pod was gone after {gone:.0f}s; inc(1) == 2 again {elapsed:.0f}s after "
            f"it was deleted: {tries}"
        )
        (new,) = kube.pods(cluster_name, "scheduler")
        assert new != old
        assert client.run_on_scheduler(socket.gethostname) == new  # the new scheduler answered
        assert cluster.scheduler_address == address  # the same handle, the same address
        # A new client works without anything done by the user.
        with Client(cluster) as other:
            assert other.submit(inc, 2).result(timeout=60) == 3
        client.close()
        # The handle said so (its log; a warning too, even when quiet).
        assert wait_until(
            lambda: (
                "a new one (its pod was replaced)"
                in "\n".join(line for _, line in cluster._cluster_manager_logs)
            ),
            30,
        )
        # It watches the new scheduler's workers.
        assert wait_until(lambda: len(cluster.scheduler_info["workers"]) == 1, 60)
    assert kube.objects_of(cluster_name) == []
