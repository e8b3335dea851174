"""A relocatable CPython from outside Debian (``--python-from``): found, checked, installed.

For Python versions that no current Debian suite ships. The CPython is an
install prefix (``bin/python3.X``, ``lib/python3.X/...``) or an archive laid
out like the standalone CPython builds (``python/bin/python3.X``, ...). Its
platform is read from the interpreter's ELF header, its version from its
file name; nothing of it is run unless it is for this machine.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tarfile
from dataclasses import dataclass

from minimaldask.exceptions import MinimalDaskError

__all__ = ["StandaloneError", "StandalonePython", "find", "install"]

# ELF e_machine -> OCI platform (32-bit ARM is taken as armv7 hard-float, the only one built).
MACHINES = {62: "linux/amd64", 183: "linux/arm64", 40: "linux/arm/v7"}
ARCHIVES = (".tar.gz", ".tgz", ".tar.xz", ".tar.zst", ".tar")
#: Where the builder puts the Python: its prefix becomes /usr.
PREFIX = "usr"
#: Makes a vanilla CPython see the image's Debian-style site directory.
PTH_NAME = "minimaldask-image.pth"
SITE = "/usr/lib/python3/dist-packages"


class StandaloneError(MinimalDaskError):
    """The CPython given with ``--python-from`` cannot be used; the message says why."""


@dataclass(frozen=True)
class StandalonePython:
    """A CPython prefix ready to copy: where it is, its version and platform."""

    source: str
    root: str
    version: str
    platform: str
    #: sha256 of the archive, or None when a prefix was given.
    sha256: str | None

    @property
    def interpreter(self) -> str:
        """The interpreter's path in the prefix."""
        return os.path.join(self.root, "bin", f"python{self.version}")

    def describe(self) -> str:
        """What this Python is, in words that do not depend on where it lies on this machine."""
        origin = f"archive sha256:{self.sha256}" if self.sha256 else "an install prefix"
        return f"CPython {self.version} for {self.platform} from {origin}"


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _unpack(path: str, digest: str, cache_dir: str) -> str:
    """Unpack an archive once into the cache (keyed by its digest); return the directory."""
    dest = os.path.join(cache_dir, "python-from", digest)
    if os.path.isdir(dest):
        return dest
    tmp = f"{dest}.{os.getpid()}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        if path.endswith(".tar.zst"):
            try:
                import zstandard
            except ImportError as e:
                raise StandaloneError(
                    f"{path} is zstd-compressed: pip install 'minimaldask[image]'"
                ) from e
            with open(path, "rb") as raw:
                stream = zstandard.ZstdDecompressor().stream_reader(raw)
                with tarfile.open(fileobj=stream, mode="r|") as tar:
                    _extract(tar, tmp, path)
        else:
            with tarfile.open(path) as tar:
                _extract(tar, tmp, path)
        os.replace(tmp, dest)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise StandaloneError(f"cannot unpack {path}: {e}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _extract(tar: tarfile.TarFile, dest: str, path: str) -> None:
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, filter="tar")
        return
    for member in tar:  # Python without extraction filters: refuse paths outside
        name = member.name
        if name.startswith("/") or ".." in name.split("/"):
            raise StandaloneError(f"unsafe path {name!r} in {path}")
        tar.extract(member, dest)


def _interpreters(root: str) -> list[str]:
    names = (
        os.listdir(os.path.join(root, "bin")) if os.path.isdir(os.path.join(root, "bin")) else []
    )
    return sorted(n for n in names if re.fullmatch(r"python3\.\d+", n))


def _platform(interpreter: str) -> str:
    with open(interpreter, "rb") as f:
        head = f.read(20)
    if head[:4] != b"\x7fELF":
        raise StandaloneError(f"{interpreter} is not an ELF executable")
    machine = int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")
    if machine not in MACHINES:
        raise StandaloneError(
            f"{interpreter} is built for ELF machine {machine}, not for any of"
            f" {', '.join(MACHINES.values())}"
        )
    return MACHINES[machine]


def find(path: str, cache_dir: str) -> StandalonePython:
    """Inspect ``path`` (a prefix or an archive); unpack an archive into ``cache_dir``."""
    if not os.path.exists(path):
        raise StandaloneError(f"--python-from {path}: no such file or directory")
    digest = None
    if os.path.isfile(path):
        if not path.endswith(ARCHIVES):
            raise StandaloneError(
                f"--python-from {path}: expected an install prefix (a directory with"
                f" bin/python3.X) or an archive ({', '.join(ARCHIVES)})"
            )
        digest = _sha256(path)
        unpacked = _unpack(path, digest, cache_dir)
        root = os.path.join(unpacked, "python")
        if not os.path.isdir(root):
            raise StandaloneError(
                f"--python-from {path}: the archive has no python/ directory"
                " (expected python/bin/python3.X, python/lib/..., as the standalone"
                " CPython builds are laid out)"
            )
    else:
        root = path
    found = _interpreters(root)
    if len(found) != 1:
        what = f"{len(found)} ({', '.join(found)})" if found else "none"
        raise StandaloneError(
            f"--python-from {path}: expected one interpreter bin/python3.X in {root}, found {what}"
        )
    version = found[0].removeprefix("python")
    interpreter = os.path.join(root, "bin", found[0])
    if not os.path.isfile(os.path.join(root, "lib", f"python{version}", "os.py")):
        raise StandaloneError(
            f"--python-from {path}: {root}/lib/python{version}/os.py is missing: not a"
            " complete CPython installation"
        )
    return StandalonePython(
        path, os.path.realpath(root), version, _platform(os.path.realpath(interpreter)), digest
    )


def install(python: StandalonePython, stage: str) -> None:
    """Copy the prefix to ``stage``/usr, without its own site-packages and scripts.

    The image's packages live in /usr/lib/python3/dist-packages, as with
    Debian's Python; a ``.pth`` file adds that directory to this Python's path.
    """
    lib = f"lib/python{python.version}"

    def ignore(directory: str, names: list[str]) -> list[str]:
        rel = os.path.relpath(directory, python.root)
        if rel == os.path.join(lib, "site-packages"):
            return names  # pip and whatever the prefix had installed: not ours
        if rel in ("share", "include") or rel.startswith(("share/", "include/")):
            return names
        if rel == "bin":
            return [n for n in names if n not in (f"python{python.version}",)]
        return [n for n in names if n == "__pycache__"]

    dest = os.path.join(stage, PREFIX)
    shutil.copytree(python.root, dest, symlinks=True, ignore=ignore, dirs_exist_ok=True)
    site = os.path.join(dest, lib, "site-packages")
    os.makedirs(site, exist_ok=True)
    with open(os.path.join(site, PTH_NAME), "w") as f:
        f.write(SITE + "\n")
