"""Remove what a scheduler or worker never reads from an image tree."""

from __future__ import annotations

import fnmatch
import glob
import os
import shutil

from minimaldask.image.recipe import PRUNE_DIRS, PRUNE_FLAVOR_GLOBS, PRUNE_GLOBS, PRUNE_SITE_FILES

__all__ = ["prune"]

SITE = "usr/lib/python3/dist-packages"


def _remove(path: str) -> int:
    if os.path.isdir(path) and not os.path.islink(path):
        size = sum(os.lstat(os.path.join(d, f)).st_size for d, _, fs in os.walk(path) for f in fs)
        shutil.rmtree(path)
        return size
    size = os.lstat(path).st_size
    os.unlink(path)
    return size


def _bokeh_sources(root: str) -> list[str]:
    """Unminified bokeh JavaScript whose minified twin exists: the server sends the latter."""
    out = []
    for path in glob.glob(os.path.join(root, SITE, "bokeh/server/static/js/*.js")):
        if not path.endswith(".min.js") and os.path.exists(path[: -len(".js")] + ".min.js"):
            out.append(path)
    return out


def link_duplicate_libraries(root: str) -> int:
    """Replace copies of a shared library under other names by symbolic links.

    Wheels cannot hold links, so ``libx.so``, ``libx.so.26`` and
    ``libx.so.26.1`` arrive as three copies; one file and two links remain.
    Returns bytes saved.
    """
    saved = 0
    for dirpath, _, filenames in os.walk(os.path.join(root, SITE)):
        groups: dict[tuple[str, int], list[str]] = {}
        for name in filenames:
            path = os.path.join(dirpath, name)
            if name.startswith("lib") and ".so" in name and not os.path.islink(path):
                stem = name.split(".so", 1)[0]
                groups.setdefault((stem, os.path.getsize(path)), []).append(name)
        for (_, size), names in sorted(groups.items()):
            if len(names) < 2:
                continue
            keep = max(names, key=len)
            with open(os.path.join(dirpath, keep), "rb") as f:
                content = f.read()
            for name in sorted(names):
                path = os.path.join(dirpath, name)
                if name == keep:
                    continue
                with open(path, "rb") as f:
                    if f.read() != content:
                        continue
                os.unlink(path)
                os.symlink(keep, path)
                saved += size
    return saved


def prune(root: str, flavor: str) -> int:
    """Prune the tree at ``root`` (one layer's staging directory); return bytes removed."""
    removed = 0
    for pattern in PRUNE_GLOBS + PRUNE_FLAVOR_GLOBS[flavor]:
        for path in sorted(glob.glob(os.path.join(root, pattern))):
            if os.path.lexists(path):
                removed += _remove(path)
    for path in _bokeh_sources(root):
        removed += _remove(path)
    removed += link_duplicate_libraries(root)
    trees = [os.path.join(root, SITE), *glob.glob(os.path.join(root, "usr/lib/python3.*"))]
    for tree in trees:
        for dirpath, dirnames, filenames in os.walk(tree):
            for name in list(dirnames):
                if name in PRUNE_DIRS or name == "__pycache__":
                    removed += _remove(os.path.join(dirpath, name))
                    dirnames.remove(name)
            for name in filenames:
                if any(fnmatch.fnmatch(name, p) for p in PRUNE_SITE_FILES):
                    removed += _remove(os.path.join(dirpath, name))
    return removed
