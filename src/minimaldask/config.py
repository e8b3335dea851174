"""The one place where minimaldask reads its settings.

Defaults ship in ``minimaldask.yaml`` and are merged into dask's config at
import time, so users override them the usual dask ways: a YAML file, an
environment variable such as ``DASK_MINIMALDASK__WORKERS=4``, or
``dask.config.set``.
"""

from __future__ import annotations

import os
from typing import Any

import dask.config
import yaml

_DEFAULTS_FILE = os.path.join(os.path.dirname(__file__), "minimaldask.yaml")

with open(_DEFAULTS_FILE) as _f:
    _defaults = yaml.safe_load(_f)

# Values already set (DASK_MINIMALDASK__* read when dask was imported, or
# dask.config.set by the user) keep priority over these defaults.
dask.config.update_defaults(_defaults)


def get(key: str, override: Any = None) -> Any:
    """Return ``minimaldask.<key>`` from dask config, or ``override`` when given.

    ``None`` as override means "not given": the configured value is returned.
    """
    return dask.config.get(f"minimaldask.{key}", override_with=override)


def shipped_defaults() -> dict[str, Any]:
    """The defaults as shipped in minimaldask.yaml, whatever the user's config says."""
    defaults: dict[str, Any] = _defaults["minimaldask"]
    return defaults
