"""minimaldask: a Dask cluster on Kubernetes for exactly as long as you need it.

One call starts a cluster, one ends it, and it ends itself when nobody uses it.
"""

from minimaldask import config as _config  # noqa: F401  (loads the defaults first)
from minimaldask._version import __version__
from minimaldask.api import (
    delete_dask_cluster,
    list_clusters,
    start_dask_cluster,
    update_or_deploy,
)
from minimaldask.backends import ClusterInfo
from minimaldask.cluster import MinimalCluster
from minimaldask.spec import ClusterSpec

__all__ = [
    "ClusterInfo",
    "ClusterSpec",
    "MinimalCluster",
    "__version__",
    "delete_dask_cluster",
    "list_clusters",
    "start_dask_cluster",
    "update_or_deploy",
]
