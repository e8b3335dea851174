"""minimaldask: a Dask cluster on Kubernetes for exactly as long as you need it."""

from minimaldask import config as _config  # noqa: F401  (loads the defaults)
from minimaldask._version import __version__
from minimaldask.spec import ClusterSpec

__all__ = ["ClusterSpec", "__version__"]
