"""Where a cluster runs: ``kubernetes`` (pods) or ``local`` (processes here)."""

from __future__ import annotations

import importlib
from typing import cast

from minimaldask.backends.base import Backend, ClusterInfo


def backend_class(name: str) -> type[Backend]:
    """The backend class for ``backend=name`` (already validated by ClusterSpec)."""
    if name == "local":
        from minimaldask.backends.local import LocalBackend

        return LocalBackend
    if name == "kubernetes":
        # Imported on demand: kr8s and its dependencies are not needed locally.
        module = importlib.import_module("minimaldask.backends.kubernetes")
        return cast("type[Backend]", module.KubernetesBackend)
    raise ValueError(f"invalid backend={name!r}: expected 'kubernetes' or 'local'")


__all__ = ["Backend", "ClusterInfo", "backend_class"]
