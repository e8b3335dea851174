"""Check, without running anything, that every shared library an ELF file needs is present.

A foreign-architecture image cannot be run by the builder, but its ELF files
name what they need (``DT_NEEDED``) and where they look (``DT_RUNPATH``,
``DT_RPATH``, with ``$ORIGIN``): a library missing from the image, left out
by the dependency resolution or by pruning, is found here at build time.
"""

from __future__ import annotations

import os
import posixpath
import struct
from collections.abc import Iterable

__all__ = ["dynamic_entries", "missing_libraries", "unresolved"]

DT_NEEDED, DT_RPATH, DT_RUNPATH = 1, 15, 29
SHT_DYNAMIC = 6


def dynamic_entries(data: bytes) -> tuple[list[str], list[str]] | None:
    """``(needed, search paths)`` of an ELF file's dynamic section; None if not ELF."""
    if data[:4] != b"\x7fELF" or len(data) < 64:
        return None
    is64 = data[4] == 2
    end = "<" if data[5] == 1 else ">"
    if is64:
        (shoff,) = struct.unpack_from(end + "Q", data, 0x28)
        shentsize, shnum = struct.unpack_from(end + "HH", data, 0x3A)
        section_fmt, dyn_fmt = end + "IIQQQQIIQQ", end + "qQ"
    else:
        (shoff,) = struct.unpack_from(end + "I", data, 0x20)
        shentsize, shnum = struct.unpack_from(end + "HH", data, 0x2E)
        section_fmt, dyn_fmt = end + "IIIIIIIIII", end + "iI"
    sections = []
    for i in range(shnum):
        start = shoff + i * shentsize
        if start + struct.calcsize(section_fmt) > len(data):
            return [], []
        sections.append(struct.unpack_from(section_fmt, data, start))
    needed: list[str] = []
    paths: list[str] = []
    for sec in sections:
        if sec[1] != SHT_DYNAMIC:
            continue
        offset, size, link = sec[4], sec[5], sec[6]
        strtab = sections[link]
        str_off = strtab[4]

        def string(at: int, base: int = str_off) -> str:
            stop = data.index(b"\0", base + at)
            return data[base + at : stop].decode("utf-8", "replace")

        step = struct.calcsize(dyn_fmt)
        for pos in range(offset, offset + size, step):
            tag, val = struct.unpack_from(dyn_fmt, data, pos)
            if tag == 0:
                break
            if tag == DT_NEEDED:
                needed.append(string(val))
            elif tag in (DT_RPATH, DT_RUNPATH):
                paths += string(val).split(":")
    return needed, paths


def missing_libraries(roots: Iterable[str], triplet: str) -> list[str]:
    """Problems ``"<file> needs <library>"`` for the tree formed by ``roots`` overlaid.

    ``roots`` are layer directories, in order; a library may come from any
    of them. The loader's default directories of a merged-/usr Debian system
    are searched, then the file's own run paths.
    """
    return [f"{rel} needs {lib}" for rel, lib in unresolved(roots, triplet)]


def unresolved(roots: Iterable[str], triplet: str) -> list[tuple[str, str]]:
    """``(file, library)`` pairs of :func:`missing_libraries`, sorted by file."""
    roots = list(roots)
    present: set[str] = set()
    elves: list[tuple[str, str]] = []
    for root in roots:
        for dirpath, _, filenames in os.walk(root):
            for name in filenames:
                path = os.path.join(dirpath, name)
                rel = "/" + os.path.relpath(path, root)
                present.add(rel)
                if not os.path.islink(path) and (".so" in name or "/bin/" in rel):
                    elves.append((path, rel))
    default = [f"/usr/lib/{triplet}", "/usr/lib", "/usr/lib64"]
    problems = []
    for path, rel in sorted(elves, key=lambda e: e[1]):
        with open(path, "rb") as f:
            head = f.read(4)
            if head != b"\x7fELF":
                continue
            entries = dynamic_entries(head + f.read())
        if entries is None:
            continue
        needed, run_paths = entries
        origin = posixpath.dirname(rel)
        search = [posixpath.normpath(p.replace("$ORIGIN", origin)) for p in run_paths]
        search += [origin] if "$ORIGIN" in "".join(run_paths) else []
        for lib in needed:
            if not any(posixpath.join(d, lib) in present for d in search + default):
                problems.append((rel, lib))
    return problems
