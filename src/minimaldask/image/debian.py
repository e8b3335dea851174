"""Debian packages from the archive: signed indexes, dependency closure, download.

Used by the image builder and, inside the image, by the entrypoint for
``EXTRA_OS_PACKAGES``; so it needs nothing but the standard library.

Trust: the signature of the ``InRelease`` file is checked with the Debian
archive keyring, in Python (:mod:`minimaldask.image.openpgp`); without a
keyring nothing is fetched. An ``InRelease`` past its ``Valid-Until`` is
refused (a replayed old index). Then the digest chain: ``InRelease`` ->
``Packages`` (SHA256 and size) -> each ``.deb`` (SHA256 and size). The
archive URL comes from an explicit setting or from the machine's apt
sources; it is never built in. With a cache directory, the parsed index is
kept under the ``Packages`` file's digest (from the signed ``InRelease``),
trusted as the builder's bytecode cache is: the cache directory is the
user's own.
"""

from __future__ import annotations

import calendar
import glob
import hashlib
import json
import lzma
import os
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from minimaldask.exceptions import MinimalDaskError
from minimaldask.image.debfile import apply_alternatives, unpack_deb
from minimaldask.image.openpgp import SignatureError, verify_clearsigned

__all__ = [
    "IMAGE_RECORD",
    "KEYRING_ENV",
    "Archive",
    "DebianError",
    "KeyringMissingError",
    "Package",
    "ReleaseExpiredError",
    "apt_archive_url",
    "find_keyring",
    "install_runtime_packages",
    "parse_depends",
    "parse_stanzas",
]

#: Where an image records its Debian suite, architecture, archive and packages.
IMAGE_RECORD = "/etc/minimaldask-image.json"

KEYRINGS = (
    "/usr/share/keyrings/debian-archive-keyring.gpg",
    "/usr/share/keyrings/debian-archive-keyring.pgp",
)
#: Names a keyring file to use instead of the Debian archive keyring's usual places.
KEYRING_ENV = "MINIMALDASK_DEBIAN_KEYRING"

# Packages never unpacked: package-manager machinery and data a Dask process
# does not read. Dependencies on them count as satisfied.
NEVER_INSTALL = frozenset(
    {
        "debconf",
        "debconf-2.0",
        "cdebconf",
        "dpkg",
        "install-info",
        "perl-base",
        "libc-bin",
        "readline-common",
        "libreadline8",
        "libreadline8t64",
        "libncursesw6",
        "libtinfo6",
        "libdb5.3",
        "libdb5.3t64",
        "libgdbm6",
        "libgdbm6t64",
        "libgdbm-compat4",
        "libgdbm-compat4t64",
        "tzdata",
        "tzdata-legacy",
        "media-types",
        "mime-support",
        "mailcap",
        "python3",
        "python3-minimal",
        "libpython3-stdlib",
        "python3.11",
        "python3.13",
        "python3.14",
        "python3-numpy-dev",
        "sensible-utils",
        "libnsl2",
        "libtirpc3",
        "libtirpc3t64",
        "libtirpc-common",
        "openssl",
        "openssl-provider-legacy",
        "ca-certificates",
        "ucf",
        "init-system-helpers",
        "usrmerge",
        "usr-is-merged",
    }
)


class DebianError(MinimalDaskError):
    """The Debian archive could not be read, or a package could not be resolved."""


class KeyringMissingError(DebianError):
    """No Debian archive keyring: the archive's signature cannot be checked."""


class ReleaseExpiredError(DebianError):
    """The archive's ``InRelease`` is past its ``Valid-Until``."""


@dataclass(frozen=True)
class Package:
    """One binary package of a ``Packages`` index."""

    name: str
    version: str
    architecture: str
    filename: str
    sha256: str
    size: int
    depends: str = ""
    pre_depends: str = ""
    provides: str = ""
    source: str = ""


def parse_stanzas(text: str) -> Iterable[dict[str, str]]:
    """Parse deb822 text (``Packages``, ``Release``, ``.sources``) into dicts.

    Continuation lines are joined to their field with a newline; comments are
    skipped.
    """
    fields: dict[str, str] = {}
    key = ""
    for line in text.splitlines():
        if not line.strip():
            if fields:
                yield fields
            fields, key = {}, ""
        elif line.startswith("#"):
            continue
        elif line[0] in " \t":
            if key:
                fields[key] += "\n" + line.strip()
        else:
            key, _, value = line.partition(":")
            key = key.strip()
            fields[key] = value.strip()
    if fields:
        yield fields


_DEP_RE = re.compile(r"^\s*([a-z0-9][a-z0-9+.\-]*)(?::[a-z0-9]+)?\s*(?:\(([^)]*)\))?")


def parse_depends(value: str) -> list[list[str]]:
    """Parse a ``Depends`` field into groups of alternative package names.

    Version constraints and architecture qualifiers are dropped: a build
    resolves against one suite, which holds one version of each package.
    """
    groups = []
    for group in value.split(","):
        names = []
        for alt in group.split("|"):
            match = _DEP_RE.match(alt)
            if match:
                names.append(match.group(1))
        if names:
            groups.append(names)
    return groups


def apt_archive_url(root: str = "/") -> str | None:
    """Return the Debian archive URL configured for apt on this machine, if any.

    Reads ``/etc/apt/sources.list`` (one-line format) and
    ``/etc/apt/sources.list.d/*.sources`` (deb822 format); security and
    update archives are passed over.
    """
    candidates: list[tuple[str, str]] = []
    one_line = [os.path.join(root, "etc/apt/sources.list")]
    one_line += sorted(glob.glob(os.path.join(root, "etc/apt/sources.list.d/*.list")))
    for path in one_line:
        try:
            with open(path) as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        for line in lines:
            words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
            if len(words) >= 3 and words[0] == "deb":
                candidates.append((words[1], words[2]))
    for path in sorted(glob.glob(os.path.join(root, "etc/apt/sources.list.d/*.sources"))):
        try:
            with open(path) as f:
                stanzas = list(parse_stanzas(f.read()))
        except OSError:
            continue
        for stanza in stanzas:
            if "deb" not in stanza.get("Types", "").split():
                continue
            if stanza.get("Enabled", "yes").lower() == "no":
                continue
            for uri in stanza.get("URIs", "").split():
                for suite in stanza.get("Suites", "").split():
                    candidates.append((uri, suite))
    for uri, suite in candidates:
        if "-" not in suite and "security" not in uri:
            return uri.rstrip("/")
    return None


def _fetch(url: str, timeout: float = 60) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            data: bytes = response.read()
            return data
    except urllib.error.HTTPError as e:
        raise DebianError(f"{url}: HTTP {e.code} {e.reason}") from e
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DebianError(f"cannot reach the Debian archive at {url}: {reason}") from e


def _check(data: bytes, sha256: str, size: int, what: str) -> None:
    if len(data) != size or hashlib.sha256(data).hexdigest() != sha256:
        raise DebianError(
            f"{what}: digest mismatch (expected sha256 {sha256}, {size} bytes;"
            f" got {hashlib.sha256(data).hexdigest()}, {len(data)} bytes)"
        )


def find_keyring(environ: Mapping[str, str] | None = None) -> str:
    """The Debian archive keyring to check ``InRelease`` with; raise if there is none.

    ``$MINIMALDASK_DEBIAN_KEYRING`` when set, else the first of
    :data:`KEYRINGS` that exists (a link must lead to a file).
    """
    environ = os.environ if environ is None else environ
    chosen = environ.get(KEYRING_ENV)
    if chosen:
        if not os.path.isfile(chosen):
            raise KeyringMissingError(
                f"{KEYRING_ENV}={chosen} is not a file: name a binary OpenPGP keyring"
                " such as /usr/share/keyrings/debian-archive-keyring.gpg"
            )
        return chosen
    found = next((k for k in KEYRINGS if os.path.isfile(k)), None)
    if found is None:
        raise KeyringMissingError(
            "no Debian archive keyring (looked for "
            f"{' and '.join(KEYRINGS)}), so the archive's signature cannot be checked:"
            " install the debian-archive-keyring package (apt-get install"
            f" debian-archive-keyring), or set {KEYRING_ENV} to a keyring file"
        )
    return found


_MONTHS = {name: i for i, name in enumerate(calendar.month_abbr) if name}


def parse_release_date(value: str) -> float:
    """Seconds since the epoch of a ``Release`` date (``Sat, 06 Dec 2025 20:17:39 UTC``).

    Parsed by hand, not by the locale-dependent ``strptime``: Debian writes
    English names and UTC.
    """
    parts = value.replace(",", " ").split()
    try:
        if len(parts) == 6:
            parts = parts[1:]  # the day name
        day, month, year, clock, zone = parts
        hour, minute, second = (int(x) for x in clock.split(":"))
        if zone not in ("UTC", "GMT", "+0000", "Z"):
            raise ValueError(zone)
        return float(calendar.timegm((int(year), _MONTHS[month], int(day), hour, minute, second)))
    except (ValueError, KeyError) as e:
        raise DebianError(f"cannot read the Release date {value!r}") from e


def check_valid_until(release: Mapping[str, str], what: str, now: float | None = None) -> None:
    """Refuse a ``Release`` past its ``Valid-Until`` (it may be an old index replayed)."""
    until = release.get("Valid-Until")
    if not until:
        return
    now = time.time() if now is None else now
    if parse_release_date(until) < now:
        raise ReleaseExpiredError(
            f"{what} expired: its Valid-Until is {until}, before now"
            f" ({time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(now))}): the archive or"
            " mirror serves an old index: use an up-to-date mirror (or, for a snapshot mirror"
            " you trust, --ignore-valid-until)"
        )


def _write_atomically(path: str, data: bytes) -> None:
    """Write a cache file whole or not at all (builds of other platforms run beside)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


#: The version of the parsed-index cache's format: change it when Package's fields change.
_PARSED_FORMAT = "1"


@dataclass
class Archive:
    """One suite and architecture of a Debian archive, with its verified index.

    >>> archive = Archive("http://deb.example/debian", "bookworm", "arm64")  # doctest: +SKIP
    >>> [p.name for p in archive.resolve(["tini"])]  # doctest: +SKIP
    ['libc6', 'libgcc-s1', 'tini', ...]
    """

    url: str
    suite: str
    arch: str
    cache_dir: str | None = None
    packages: dict[str, Package] = field(default_factory=dict)
    providers: dict[str, list[str]] = field(default_factory=dict)
    signature: str = "not checked"
    #: The keyring file; None: :func:`find_keyring`.
    keyring: str | None = None
    #: The time ``Valid-Until`` is compared with; None: now.
    now: float | None = None
    #: Accept an expired ``InRelease`` (a frozen snapshot mirror), saying so in :attr:`expired`.
    ignore_valid_until: bool = False
    #: Why the index was accepted although expired, when it was.
    expired: str | None = None

    def load(self) -> Archive:
        """Fetch and verify ``InRelease`` and the ``Packages`` index; return self.

        Raises :class:`KeyringMissingError` before fetching anything when
        there is no keyring.
        """
        keyring = self.keyring or find_keyring()
        inrelease = _fetch(f"{self.url}/dists/{self.suite}/InRelease").decode("utf-8")
        text = self._verify_signature(inrelease, keyring)
        release = next(iter(parse_stanzas(text)), {})
        try:
            check_valid_until(release, f"InRelease of {self.url} {self.suite}", self.now)
        except ReleaseExpiredError as e:
            if not self.ignore_valid_until:
                raise
            self.expired = f"{e.args[0].split(': the archive')[0]}; accepted (--ignore-valid-until)"
        entries: dict[str, tuple[str, int]] = {}
        for line in release.get("SHA256", "").splitlines():
            parts = line.split()
            if len(parts) == 3:
                entries[parts[2]] = (parts[0], int(parts[1]))
        for name in ("Packages.xz", "Packages"):
            path = f"main/binary-{self.arch}/{name}"
            if path in entries:
                break
        else:
            raise DebianError(
                f"the Debian archive {self.url} has no index for {self.suite}/{self.arch}"
            )
        sha256, size = entries[path]
        if self._load_parsed(sha256):
            return self
        data = self._cached(sha256, size, f"{self.url}/dists/{self.suite}/{path}", path)
        raw = lzma.decompress(data) if name.endswith(".xz") else data
        self._index(raw.decode("utf-8"))
        self._store_parsed(sha256)
        return self

    def _parsed_path(self, sha256: str) -> str | None:
        # The parse depends on the Packages file (its digest, from the signed
        # InRelease) and on the fields kept: both are in the name.
        if not self.cache_dir:
            return None
        return os.path.join(self.cache_dir, "parsed", f"{sha256}-{_PARSED_FORMAT}.json")

    def _load_parsed(self, sha256: str) -> bool:
        """Take the index parsed before from the same ``Packages`` file, if it is cached.

        Decompressing and parsing an index of 70,000 packages costs about 2.5 s
        of CPU per suite and architecture; the parsed form loads in a tenth.
        """
        path = self._parsed_path(sha256)
        if not path or not os.path.exists(path):
            return False
        try:
            with open(path, encoding="utf-8") as f:
                stored = json.load(f)
            packages = {row[0]: Package(*row) for row in stored["packages"]}
            providers = {k: list(v) for k, v in stored["providers"].items()}
        except (OSError, ValueError, KeyError, TypeError):
            return False  # a damaged cache entry: parse the index again
        self.packages.update(packages)
        for name, names in providers.items():
            self.providers.setdefault(name, []).extend(names)
        return True

    def _store_parsed(self, sha256: str) -> None:
        path = self._parsed_path(sha256)
        if not path:
            return
        rows = [
            [p.name, p.version, p.architecture, p.filename, p.sha256, p.size,
             p.depends, p.pre_depends, p.provides, p.source]
            for p in self.packages.values()
        ]  # fmt: skip
        stored = {"packages": rows, "providers": self.providers}
        _write_atomically(path, json.dumps(stored, separators=(",", ":")).encode())

    def _verify_signature(self, inrelease: str, keyring: str) -> str:
        with open(keyring, "rb") as f:
            keys = f.read()
        try:
            text, fingerprint = verify_clearsigned(inrelease, keys)
        except SignatureError as e:
            raise DebianError(
                f"InRelease of {self.url} {self.suite} is not signed by a key in {keyring}: {e}"
            ) from e
        self.signature = f"signed by {fingerprint} ({keyring})"
        return text

    def _cached(self, sha256: str, size: int, url: str, what: str) -> bytes:
        path = os.path.join(self.cache_dir, "sha256", sha256) if self.cache_dir else None
        if path and os.path.exists(path):
            with open(path, "rb") as f:
                data = f.read()
            if len(data) == size and hashlib.sha256(data).hexdigest() == sha256:
                return data
        data = _fetch(url, timeout=300)
        _check(data, sha256, size, what)
        if path:
            _write_atomically(path, data)
        return data

    def _index(self, text: str) -> None:
        for stanza in parse_stanzas(text):
            try:
                pkg = Package(
                    name=stanza["Package"],
                    version=stanza["Version"],
                    architecture=stanza["Architecture"],
                    filename=stanza["Filename"],
                    sha256=stanza["SHA256"],
                    size=int(stanza["Size"]),
                    depends=stanza.get("Depends", ""),
                    pre_depends=stanza.get("Pre-Depends", ""),
                    provides=stanza.get("Provides", ""),
                    source=stanza.get("Source", stanza["Package"]).split()[0],
                )
            except KeyError:
                continue
            self.packages[pkg.name] = pkg
            for group in parse_depends(pkg.provides):
                self.providers.setdefault(group[0], []).append(pkg.name)

    def resolve(
        self,
        names: Iterable[str],
        satisfied: Iterable[str] = (),
        never: Iterable[str] = NEVER_INSTALL,
    ) -> list[Package]:
        """Return the packages to unpack for ``names``: the dependency closure.

        ``satisfied`` names are already present (an image's packages);
        ``never`` names are left out along with what only they need. The
        result is sorted by name.
        """
        have = set(satisfied)
        skip = set(never)
        chosen: dict[str, Package] = {}
        queue: list[tuple[str, str | None]] = [(n, None) for n in names]
        for name, _ in queue:
            if name not in self.packages and name not in self.providers:
                raise DebianError(
                    f"Debian package {name!r} does not exist in {self.suite} for {self.arch}"
                )
        while queue:
            name, parent = queue.pop(0)
            if name in chosen or name in have or (parent is not None and name in skip):
                continue
            pkg = self.packages.get(name)
            if pkg is None:
                providers = sorted(self.providers.get(name, []))
                if not providers:
                    raise DebianError(
                        f"Debian package {name!r} (needed by {parent}) does not exist"
                        f" in {self.suite} for {self.arch}"
                    )
                if any(p in chosen or p in have for p in providers):
                    continue
                pkg = self.packages[providers[0]]
            chosen[pkg.name] = pkg
            chosen.setdefault(name, pkg)
            for group in parse_depends(pkg.pre_depends) + parse_depends(pkg.depends):
                if any(alt in chosen or alt in have or alt in skip for alt in group):
                    continue
                known = [a for a in group if a in self.packages or a in self.providers]
                queue.append((known[0] if known else group[0], pkg.name))
        unique = {p.name: p for p in chosen.values()}
        return [unique[n] for n in sorted(unique)]

    def fetch(self, pkg: Package) -> bytes:
        """Download a package (or take it from the cache) and check its digest."""
        return self._cached(pkg.sha256, pkg.size, f"{self.url}/{pkg.filename}", pkg.filename)


def _read_record() -> dict[str, object]:
    try:
        with open(IMAGE_RECORD) as f:
            record: dict[str, object] = json.load(f)
    except OSError as e:
        raise DebianError(
            f"EXTRA_OS_PACKAGES needs {IMAGE_RECORD}, written by the minimaldask image"
            f" builder; this is not a minimaldask image ({e.strerror})"
        ) from e
    return record


def install_runtime_packages(
    names: list[str],
    prefix: str,
    archive_url: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Fetch Debian packages and unpack them into ``prefix``, usable without root.

    Meant for the image at start-up (``EXTRA_OS_PACKAGES``): the suite,
    architecture and archive come from ``/etc/minimaldask-image.json``
    (``archive_url`` overrides the archive), and packages already in the
    image are not fetched again. Returns the environment to set so that the
    programs, libraries and Python modules of the packages are found:
    ``PATH``, ``LD_LIBRARY_PATH`` and ``PYTHONPATH``, each with the prefix's
    directories first and the current value (from ``environ``, default
    ``os.environ``) after.
    """
    environ = os.environ if environ is None else environ
    record = _read_record()
    debian = record["debian"]
    assert isinstance(debian, dict)
    url = archive_url or environ.get("MINIMALDASK_DEBIAN_MIRROR") or str(debian["archive"])
    root = os.path.join(prefix, "os")
    archive = Archive(url, str(debian["suite"]), str(debian["arch"]), os.path.join(prefix, "cache"))
    archive.load()
    for pkg in archive.resolve(names, satisfied=list(debian["packages"])):
        print(f"minimaldask: unpacking {pkg.name} {pkg.version} into {root}", flush=True)
        unpack_deb(archive.fetch(pkg), root)
    triplet = str(debian["triplet"])
    apply_alternatives(root, triplet)
    additions = {
        "PATH": [f"{root}/usr/local/bin", f"{root}/usr/bin", f"{root}/usr/sbin"],
        "LD_LIBRARY_PATH": [f"{root}/usr/lib/{triplet}", f"{root}/usr/lib"],
        "PYTHONPATH": [f"{root}/usr/lib/python3/dist-packages"],
    }
    env = {}
    for key, dirs in additions.items():
        current = environ.get(key)
        env[key] = os.pathsep.join(dirs + ([current] if current else []))
    return env
