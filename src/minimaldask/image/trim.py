"""What the recorded imports decide: modules removed, and modules shipped as bytecode only.

``recorded-imports.txt`` (beside this module; made by
tools/image/record_imports.py) names every module that schedulers, workers,
the janitor and the entrypoint imported across the integration tests and a
scenario that opens every dashboard page. From it:

- a trim candidate (:data:`~minimaldask.image.recipe.TRIM_MODULES`: tooling
  of the standard library, test-only extension modules) is removed when it
  was never imported;
- a module that was never imported keeps only its bytecode (the ``.pyc`` in
  place of the ``.py``): it still imports, and the modules that do run keep
  their sources for tracebacks; so do all modules of the large libraries of
  :data:`~minimaldask.image.recipe.SOURCELESS_PACKAGES`.
"""

from __future__ import annotations

import glob
import os
import shutil
from functools import cache

from minimaldask.image.prune import SITE

__all__ = ["module_name", "recorded_modules", "remove_unused", "sourceless"]

RECORD = os.path.join(os.path.dirname(__file__), "recorded-imports.txt")


@cache
def recorded_modules(path: str = RECORD) -> frozenset[str]:
    """The recorded module names (comments skipped)."""
    with open(path) as f:
        return frozenset(ln.strip() for ln in f if ln.strip() and not ln.startswith("#"))


def _trees(root: str) -> list[str]:
    """The directories of importable modules in a layer: the standard library and SITE."""
    stdlib = [p for p in glob.glob(os.path.join(root, "usr/lib/python3.*")) if os.path.isdir(p)]
    return [*stdlib, os.path.join(root, SITE)]


def module_name(rel: str) -> str | None:
    """The module a path below a module tree holds: ``a/b/__init__.py`` -> ``a.b``."""
    parts = rel.split("/")
    if parts[0] in ("lib-dynload", "site-packages"):
        parts = parts[1:]
    if not parts:
        return None
    name = parts[-1]
    if name.endswith(".py"):
        stem = name[:-3]
    elif name.endswith(".so"):
        stem = name.split(".", 1)[0]
    else:
        return None
    dotted = [*parts[:-1], stem] if stem != "__init__" else parts[:-1]
    if not dotted or not all(p.isidentifier() for p in dotted):
        return None
    return ".".join(dotted)


def remove_unused(root: str, candidates: tuple[str, ...], recorded: frozenset[str]) -> list[str]:
    """Remove the candidate modules (and packages) never imported; return their names."""
    removed = []
    for name in candidates:
        if name in recorded:
            continue
        rel = name.replace(".", "/")
        for tree in _trees(root):
            base = [os.path.join(tree, rel), os.path.join(tree, "lib-dynload", rel)]
            paths = [p for p in base if os.path.isdir(p)]
            for prefix in base:
                paths += glob.glob(prefix + ".py") + glob.glob(prefix + ".*.so")
            for path in paths:
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                else:
                    os.unlink(path)
                if name not in removed:
                    removed.append(name)
    return removed


def sourceless(
    root: str, rel: str, recorded: frozenset[str], packages: tuple[str, ...] = ()
) -> bool:
    """Whether the ``.py`` at ``rel`` (relative to a layer) is to ship as bytecode only.

    Yes when its module was never imported, or belongs to one of ``packages``.
    """
    for tree in _trees(root):
        tree_rel = os.path.relpath(tree, root)
        if rel.startswith(tree_rel + "/"):
            name = module_name(rel[len(tree_rel) + 1 :])
            if name is None:
                return False
            return name not in recorded or name.split(".")[0] in packages
    return False
