"""Where a cluster runs: ``kubernetes`` (pods) or ``local`` (processes here)."""

from __future__ import annotations

from minimaldask.backends.base import Backend, ClusterInfo


def backend_class(name: str) -> type[Backend]:
    """The backend class for ``backend=name`` (already validated by ClusterSpec)."""
    if name == "local":
        from minimaldask.backends.local import LocalBackend

        return LocalBackend
    if name == "kubernetes":
        from minimaldask.backends.kubernetes import KubernetesBackend

        return KubernetesBackend
    raise ValueError(f"invalid backend={name!r}: expected 'kubernetes' or 'local'")


__all__ = ["Backend", "ClusterInfo", "backend_class"]
