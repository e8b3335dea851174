"""minimaldask: a Dask cluster on Kubernetes for exactly as long as you need it.

One call starts a cluster, one ends it, and it ends itself when nobody uses it.

The public names are imported when first used: the code that runs in the pods
(:mod:`minimaldask.pod`) lives in this package too, and a pod must not pay for
loading the client.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from minimaldask._version import __version__

if TYPE_CHECKING:
    from minimaldask.api import (
        delete_dask_cluster,
        list_clusters,
        start_dask_cluster,
        update_or_deploy,
    )
    from minimaldask.backend import ClusterInfo
    from minimaldask.cluster import MinimalCluster
    from minimaldask.spec import ClusterSpec

#: Where each public name is defined.
_PUBLIC = {
    "ClusterInfo": "minimaldask.backend",
    "ClusterSpec": "minimaldask.spec",
    "MinimalCluster": "minimaldask.cluster",
    "delete_dask_cluster": "minimaldask.api",
    "list_clusters": "minimaldask.api",
    "start_dask_cluster": "minimaldask.api",
    "update_or_deploy": "minimaldask.api",
}

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


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        try:
            module = importlib.import_module(_PUBLIC[name])
        except ModuleNotFoundError as e:
            if e.name != _PUBLIC[name]:
                raise
            raise ImportError(
                f"minimaldask.{name} is not in this installation: it is the pod side of"
                " minimaldask (an image's copy holds only what its scheduler and workers run)."
                " Start and end clusters from a client, where `pip install minimaldask` ran"
            ) from e
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'minimaldask' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
