"""The wheels of a build with their sha256 digests: written into the image, read back by ``--lock``.

A lock is a pip requirements file (``name==version --hash=sha256:...``, one
line per distribution, the digests of every platform's wheel on it) with a
header of comments that the builder reads back: the versions it was made
for, the platforms, the distributions of the ``extras`` layer, and which
distributions came from Debian on which platform. The same lock gives the
same text, so two builds from one lock file give the same image digests.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from minimaldask.exceptions import MinimalDaskError

__all__ = ["IMAGE_PATH", "Lock", "LockError", "LockedWheel"]

#: Where the lock is in the image.
IMAGE_PATH = "/etc/minimaldask-image.lock"
#: Annotation and label with the sha256 of the lock.
ANNOTATION = "org.minimaldask.lock.sha256"
HEADER = "# minimaldask image lock: pip install --require-hashes -r FILE; minimaldask image build --lock FILE"

_REQ = re.compile(r"^([a-z0-9][a-z0-9.\-]*)==(\S+)((?:\s+--hash=sha256:[0-9a-f]{64})+)\s*$")


class LockError(MinimalDaskError):
    """A lock file cannot be read or does not fit the build; the message says which line."""


@dataclass(frozen=True)
class LockedWheel:
    """One distribution: its version and the digest of its wheel on each platform."""

    name: str
    version: str
    #: platform -> sha256 (hex) of the wheel for that platform.
    digests: Mapping[str, str]


@dataclass
class Lock:
    """The resolution of one build, every platform together."""

    dask: str
    python: str
    flavor: str
    platforms: list[str]
    wheels: dict[str, LockedWheel] = field(default_factory=dict)
    #: Distributions of the extras layer (``--pip``).
    extras: list[str] = field(default_factory=list)
    #: platform -> {distribution: Debian package} for those taken from Debian.
    from_debian: dict[str, dict[str, str]] = field(default_factory=dict)

    def add(self, platform: str, name: str, version: str, sha256: str) -> None:
        """Record the wheel of ``name`` for ``platform``; a second version is an error."""
        known = self.wheels.get(name)
        if known is not None and known.version != version:
            raise LockError(
                f"{name} resolves to {known.version} on one platform and {version} on"
                f" {platform}: build the platforms separately"
            )
        digests = dict(known.digests) if known else {}
        digests[platform] = sha256
        self.wheels[name] = LockedWheel(name, version, digests)

    def text(self) -> str:
        """The lock file's text; the same lock gives the same bytes."""
        lines = [
            HEADER,
            f"# dask {self.dask}, Python {self.python}, flavor {self.flavor}",
            f"# platforms: {' '.join(self.platforms)}",
            f"# extras: {' '.join(sorted(self.extras))}",
        ]
        for platform in self.platforms:
            debs = self.from_debian.get(platform, {})
            pairs = " ".join(f"{k}={v}" for k, v in sorted(debs.items()))
            lines.append(f"# from Debian on {platform}: {pairs}")
        for name in sorted(self.wheels):
            wheel = self.wheels[name]
            hashes = " ".join(f"--hash=sha256:{d}" for d in sorted(set(wheel.digests.values())))
            lines.append(f"{name}=={wheel.version} {hashes}")
        return "\n".join(line.rstrip() for line in lines) + "\n"

    @property
    def sha256(self) -> str:
        """sha256 of :meth:`text`."""
        return hashlib.sha256(self.text().encode()).hexdigest()

    def hashes(self, name: str) -> list[str]:
        """Every digest the lock allows for a distribution (pip checks the wheel against them)."""
        return sorted(set(self.wheels[name].digests.values()))

    def for_platform(self, platform: str) -> tuple[list[LockedWheel], dict[str, str]]:
        """The wheels to download for ``platform`` and the distributions from Debian there."""
        if platform not in self.platforms:
            raise LockError(
                f"the lock has no {platform}: it was made for {', '.join(self.platforms)}"
            )
        debian = self.from_debian.get(platform, {})
        return [w for n, w in sorted(self.wheels.items()) if n not in debian], debian

    def check(self, dask: str, python: str, flavor: str) -> None:
        """Raise unless the lock was made for these versions and flavor."""
        want = (dask, python, flavor)
        have = (self.dask, self.python, self.flavor)
        if want != have:
            raise LockError(
                f"the lock was made for dask {self.dask}, Python {self.python}, flavor"
                f" {self.flavor}; this build asks for dask {dask}, Python {python}, flavor"
                f" {flavor}: pass --dask/--python/--flavor to match it"
            )

    @classmethod
    def parse(cls, text: str, source: str = "lock") -> Lock:
        """Read a lock written by :meth:`text` (as in an image's :data:`IMAGE_PATH`)."""
        lines = text.splitlines()
        if not lines or lines[0] != HEADER:
            raise LockError(f"{source}: not a minimaldask image lock (first line: {HEADER!r})")
        meta = re.fullmatch(
            r"# dask (\S+), Python (\S+), flavor (\S+)", lines[1] if len(lines) > 1 else ""
        )
        if not meta:
            raise LockError(f"{source} line 2: expected '# dask X, Python X.Y, flavor F'")
        lock = cls(meta.group(1), meta.group(2), meta.group(3), [])
        for number, line in enumerate(lines[2:], start=3):
            if line.startswith("# platforms:"):
                lock.platforms = line.partition(":")[2].split()
            elif line.startswith("# extras:"):
                lock.extras = line.partition(":")[2].split()
            elif line.startswith("# from Debian on "):
                platform, _, pairs = line.removeprefix("# from Debian on ").partition(": ")
                platform = platform.rstrip(":")
                lock.from_debian[platform] = dict(
                    pair.split("=", 1) for pair in pairs.split() if "=" in pair
                )
            elif line.strip():
                match = _REQ.match(line)
                if not match:
                    raise LockError(
                        f"{source} line {number}: expected 'name==version --hash=sha256:HEX ...',"
                        f" got {line!r}"
                    )
                name, version, hashes = match.groups()
                digests = re.findall(r"sha256:([0-9a-f]{64})", hashes)
                # Which digest is whose platform is pip's to find: every one is allowed.
                lock.wheels[name] = LockedWheel(
                    name, version, {f"#{i}": d for i, d in enumerate(digests)}
                )
        if not lock.platforms or not lock.wheels:
            raise LockError(f"{source}: no platforms or no wheels in the lock")
        return lock
