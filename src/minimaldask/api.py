"""The article's functions: start_dask_cluster, delete_dask_cluster, update_or_deploy, list_clusters.

Synchronous forms of :mod:`minimaldask.asyncio`, which work in a notebook too.
They accept the article's space-separated package strings as well as lists.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from minimaldask import asyncio as aio
from minimaldask.cluster import MinimalCluster
from minimaldask.runner import synchronous

__all__ = ["delete_dask_cluster", "list_clusters", "start_dask_cluster", "update_or_deploy"]


def start_dask_cluster(
    namespace: str = "default",
    pip_packages: str | Iterable[str] = "",
    apk_packages: str | Iterable[str] = "",
    **options: Any,
) -> MinimalCluster:
    """Start a cluster (or attach to the running one of that name) and return its handle.

    >>> cluster = start_dask_cluster(namespace="default", pip_packages="camelcase")  # doctest: +SKIP
    >>> client = distributed.Client(cluster)  # doctest: +SKIP
    """
    return MinimalCluster(
        namespace=namespace, pip_packages=pip_packages, apk_packages=apk_packages, **options
    )


delete_dask_cluster = synchronous(aio.delete_dask_cluster)
list_clusters = synchronous(aio.list_clusters)
update_or_deploy = synchronous(aio.update_or_deploy)
