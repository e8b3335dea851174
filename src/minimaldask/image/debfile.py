"""Unpack a Debian package (``ar`` archive holding ``data.tar.*``) without dpkg.

Maintainer scripts are never run. Paths of the pre-merged-/usr layout
(``/bin``, ``/lib``, ...) are moved under ``/usr`` so that packages of every
Debian release land in one merged tree, and absolute symbolic links are made
relative so that the tree works wherever it is mounted (an image root or a
writable prefix at run time).
"""

from __future__ import annotations

import io
import lzma
import os
import posixpath
import shutil
import tarfile
from collections.abc import Iterator
from typing import IO

from minimaldask.exceptions import MinimalDaskError

__all__ = ["DebError", "apply_alternatives", "ar_members", "merged_usr_path", "unpack_deb"]

# Top-level directories that are symbolic links into /usr on a merged-/usr system.
MERGED_DIRS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")


class DebError(MinimalDaskError):
    """A .deb file could not be read."""


def ar_members(data: bytes) -> Iterator[tuple[str, bytes]]:
    """Yield ``(name, content)`` for each member of an ``ar`` archive."""
    if not data.startswith(b"!<arch>\n"):
        raise DebError("not an ar archive (a .deb starts with '!<arch>')")
    pos = 8
    while pos + 60 <= len(data):
        header = data[pos : pos + 60]
        if header[58:60] != b"`\n":
            raise DebError(f"corrupt ar header at byte {pos}")
        name = header[0:16].decode("ascii").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        pos += 60
        yield name, data[pos : pos + size]
        pos += size + (size % 2)


def _decompress(name: str, payload: bytes) -> IO[bytes]:
    if name.endswith(".xz"):
        return io.BytesIO(lzma.decompress(payload))
    if name.endswith(".gz"):
        import gzip

        return io.BytesIO(gzip.decompress(payload))
    if name.endswith(".zst"):
        try:
            import zstandard
        except ImportError as e:
            raise DebError(f"{name} is zstd-compressed: install the 'zstandard' package") from e
        return io.BytesIO(zstandard.ZstdDecompressor().decompressobj().decompress(payload))
    if name.endswith(".tar"):
        return io.BytesIO(payload)
    raise DebError(f"unsupported member {name!r} in .deb")


def merged_usr_path(path: str) -> str:
    """Return ``path`` (relative, no leading ``./``) as it is on a merged-/usr system."""
    while path.startswith("./"):
        path = path[2:]
    path = posixpath.normpath(path.lstrip("/") or ".")
    head, _, rest = path.partition("/")
    if head in MERGED_DIRS:
        return posixpath.join("usr", head, rest) if rest else posixpath.join("usr", head)
    return path


def _safe(dest: str, rel: str) -> str:
    if rel in ("", ".") or rel.startswith("..") or posixpath.isabs(rel):
        raise DebError(f"unsafe path {rel!r} in .deb")
    return os.path.join(dest, rel)


def unpack_deb(deb: bytes, dest: str) -> list[str]:
    """Unpack the files of a .deb into ``dest`` and return their relative paths.

    Directories, regular files, symbolic and hard links are created;
    device files and maintainer scripts are ignored. Setuid and setgid bits
    are dropped: the image runs as a non-root user.
    """
    data_member = next(
        ((n, p) for n, p in ar_members(deb) if n.startswith("data.tar")),
        None,
    )
    if data_member is None:
        raise DebError("no data.tar member in .deb")
    written: list[str] = []
    with tarfile.open(fileobj=_decompress(*data_member), mode="r:") as tar:
        for member in tar:
            rel = merged_usr_path(member.name)
            if rel == ".":
                continue
            target = _safe(dest, rel)
            if member.isdir():
                os.makedirs(target, exist_ok=True)
                os.chmod(target, 0o755)
                continue
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if os.path.lexists(target) and not os.path.isdir(target):
                os.unlink(target)
            if member.issym():
                link = member.linkname
                if posixpath.isabs(link):
                    link = posixpath.relpath(
                        "/" + merged_usr_path(link), "/" + posixpath.dirname(rel)
                    )
                os.symlink(link, target)
            elif member.islnk():
                source = _safe(dest, merged_usr_path(member.linkname))
                shutil.copy2(source, target, follow_symlinks=False)
            elif member.isfile():
                fileobj = tar.extractfile(member)
                assert fileobj is not None  # a regular file always has content
                with open(target, "wb") as out:
                    shutil.copyfileobj(fileobj, out)
                os.chmod(target, member.mode & 0o777)
            else:
                continue
            written.append(rel)
    return written


# Library directories whose libraries Debian's maintainer scripts register
# with update-alternatives (BLAS and LAPACK implementations).
ALTERNATIVE_DIRS = ("blas", "lapack", "openblas-pthread", "atlas")


def apply_alternatives(root: str, triplet: str) -> list[str]:
    """Make the links update-alternatives would make for BLAS and LAPACK libraries.

    ``libblas3`` installs ``/usr/lib/<triplet>/blas/libblas.so.3`` and its
    maintainer script links ``/usr/lib/<triplet>/libblas.so.3`` to it; as
    maintainer scripts never run here, the link is made here (when no other
    package provides that name). Returns the links made.
    """
    libdir = os.path.join(root, "usr/lib", triplet)
    made = []
    for sub in ALTERNATIVE_DIRS:
        directory = os.path.join(libdir, sub)
        if not os.path.isdir(directory):
            continue
        for name in sorted(os.listdir(directory)):
            link = os.path.join(libdir, name)
            if ".so." in name and not os.path.lexists(link):
                os.symlink(f"{sub}/{name}", link)
                made.append(os.path.relpath(link, root))
    return made
