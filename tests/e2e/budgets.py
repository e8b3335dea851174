"""Time budgets of the e2e tests, derived from the product's own settings.

A budget is what the product promises plus a margin for a busy 2-core machine,
never a bare number: when a setting of the product changes, its budget follows.
"""

from __future__ import annotations

from minimaldask import contract
from minimaldask.kubernetes import manifests
from minimaldask.spec import ClusterSpec

#: One pod of a cluster on the local node: scheduled, its image pulled from the local
#: registry (pull policy Always), dask imported and listening. About 5 s on an idle
#: machine (bench/startup.py); four times that while the rest of the suite runs.
POD_START = 4 * 5.0
#: The kubelet's first crash-loop back-off (a Kubernetes constant: 10 s, doubling).
KUBELET_BACKOFF = 10.0
#: A handful of API requests and a registry read: pre-flight checks, a refused apply.
REQUESTS = 15.0
#: The kubelet measures emptyDir usage every volumeStatsAggPeriod (60 s by default), and
#: its eviction manager looks every 10 s.
KUBELET_EVICTION = 2 * 60.0 + 10.0


def delete(spec: ClusterSpec | None = None) -> float:
    """Deleting a cluster: each pod may take its whole grace period to exit."""
    spec = spec or ClusterSpec.from_options(backend="kubernetes")
    return float(max(manifests.SCHEDULER_GRACE_PERIOD, manifests.worker_grace_period(spec)))


def fail_fast(crashes: int = 0) -> float:
    """A start that fails on a pod's state: the scheduler and a worker start, the worker
    crashes ``crashes`` times (the kubelet backs off between tries), the cluster is removed.
    """
    backoff = sum(KUBELET_BACKOFF * 2**i for i in range(max(crashes - 1, 0)))
    return REQUESTS + 2 * POD_START + backoff + delete()


def self_deletion(timeout: float) -> float:
    """A janitor that ends its cluster ``timeout`` seconds after the last sign of use:
    a dead handle counts for HANDLE_TTL more, the janitor looks every second, tells the
    clients (FAREWELL), then the delete.
    """
    from minimaldask.pod.janitor import FAREWELL

    return timeout + contract.HANDLE_TTL + 1 + FAREWELL + REQUESTS + delete()
