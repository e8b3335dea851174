"""The article's functions, awaitable: for async code (``await start_dask_cluster(...)``).

:mod:`minimaldask` has the same functions, synchronous, made from these.

>>> from minimaldask.asyncio import start_dask_cluster  # doctest: +SKIP
>>> cluster = await start_dask_cluster(namespace="default", workers=3)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from minimaldask import config
from minimaldask.backend import BACKENDS, ClusterInfo, backend_class
from minimaldask.cluster import MinimalCluster
from minimaldask.spec import ClusterSpec

__all__ = ["delete_dask_cluster", "list_clusters", "start_dask_cluster", "update_or_deploy"]


async def start_dask_cluster(
    namespace: str = "default",
    pip_packages: str | Iterable[str] = "",
    apk_packages: str | Iterable[str] = "",
    **options: Any,
) -> MinimalCluster:
    """Start a cluster (or attach to the running one of that name) and return its handle.

    Options are those of :class:`~minimaldask.MinimalCluster` (docs/options.md);
    the packages take the article's space-separated strings as well as lists.
    """
    cluster = MinimalCluster(
        namespace=namespace,
        pip_packages=pip_packages,
        apk_packages=apk_packages,
        asynchronous=True,
        **options,
    )
    return await cluster


async def delete_dask_cluster(
    namespace: str = "default",
    name: str | None = None,
    backend: str | None = None,
    timeout: float = 120,
) -> bool:
    """Delete a cluster and wait until it is gone.

    Returns False when there was no such cluster (which is not an error).
    """
    spec = ClusterSpec.from_options(name=name, namespace=namespace, backend=backend)
    cls = backend_class(spec.backend)
    return await cls.delete(spec.name, spec.namespace, timeout)


async def list_clusters(
    namespace: str | None = None, backend: str | None = None
) -> list[ClusterInfo]:
    """The running clusters of a backend (default: the configured one) in ``namespace``."""
    backend = config.get("backend", backend)
    if backend not in BACKENDS:
        raise ValueError(f"invalid backend={backend!r}: expected one of {', '.join(BACKENDS)}")
    namespace = config.get("namespace", namespace)
    return await backend_class(backend).list_clusters(namespace)


async def update_or_deploy(obj: Mapping[str, Any]) -> dict[str, Any]:
    """Create a Kubernetes object, or update it in place: the article's function, done right.

    It is a server-side apply (field manager ``minimaldask``): running it twice
    changes nothing, changing a field updates the object. Returns the object
    as the API server stored it.
    """
    from minimaldask.kubernetes import api

    return await api.update_or_deploy(obj)
