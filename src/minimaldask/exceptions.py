"""Exceptions raised by minimaldask."""

from __future__ import annotations


class MinimalDaskError(Exception):
    """Base class of every error minimaldask raises on purpose."""


class ClusterStartError(MinimalDaskError):
    """A cluster did not start; the message says why and what was cleaned up."""


class ClusterNotFoundError(MinimalDaskError, LookupError):
    """No cluster of that name exists."""


class ImageMismatchError(MinimalDaskError, ValueError):
    """The image runs other dask, distributed or Python versions than the client."""


class ClusterShutdownError(MinimalDaskError):
    """The cluster shut itself down (idle, no client, or maximum lifetime)."""


class KubernetesError(MinimalDaskError):
    """The Kubernetes API refused or failed a request; the message names the request."""


class ForbiddenError(KubernetesError, PermissionError):
    """The user may not do something minimaldask needs: the message names verb and resource."""


class NamespaceNotFoundError(KubernetesError, LookupError):
    """The namespace does not exist."""
