"""Assemble the image of one or several platforms from Debian packages and wheels.

Nothing runs for the target platform: Debian packages are unpacked, wheels
are unzipped, and bytecode is compiled by a Python of the same version built
for the machine the builder runs on.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import functools
import glob
import hashlib
import json
import os
import platform as _platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from minimaldask import contract
from minimaldask.exceptions import MinimalDaskError
from minimaldask.image import oci
from minimaldask.image.debfile import apply_alternatives, unpack_deb
from minimaldask.image.debian import (
    KEYRINGS,
    Archive,
    Package,
    apt_archive_url,
    find_keyring,
)
from minimaldask.image.elfcheck import missing_libraries, unresolved
from minimaldask.image.lock import ANNOTATION as LOCK_ANNOTATION
from minimaldask.image.lock import IMAGE_PATH as LOCK_PATH
from minimaldask.image.lock import Lock
from minimaldask.image.prune import SITE, prune
from minimaldask.image.recipe import (
    FLAVORS,
    LAYERS,
    NO_BYTECODE,
    NO_WHEEL,
    NUMERIC,
    SONAME_PACKAGES,
    SOURCELESS_PACKAGES,
    TRIM_MODULES,
    WHEEL_EXCLUDE,
    Target,
    target,
    unsupported_reason,
)
from minimaldask.image.standalone import StandalonePython
from minimaldask.image.standalone import find as find_python
from minimaldask.image.standalone import install as install_python
from minimaldask.image.trim import recorded_modules, remove_unused, sourceless
from minimaldask.image.wheels import (
    Wheel,
    canonical,
    download,
    download_locked,
    file_sha256,
    resolve,
    unpack_wheel,
)

__all__ = ["BuildError", "BuildOptions", "BuildResult", "build", "upstream_version"]

USER = (1000, 1000)
HOME = "/home/dask"
PREFIX = "/tmp/minimaldask"
TITLE = "minimaldask"

# Input: (source, name in the image, bytecode path or "") triples. A given
# bytecode path is the sourceless place (module.pyc beside it): the source goes.
_COMPILE = r"""
import os, py_compile, sys
mode = py_compile.PycInvalidationMode.UNCHECKED_HASH
items = sys.stdin.read().split("\0")
for path, dfile, cfile in zip(items[0::3], items[1::3], items[2::3]):
    try:
        py_compile.compile(path, cfile=cfile or None, dfile=dfile, doraise=True, invalidation_mode=mode)
    except py_compile.PyCompileError:
        continue  # a file that is not Python 3 (a template, a sample): left as is
    if cfile:
        os.unlink(path)
"""


# Platforms resolve side by side; their pip downloads share one directory, one at a time.
_DOWNLOADS = threading.Lock()


class BuildError(MinimalDaskError):
    """The image could not be built; the message says which input is wrong."""


@dataclass
class BuildOptions:
    """Inputs of a build; the same inputs give the same image digests.

    ``python_from``: relocatable CPythons (prefixes or archives), one per
    platform, for a Python no Debian suite ships; ``python`` may then be
    ``""`` (taken from them). ``lock``: a lock file of an earlier build,
    whose wheels are downloaded with pip's ``--require-hashes`` instead of
    resolving the requirements again. ``keyring``: the Debian archive keyring
    (default: :func:`minimaldask.image.debian.find_keyring`).
    ``compression_level``: None for the compression's default (gzip 9, zstd 9).
    """

    platforms: Sequence[str]
    python: str
    dask: str
    flavor: str = "default"
    pip: Sequence[str] = ()
    deb: Sequence[str] = ()
    compression: str = "gzip"
    compression_level: int | None = None
    debian_mirror: str | None = None
    source_date_epoch: int = 0
    source: str | None = None
    python_from: Sequence[str] = ()
    lock: str | None = None
    keyring: str | None = None
    ignore_valid_until: bool = False
    cache_dir: str = field(
        default_factory=lambda: os.path.join(
            os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "minimaldask"
        )
    )


@dataclass
class PlatformResult:
    """What was built for one platform."""

    image: oci.Image
    seconds: float
    debian: list[Package]
    from_debian: dict[str, str]
    signature: str
    #: Where the Python came from: ``Debian trixie`` or the --python-from CPython.
    python_source: str = ""
    suite: str = ""
    #: Seconds per phase of the build (resolution, unpacking, bytecode, layers, ...).
    phases: dict[str, float] = field(default_factory=dict)

    @property
    def compressed(self) -> int:
        """Sum of compressed layer sizes."""
        return sum(len(layer.data) for layer in self.image.layers)


@dataclass
class BuildResult:
    """All platforms of a build and the image index that lists them."""

    options: BuildOptions
    platforms: list[PlatformResult]
    index: oci.Blob
    annotations: dict[str, str]
    lock: Lock

    @property
    def digest(self) -> str:
        """Digest of the image index."""
        return self.index.digest

    @property
    def tag(self) -> str:
        """``<dask version>-py<X.Y>``."""
        return f"{self.options.dask}-py{self.options.python}"


def upstream_version(debian_version: str) -> str:
    """The upstream part of a Debian version: ``1:2.2.4+ds-1`` -> ``2.2.4``."""
    version = debian_version.split(":", 1)[-1]
    version = version.rsplit("-", 1)[0] if "-" in version else version
    return re.split(r"[+~]", version, maxsplit=1)[0]


def host_platform() -> str | None:
    """The OCI platform of this machine, if the builder supports it."""
    return {
        "x86_64": "linux/amd64",
        "aarch64": "linux/arm64",
        "armv7l": "linux/arm/v7",
        "armv8l": "linux/arm/v7",
    }.get(_platform.machine())


def _log(message: str) -> None:
    print(message, flush=True)


class _Platform:
    """The build of one platform: first its resolution, then its layers in staging directories."""

    def __init__(
        self,
        opts: BuildOptions,
        tgt: Target,
        mirror: str,
        keyring: str,
        python: StandalonePython | None = None,
        host_python: StandalonePython | None = None,
    ) -> None:
        self.opts = opts
        self.tgt = tgt
        self.mirror = mirror
        self.keyring = keyring
        self.python = python
        self.host_python = host_python
        self.archive = Archive(
            mirror,
            tgt.suite,
            tgt.arch,
            os.path.join(opts.cache_dir, "debian"),
            keyring=keyring,
            ignore_valid_until=opts.ignore_valid_until,
        )
        self.wheels: list[Wheel] = []
        self.extras: set[str] = set()
        self.paths: dict[str, str] = {}
        self.digests: dict[str, str] = {}
        self.seconds = 0.0
        self.phases: dict[str, float] = {}
        self._mark = time.monotonic()

    def _phase(self, name: str) -> None:
        """Charge the time since the last mark to ``name``."""
        now = time.monotonic()
        self.phases[name] = self.phases.get(name, 0.0) + now - self._mark
        self._mark = now

    def resolve(self, lock: Lock | None) -> None:
        """Load the Debian index; resolve and download the wheels (or take them from ``lock``)."""
        start = self._mark = time.monotonic()
        self.archive.load()
        self._phase("debian index")
        wheel_dir = os.path.join(self.opts.cache_dir, "wheels")
        if lock is None:
            self.wheels, self.extras = self._wheels()
            with _DOWNLOADS:
                self.paths = download(self.wheels, self.tgt, wheel_dir)
        else:
            locked, debian = lock.for_platform(self.tgt.platform)
            self.wheels = [Wheel(w.name, w.version, "") for w in locked]
            self.wheels += [
                Wheel(name, self._debian_version(deb), "", deb) for name, deb in debian.items()
            ]
            self.wheels.sort(key=lambda w: w.name)
            self.extras = set(lock.extras)
            wanted = [(w.name, w.version, lock.hashes(w.name)) for w in locked]
            with _DOWNLOADS:
                self.paths = download_locked(wanted, self.tgt, wheel_dir)
        with _DOWNLOADS:
            self.digests = {name: file_sha256(path) for name, path in self.paths.items()}
        self._phase("wheels: resolve, download")
        self.seconds += time.monotonic() - start

    def _debian_version(self, package: str) -> str:
        pkg = self.archive.packages.get(package)
        if pkg is None:
            raise BuildError(f"Debian package {package!r} (in the lock) is not in {self.tgt.suite}")
        return upstream_version(pkg.version)

    def run(self, work: str, lock: Lock) -> PlatformResult:
        """Assemble the layers in ``work`` and make the image."""
        start = self._mark = time.monotonic()
        self.work = work
        self.stages = {name: os.path.join(work, name) for name in LAYERS}
        for path in self.stages.values():
            os.makedirs(path)
        tgt, opts = self.tgt, self.opts
        wheels, extras = self.wheels, self.extras
        runtime_names = tgt.runtime_debs
        if self.python is not None:
            install_python(self.python, self.stages["runtime"])
            prune(self.stages["runtime"], opts.flavor)
            runtime_names = runtime_names + self._libraries_of_python()
        runtime = self.archive.resolve(runtime_names)
        have = [p.name for p in runtime]
        fallback = sorted({w.debian for w in wheels if w.debian})
        numeric_debs = self.archive.resolve(fallback, satisfied=have) if fallback else []
        have += [p.name for p in numeric_debs]
        extra_debs = self._extra_debs(have)
        have += [p.name for p in extra_debs]
        for layer, debs in (
            ("runtime", runtime),
            ("numeric", numeric_debs),
            ("extras", extra_debs),
        ):
            for pkg in debs:
                unpack_deb(self.archive.fetch(pkg), self.stages[layer])
            apply_alternatives(self.stages[layer], tgt.triplet)
        self._phase("debian packages")
        for wheel in wheels:
            if wheel.debian:
                continue
            if wheel.name in extras:
                layer = "extras"
            elif wheel.name in NUMERIC:
                layer = "numeric"
            elif wheel.name == "pip":
                layer = "runtime"
            else:
                layer = "dask"
            stage = self.stages[layer]
            unpack_wheel(
                self.paths[wheel.name], os.path.join(stage, SITE), os.path.join(stage, "usr")
            )
        self._minimaldask()
        self._system_files(runtime + numeric_debs + extra_debs, wheels, lock)
        self._phase("wheels: unpack")
        for stage in self.stages.values():
            prune(stage, opts.flavor)
            remove_unused(stage, TRIM_MODULES, recorded_modules())
        self._check_keyring()
        problems = missing_libraries(self.stages.values(), tgt.triplet)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise BuildError(f"a shared library is missing: {problems[0]}{more}")
        self._phase("prune, check")
        self._compile()
        self._phase("bytecode")
        image = self._image(lock)
        self._phase("layers: tar, compress")
        self.seconds += time.monotonic() - start
        return PlatformResult(
            image,
            self.seconds,
            runtime + numeric_debs + extra_debs,
            {w.name: w.debian for w in wheels if w.debian},
            self.archive.signature,
            self._python_source(),
            tgt.suite,
            dict(self.phases),
        )

    def _python_source(self) -> str:
        if self.python is None:
            return f"Debian {self.tgt.suite}"
        return self.python.describe()

    def _libraries_of_python(self) -> list[str]:
        """Debian packages for the libraries the --python-from CPython needs and lacks."""
        assert self.python is not None
        packages: set[str] = set()
        unknown: dict[str, str] = {}
        for rel, lib in unresolved([self.stages["runtime"]], self.tgt.triplet):
            names = SONAME_PACKAGES.get(lib)
            if names is None:
                unknown.setdefault(lib, rel)
                continue
            name = next((n for n in names if n in self.archive.packages), None)
            if name is None:
                unknown.setdefault(lib, rel)
            else:
                packages.add(name)
        if unknown:
            lib, rel = sorted(unknown.items())[0]
            more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
            raise BuildError(
                f"the CPython of --python-from {self.python.source} needs {lib} (for"
                f" {rel}){more}: it is not inside it and no Debian package of"
                f" {self.tgt.suite} known to the builder provides it (SONAME_PACKAGES in"
                " minimaldask/image/recipe.py); use a CPython that bundles it"
            )
        return sorted(packages)

    def _check_keyring(self) -> None:
        """The image must keep a Debian archive keyring: EXTRA_OS_PACKAGES checks with it."""
        runtime = self.stages["runtime"]
        if not any(os.path.isfile(runtime + path) for path in KEYRINGS):
            raise BuildError(
                f"the image would have no Debian archive keyring ({' or '.join(KEYRINGS)}):"
                " the pruning in minimaldask/image/recipe.py removed it"
            )

    def _wheels(self) -> tuple[list[Wheel], set[str]]:
        opts, tgt = self.opts, self.tgt
        versions = {
            name: upstream_version(pkg.version)
            for name, pkg in self.archive.packages.items()
            if name.startswith("python3-")
        }
        base = [f"dask=={opts.dask}", f"distributed=={opts.dask}", *FLAVORS[opts.flavor]]
        known_missing = NO_WHEEL.get(tgt.arch, ())
        wheels = resolve(base + list(opts.pip), tgt, versions, known_missing)
        extras: set[str] = set()
        if opts.pip:
            known = {w.name for w in resolve(base, tgt, versions, known_missing)}
            extras = {w.name for w in wheels if w.name not in known}
        asked = {canonical(re.split(r"[<>=!~\[; ]", p, maxsplit=1)[0]) for p in opts.pip}
        exclude = WHEEL_EXCLUDE[opts.flavor] - asked
        return [w for w in wheels if w.name not in exclude], extras

    def _extra_debs(self, have: list[str]) -> list[Package]:
        if not self.opts.deb:
            return []
        return self.archive.resolve(self.opts.deb, satisfied=have)

    def _minimaldask(self) -> None:
        """Copy the pod side of this minimaldask package (:func:`pod_side`), with metadata.

        The client (cluster, Kubernetes client, CLI) and this builder stay out: no pod
        imports them, and they cost 0.26 MB of the image's gzip.
        """
        import minimaldask

        stage = self.stages["minimaldask"]
        site = os.path.join(stage, SITE)
        source = os.path.dirname(minimaldask.__file__)
        for rel in pod_side(source):
            os.makedirs(os.path.join(site, "minimaldask", os.path.dirname(rel)), exist_ok=True)
            shutil.copyfile(os.path.join(source, rel), os.path.join(site, "minimaldask", rel))
        info = os.path.join(site, f"minimaldask-{minimaldask.__version__}.dist-info")
        os.makedirs(info)
        with open(os.path.join(info, "METADATA"), "w") as f:
            f.write(
                "Metadata-Version: 2.1\nName: minimaldask\n"
                f"Version: {minimaldask.__version__}\n"
                f"Requires-Dist: dask>={self.opts.dask}\nRequires-Dist: distributed\n"
            )
        with open(os.path.join(info, "INSTALLER"), "w") as f:
            f.write("minimaldask-image\n")

    def _system_files(self, debs: list[Package], wheels: list[Wheel], lock: Lock) -> None:
        runtime = self.stages["runtime"]
        py = f"python{self.tgt.python}"
        # Merged /usr: the ELF interpreter path (/lib/ld-linux-*.so, or
        # /lib64/ld-linux-x86-64.so.2 on amd64) goes through these links.
        for top in ("bin", "lib", "lib64"):
            target = f"usr/{top}"
            if os.path.isdir(os.path.join(runtime, target)) or top != "lib64":
                os.makedirs(os.path.join(runtime, target), exist_ok=True)
                os.symlink(target, os.path.join(runtime, top))
        for link in ("python3", "python"):
            path = os.path.join(runtime, "usr/bin", link)
            if os.path.lexists(path):  # a --python-from prefix has its own
                os.unlink(path)
            os.symlink(py, path)
        etc = os.path.join(runtime, "etc")
        os.makedirs(etc, exist_ok=True)
        files = {
            "passwd": "root:x:0:0:root:/root:/usr/sbin/nologin\n"
            f"dask:x:{USER[0]}:{USER[1]}:dask:{HOME}:/usr/sbin/nologin\n",
            "group": f"root:x:0:\ndask:x:{USER[1]}:\n",
            "nsswitch.conf": "passwd: files\ngroup: files\nhosts: files dns\n",
        }
        for name, text in files.items():
            with open(os.path.join(etc, name), "w") as f:
                f.write(text)
        for path, mode in ((HOME, 0o755), ("/tmp", 0o1777), ("/root", 0o700)):
            os.makedirs(runtime + path, exist_ok=True)
            os.chmod(runtime + path, mode)
        record = {
            "platform": self.tgt.platform,
            "flavor": self.opts.flavor,
            "python": self.tgt.python,
            "python_source": self._python_source(),
            "lock": {"path": LOCK_PATH, "sha256": lock.sha256},
            "dask": self.opts.dask,
            "distributed": self.opts.dask,
            "debian": {
                "suite": self.tgt.suite,
                "arch": self.tgt.arch,
                "triplet": self.tgt.triplet,
                "archive": self.mirror,
                "packages": sorted({p.name for p in debs}),
            },
            "from_debian": {w.name: w.debian for w in wheels if w.debian},
            "wheels": {w.name: w.version for w in wheels if not w.debian},
            "wheel_sha256": dict(sorted(self.digests.items())),
        }
        stage_etc = os.path.join(self.stages["minimaldask"], "etc")
        os.makedirs(stage_etc, exist_ok=True)
        with open(os.path.join(stage_etc, "minimaldask-image.json"), "w") as f:
            json.dump(record, f, indent=1, sort_keys=True)
            f.write("\n")
        with open(self.stages["minimaldask"] + LOCK_PATH, "w") as f:
            f.write(lock.text())

    def _compile(self) -> None:
        """Compile every module to bytecode that does not depend on mtimes.

        Modules the recorded imports never name ship as bytecode only.
        """
        recorded = recorded_modules()
        pairs: list[tuple[str, str, str]] = []
        for stage in self.stages.values():
            for dirpath, dirnames, filenames in os.walk(stage):
                dirnames.sort()
                for name in sorted(filenames):
                    path = os.path.join(dirpath, name)
                    rel = os.path.relpath(path, stage)
                    if name.endswith(".py") and not rel.startswith(NO_BYTECODE):
                        bare = sourceless(stage, rel, recorded, SOURCELESS_PACKAGES)
                        cfile = path + "c" if bare else ""
                        pairs.append((path, "/" + rel, cfile))
        pairs.sort(key=lambda p: p[1])
        command, env = self._host_python()
        pairs, stored = self._cached_bytecode(pairs, command)
        jobs = max(1, min(4, os.cpu_count() or 1, len(pairs)))
        procs = []
        for i in range(jobs):
            chunk = pairs[i::jobs]
            data = "\0".join(x for pair in chunk for x in pair)
            proc = subprocess.Popen(
                [*command, "-c", _COMPILE],
                stdin=subprocess.PIPE,
                env=env,
                text=True,
            )
            procs.append((proc, data))
        for proc, data in procs:
            assert proc.stdin is not None
            proc.stdin.write(data)
            proc.stdin.close()
        for proc, _ in procs:
            if proc.wait() != 0:
                raise BuildError(f"bytecode compilation failed for {self.tgt.platform}")
        for made, keep in stored:
            if os.path.exists(made):  # not a file that failed to compile
                os.makedirs(os.path.dirname(keep), exist_ok=True)
                tmp = f"{keep}.{os.getpid()}.tmp"
                shutil.copyfile(made, tmp)
                os.replace(tmp, keep)

    def _cached_bytecode(
        self, items: list[tuple[str, str, str]], command: list[str]
    ) -> tuple[list[tuple[str, str, str]], list[tuple[str, str]]]:
        """Take bytecode compiled before (this build's other platforms, earlier builds).

        Bytecode depends on the source, the name recorded in it and the
        interpreter only, so it is kept in the cache under their digest.
        Returns what is left to compile, and (made, cache path) pairs to store.
        """
        interpreter = next(c for c in command if os.path.basename(c).startswith("python"))
        # The compiling script is part of the key: it decides the invalidation mode.
        recipe = hashlib.sha256(_COMPILE.encode()).hexdigest()[:8]
        identity = f"{_file_sha256(interpreter)[:16]}-{recipe}"
        cache = os.path.join(self.opts.cache_dir, "bytecode", identity)
        tag = "cpython-" + self.tgt.python.replace(".", "")
        todo, stored = [], []
        for path, dfile, cfile in items:
            with open(path, "rb") as f:
                source = f.read()
            kind = b"sourceless" if cfile else b"cached"
            key = hashlib.sha256(b"\0".join([dfile.encode(), kind, source])).hexdigest()
            keep = os.path.join(cache, key[:2], key)
            made = cfile or os.path.join(
                os.path.dirname(path), "__pycache__", f"{os.path.basename(path)[:-3]}.{tag}.pyc"
            )
            if os.path.exists(keep):
                os.makedirs(os.path.dirname(made), exist_ok=True)
                shutil.copyfile(keep, made)
                if cfile:
                    os.unlink(path)
            else:
                todo.append((path, dfile, cfile))
                stored.append((made, keep))
        return todo, stored

    def _host_python(self) -> tuple[list[str], dict[str, str]]:
        """A command that runs Python ``tgt.python`` built for this machine, and its environment."""
        host = host_platform()
        if host is None:
            raise BuildError(f"the builder does not run on {_platform.machine()}")
        # Never the image's own tree: the compiler's imports would land in it, and it
        # changes while the compiler runs (sources give way to bytecode).
        if self.tgt.standalone:
            return self._host_standalone(host)
        host_tgt = target(host, self.tgt.python)
        archive = Archive(
            self.mirror,
            host_tgt.suite,
            host_tgt.arch,
            os.path.join(self.opts.cache_dir, "debian"),
            keyring=self.keyring,
            ignore_valid_until=self.opts.ignore_valid_until,
        ).load()
        pkgs = archive.resolve(host_tgt.runtime_debs)
        key = "-".join(sorted(p.sha256[:8] for p in pkgs))[:64]
        root = os.path.join(self.opts.cache_dir, "host-python", f"{host_tgt.suite}-{key}")
        if not os.path.isdir(root):
            tmp = root + ".partial"
            shutil.rmtree(tmp, ignore_errors=True)
            for pkg in pkgs:
                unpack_deb(archive.fetch(pkg), tmp)
            os.replace(tmp, root)
        return self._python_command(root, host_tgt.triplet)

    def _host_standalone(self, host: str) -> tuple[list[str], dict[str, str]]:
        """A Python of the target's version for this machine, for a --python-from image."""
        version = self.tgt.python
        own = self.python if host == self.tgt.platform else self.host_python
        if own is not None:
            return [own.interpreter, "-I", "-B"], {"PYTHONHOME": own.root}
        if f"{sys.version_info.major}.{sys.version_info.minor}" == version:
            return [sys.executable, "-I", "-B"], {}
        found = shutil.which(f"python{version}")
        if found:
            return [found, "-I", "-B"], {}
        raise BuildError(
            f"bytecode for Python {version} needs a Python {version} for this machine"
            f" ({host_platform()}): add its CPython with another --python-from, or put"
            f" python{version} on PATH"
        )

    def _python_command(self, root: str, triplet: str) -> tuple[list[str], dict[str, str]]:
        loaders = sorted(glob.glob(os.path.join(root, "usr/lib", triplet, "ld-linux*.so*")))
        if not loaders:
            raise BuildError(f"no dynamic loader in the unpacked Python at {root}")
        libraries = [os.path.join(root, "usr/lib", triplet), os.path.join(root, "usr/lib")]
        command = [
            loaders[0],
            "--library-path",
            ":".join(libraries),
            os.path.join(root, "usr/bin", f"python{self.tgt.python}"),
            "-I",
            "-B",
        ]
        return command, {"PYTHONHOME": os.path.join(root, "usr")}

    def _image(self, lock: Lock) -> oci.Image:
        opts, tgt = self.opts, self.tgt
        layers, names, sizes, diff_ids, history = [], [], [], [], []
        created = _iso(opts.source_date_epoch)

        def owner(rel: str) -> tuple[int, int]:
            return USER if (rel == HOME[1:] or rel.startswith(HOME[1:] + "/")) else (0, 0)

        # zlib lets go of the GIL: a layer compresses while the next one is archived.
        with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            pending = []
            for name in LAYERS:
                stage = self.stages[name]
                if not any(os.scandir(stage)):
                    continue
                tar = oci.layer_tar(stage, opts.source_date_epoch, owner)
                level = opts.compression_level
                pending.append((name, tar, pool.submit(oci.compress, tar, opts.compression, level)))
            for name, tar, compressed in pending:
                layers.append(oci.Blob(oci.LAYER[opts.compression], compressed.result()))
                names.append(name)
                sizes.append(len(tar))
                diff_ids.append(oci.Blob("", tar).digest)
                history.append(
                    {"created": created, "created_by": f"minimaldask image build: {name}"}
                )
        labels = _labels(opts, created, tgt, lock)
        if self.python is not None and self.python.sha256:
            labels["org.minimaldask.python.archive.sha256"] = self.python.sha256
        arch_parts = tgt.platform.split("/")
        config: dict[str, object] = {
            "created": created,
            "architecture": arch_parts[1],
            "os": "linux",
            "config": {
                "User": f"{USER[0]}:{USER[1]}",
                "Env": [
                    "PATH=/usr/local/bin:/usr/bin:/bin",
                    f"HOME={HOME}",
                    "LANG=C.UTF-8",
                    "PYTHONUNBUFFERED=1",
                    f"MINIMALDASK_PREFIX={PREFIX}",
                ],
                "Entrypoint": [
                    "/usr/bin/tini",
                    "--",
                    "/usr/bin/python3",
                    "-m",
                    contract.ENTRYPOINT_MODULE,
                ],
                "WorkingDir": HOME,
                "ExposedPorts": {"8786/tcp": {}, "8787/tcp": {}},
                "Labels": labels,
                "StopSignal": "SIGTERM",
            },
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": history,
        }
        if len(arch_parts) > 2:
            config["variant"] = arch_parts[2]
        return oci.Image(
            platform=tgt.platform,
            config=oci.Blob(oci.CONFIG, oci.canonical_json(config)),
            layers=layers,
            layer_names=names,
            uncompressed_sizes=sizes,
            diff_ids=diff_ids,
            annotations=labels,
        )


def _imports(path: str, module: str) -> set[str]:
    """The minimaldask modules a file imports, anywhere in it (lazy imports too).

    Not those under ``if TYPE_CHECKING:``.
    """
    import ast

    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    out: set[str] = set()
    nodes: list[ast.AST] = [tree]
    while nodes:
        node = nodes.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            nodes += node.orelse  # the type checker's imports are not made
            continue
        nodes += ast.iter_child_nodes(node)
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            out.add(base)
            # ``from minimaldask import contract``: a module, or a name of the package.
            out.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in out if m == "minimaldask" or m.startswith("minimaldask.")}


def pod_side(source: str) -> list[str]:
    """The files of minimaldask (relative to its directory ``source``) that a pod needs.

    Every module of :mod:`minimaldask.pod` (its entrypoint names some of them by
    string: preloads, plugins), and what they import, transitively, with the
    ``__init__.py`` of each package on the way.
    """

    def path_of(module: str) -> str | None:
        rel = module.split(".")[1:]
        for candidate in (os.path.join(*rel, "__init__.py") if rel else "__init__.py",
                          os.path.join(*rel) + ".py" if rel else ""):  # fmt: skip
            if candidate and os.path.isfile(os.path.join(source, candidate)):
                return candidate
        return None  # a name imported from a package, not a module

    todo = ["minimaldask"] + [
        "minimaldask.pod." + name[:-3]
        for name in sorted(os.listdir(os.path.join(source, "pod")))
        if name.endswith(".py")
    ]
    seen: dict[str, str] = {}
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        rel = path_of(module)
        if rel is None:
            continue
        seen[module] = rel
        parents = [".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)]
        todo += parents + sorted(_imports(os.path.join(source, rel), module))
    return sorted(set(seen.values()))


@functools.cache
def _file_sha256(path: str) -> str:
    return file_sha256(os.path.realpath(path))


def _iso(epoch: int) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )


def _labels(opts: BuildOptions, created: str, tgt: Target, lock: Lock) -> dict[str, str]:
    labels = {
        "org.minimaldask.dask.version": opts.dask,
        "org.minimaldask.distributed.version": opts.dask,
        "org.minimaldask.python.version": opts.python,
        "org.minimaldask.python.source": "standalone" if tgt.standalone else "debian",
        "org.minimaldask.debian.suite": tgt.suite,
        "org.minimaldask.flavor": opts.flavor,
        LOCK_ANNOTATION: lock.sha256,
        "org.opencontainers.image.version": f"{opts.dask}-py{opts.python}",
        "org.opencontainers.image.created": created,
        "org.opencontainers.image.title": TITLE,
    }
    if opts.source:
        labels["org.opencontainers.image.source"] = opts.source
    return labels


def resolve_mirror(option: str | None) -> str:
    """The Debian archive URL: the option, else the machine's apt sources."""
    url = option or apt_archive_url()
    if not url:
        raise BuildError(
            "no Debian archive configured: pass --debian-mirror URL or set the dask config"
            " key minimaldask.image.debian-mirror (no apt sources found on this machine)"
        )
    return url.rstrip("/")


def _pythons_from(
    opts: BuildOptions, log: Callable[[str], None]
) -> tuple[BuildOptions, dict[str, StandalonePython]]:
    """Inspect the --python-from CPythons; return the options with platforms and Python set."""
    if not opts.python_from:
        return opts, {}
    found: dict[str, StandalonePython] = {}
    for path in opts.python_from:
        python = find_python(path, opts.cache_dir)
        if python.platform in found:
            raise BuildError(
                f"--python-from {found[python.platform].source} and {path} are both for"
                f" {python.platform}: give one per platform"
            )
        found[python.platform] = python
        log(f"--python-from {path}: {python.describe()}")
    versions = sorted({p.version for p in found.values()})
    if len(versions) > 1:
        raise BuildError(f"--python-from CPythons of different versions ({', '.join(versions)})")
    if opts.python and opts.python != versions[0]:
        raise BuildError(
            f"--python {opts.python} but --python-from is CPython {versions[0]}: drop --python"
            " or give a matching CPython"
        )
    platforms = list(opts.platforms) or sorted(found)
    missing = [p for p in platforms if p not in found]
    if missing:
        raise BuildError(
            f"no --python-from CPython for {', '.join(missing)} (given: {', '.join(sorted(found))})"
        )
    return dataclasses.replace(opts, python=versions[0], platforms=platforms), found


def _read_lock(opts: BuildOptions) -> Lock | None:
    if not opts.lock:
        return None
    try:
        with open(opts.lock) as f:
            text = f.read()
    except OSError as e:
        raise BuildError(f"--lock {opts.lock}: {e.strerror}") from e
    lock = Lock.parse(text, opts.lock)
    lock.check(opts.dask, opts.python, opts.flavor)
    if opts.pip:
        raise BuildError("--lock and --pip: the lock already lists the extra packages; drop --pip")
    return lock


def _make_lock(opts: BuildOptions, platforms: list[_Platform]) -> Lock:
    lock = Lock(opts.dask, opts.python, opts.flavor, [p.tgt.platform for p in platforms])
    extras: set[str] = set()
    for plat in platforms:
        for wheel in plat.wheels:
            if wheel.debian is None:
                lock.add(plat.tgt.platform, wheel.name, wheel.version, plat.digests[wheel.name])
        lock.from_debian[plat.tgt.platform] = {
            w.name: w.debian for w in plat.wheels if w.debian is not None
        }
        extras |= plat.extras
    lock.extras = sorted(extras)
    return lock


def build(opts: BuildOptions, log: Callable[[str], None] = _log) -> BuildResult:
    """Build the image of every platform in ``opts``; return blobs and the index.

    Every platform is resolved first (Debian index, wheels and their
    digests), so that the lock of the whole build goes into each image.
    """
    if opts.flavor not in FLAVORS:
        raise BuildError(f"unknown flavor {opts.flavor!r}: choose from {', '.join(FLAVORS)}")
    try:
        oci.check_level(opts.compression, opts.compression_level)
    except oci.OCIError as e:
        raise BuildError(str(e)) from e
    opts, standalone = _pythons_from(opts, log)
    targets = []
    for name in opts.platforms:
        try:
            targets.append(target(name, opts.python, standalone=bool(standalone)))
        except ValueError as e:
            raise BuildError(str(e)) from e
        reason = unsupported_reason(name, opts.flavor)
        if reason:
            raise BuildError(f"the {opts.flavor} flavor is not available for {name}: {reason}")
    lock = _read_lock(opts)
    if opts.keyring and not os.path.isfile(opts.keyring):
        raise BuildError(
            f"--debian-keyring {opts.keyring} is not a file: name a binary OpenPGP keyring such"
            " as /usr/share/keyrings/debian-archive-keyring.gpg (package debian-archive-keyring)"
        )
    keyring = opts.keyring or find_keyring()
    mirror = resolve_mirror(opts.debian_mirror)
    host = host_platform()
    platforms = [
        _Platform(
            opts,
            tgt,
            mirror,
            keyring,
            standalone.get(tgt.platform),
            standalone.get(host) if host else None,
        )
        for tgt in targets
    ]
    # The platforms' resolutions wait on the network and on pip: side by side.
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(platforms)) as pool:
        resolving = [(plat, pool.submit(plat.resolve, lock)) for plat in platforms]
        for plat, done in resolving:
            try:
                done.result()
            except MinimalDaskError as e:
                raise BuildError(f"{plat.tgt.platform}: {e}") from e
            if plat.archive.expired:
                log(f"warning: {plat.tgt.platform}: {plat.archive.expired}")
    if lock is None:
        lock = _make_lock(opts, platforms)
    results = []
    for plat in platforms:
        tgt = plat.tgt
        where = (
            f"Python {tgt.python} from Debian {tgt.suite}"
            if plat.python is None
            else f"Python {tgt.python} from --python-from, libraries from Debian {tgt.suite}"
        )
        log(f"building {tgt.platform} ({where})")
        with tempfile.TemporaryDirectory(prefix="minimaldask-build-") as work:
            try:
                result = plat.run(work, lock)
            except MinimalDaskError as e:
                raise BuildError(f"{tgt.platform}: {e}") from e
        log(f"  {tgt.platform}: Debian {tgt.suite} InRelease {result.signature}")
        for name, deb in sorted(result.from_debian.items()):
            log(f"  {tgt.platform}: {name} from Debian {tgt.suite} ({deb}): no wheel on the index")
        results.append(result)
    annotations = _labels(opts, _iso(opts.source_date_epoch), targets[0], lock)
    index = oci.index_blob([r.image for r in results], annotations)
    return BuildResult(opts, results, index, annotations, lock)
