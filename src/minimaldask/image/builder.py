"""Assemble the image of one or several platforms from Debian packages and wheels.

Nothing runs for the target platform: Debian packages are unpacked, wheels
are unzipped, and bytecode is compiled by a Python of the same version built
for the machine the builder runs on.
"""

from __future__ import annotations

import datetime
import glob
import json
import os
import platform as _platform
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from minimaldask import contract
from minimaldask.exceptions import MinimalDaskError
from minimaldask.image import oci
from minimaldask.image.debfile import apply_alternatives, unpack_deb
from minimaldask.image.debian import Archive, Package, apt_archive_url
from minimaldask.image.elfcheck import missing_libraries
from minimaldask.image.prune import SITE, prune
from minimaldask.image.recipe import (
    FLAVORS,
    LAYERS,
    NO_BYTECODE,
    NO_WHEEL,
    NUMERIC,
    WHEEL_EXCLUDE,
    Target,
    target,
    unsupported_reason,
)
from minimaldask.image.wheels import Wheel, canonical, download, resolve, unpack_wheel

__all__ = ["BuildError", "BuildOptions", "BuildResult", "build", "upstream_version"]

USER = (1000, 1000)
HOME = "/home/dask"
PREFIX = "/tmp/minimaldask"
TITLE = "minimaldask"

_COMPILE = r"""
import py_compile, sys
mode = py_compile.PycInvalidationMode.UNCHECKED_HASH
pairs = sys.stdin.read().split("\0")
for path, dfile in zip(pairs[0::2], pairs[1::2]):
    try:
        py_compile.compile(path, dfile=dfile, doraise=True, invalidation_mode=mode)
    except py_compile.PyCompileError:
        pass  # a file that is not Python 3 (a template, a sample): left as is
"""


class BuildError(MinimalDaskError):
    """The image could not be built; the message says which input is wrong."""


@dataclass
class BuildOptions:
    """Inputs of a build; the same inputs give the same image digests."""

    platforms: Sequence[str]
    python: str
    dask: str
    flavor: str = "default"
    pip: Sequence[str] = ()
    deb: Sequence[str] = ()
    compression: str = "gzip"
    debian_mirror: str | None = None
    source_date_epoch: int = 0
    source: str | None = None
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
    """The build of one platform: staging directories, one per layer."""

    def __init__(self, opts: BuildOptions, tgt: Target, work: str, mirror: str) -> None:
        self.opts = opts
        self.tgt = tgt
        self.work = work
        self.mirror = mirror
        self.stages = {name: os.path.join(work, name) for name in LAYERS}
        for path in self.stages.values():
            os.makedirs(path)
        self.archive = Archive(mirror, tgt.suite, tgt.arch, os.path.join(opts.cache_dir, "debian"))

    def run(self) -> PlatformResult:
        start = time.monotonic()
        tgt, opts = self.tgt, self.opts
        self.archive.load()
        runtime = self.archive.resolve(tgt.runtime_debs)
        have = [p.name for p in runtime]
        wheels, extras = self._wheels()
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
        paths = download(wheels, tgt, os.path.join(opts.cache_dir, "wheels"))
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
            unpack_wheel(paths[wheel.name], os.path.join(stage, SITE), os.path.join(stage, "usr"))
        self._minimaldask()
        self._system_files(runtime + numeric_debs + extra_debs, wheels)
        for stage in self.stages.values():
            prune(stage, opts.flavor)
        problems = missing_libraries(self.stages.values(), tgt.triplet)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise BuildError(f"a shared library is missing: {problems[0]}{more}")
        self._compile()
        image = self._image()
        seconds = time.monotonic() - start
        return PlatformResult(
            image,
            seconds,
            runtime + numeric_debs + extra_debs,
            {w.name: w.debian for w in wheels if w.debian},
            self.archive.signature,
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
        """Copy this minimaldask package, with metadata, into its layer."""
        import minimaldask

        stage = self.stages["minimaldask"]
        site = os.path.join(stage, SITE)
        source = os.path.dirname(minimaldask.__file__)
        shutil.copytree(
            source,
            os.path.join(site, "minimaldask"),
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )
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

    def _system_files(self, debs: list[Package], wheels: list[Wheel]) -> None:
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
            os.symlink(py, os.path.join(runtime, "usr/bin", link))
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
        }
        stage_etc = os.path.join(self.stages["minimaldask"], "etc")
        os.makedirs(stage_etc, exist_ok=True)
        with open(os.path.join(stage_etc, "minimaldask-image.json"), "w") as f:
            json.dump(record, f, indent=1, sort_keys=True)
            f.write("\n")

    def _compile(self) -> None:
        """Compile every module to bytecode that does not depend on mtimes."""
        pairs: list[tuple[str, str]] = []
        for stage in self.stages.values():
            for dirpath, dirnames, filenames in os.walk(stage):
                dirnames.sort()
                for name in sorted(filenames):
                    path = os.path.join(dirpath, name)
                    rel = os.path.relpath(path, stage)
                    if name.endswith(".py") and not rel.startswith(NO_BYTECODE):
                        pairs.append((path, "/" + rel))
        pairs.sort(key=lambda p: p[1])
        command, home = self._host_python()
        jobs = max(1, min(4, os.cpu_count() or 1))
        procs = []
        for i in range(jobs):
            chunk = pairs[i::jobs]
            data = "\0".join(x for pair in chunk for x in pair)
            proc = subprocess.Popen(
                [*command, "-c", _COMPILE],
                stdin=subprocess.PIPE,
                env={"PYTHONHOME": home},
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

    def _host_python(self) -> tuple[list[str], str]:
        """A command that runs Python ``tgt.python`` built for this machine, and its home."""
        host = host_platform()
        if host is None:
            raise BuildError(f"the builder does not run on {_platform.machine()}")
        if host == self.tgt.platform:
            root = self.stages["runtime"]
        else:
            host_tgt = target(host, self.tgt.python)
            archive = Archive(
                self.mirror,
                host_tgt.suite,
                host_tgt.arch,
                os.path.join(self.opts.cache_dir, "debian"),
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
        return self._python_command(root, self.tgt.triplet)

    def _python_command(self, root: str, triplet: str) -> tuple[list[str], str]:
        loaders = sorted(glob.glob(os.path.join(root, "usr/lib", triplet, "ld-linux*.so*")))
        if not loaders:
            raise BuildError(f"no dynamic loader in the unpacked Python at {root}")
        command = [
            loaders[0],
            "--library-path",
            os.path.join(root, "usr/lib", triplet),
            os.path.join(root, "usr/bin", f"python{self.tgt.python}"),
            "-I",
        ]
        return command, os.path.join(root, "usr")

    def _image(self) -> oci.Image:
        opts, tgt = self.opts, self.tgt
        layers, names, sizes, diff_ids, history = [], [], [], [], []
        created = _iso(opts.source_date_epoch)

        def owner(rel: str) -> tuple[int, int]:
            return USER if (rel == HOME[1:] or rel.startswith(HOME[1:] + "/")) else (0, 0)

        for name in LAYERS:
            stage = self.stages[name]
            if not any(os.scandir(stage)):
                continue
            tar = oci.layer_tar(stage, opts.source_date_epoch, owner)
            blob = oci.Blob(oci.LAYER[opts.compression], oci.compress(tar, opts.compression))
            layers.append(blob)
            names.append(name)
            sizes.append(len(tar))
            diff_ids.append(oci.Blob("", tar).digest)
            history.append({"created": created, "created_by": f"minimaldask image build: {name}"})
        labels = _labels(opts, created)
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


def _iso(epoch: int) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )


def _labels(opts: BuildOptions, created: str) -> dict[str, str]:
    labels = {
        "org.minimaldask.dask.version": opts.dask,
        "org.minimaldask.distributed.version": opts.dask,
        "org.minimaldask.python.version": opts.python,
        "org.minimaldask.flavor": opts.flavor,
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


def build(opts: BuildOptions, log: Callable[[str], None] = _log) -> BuildResult:
    """Build the image of every platform in ``opts``; return blobs and the index."""
    if opts.flavor not in FLAVORS:
        raise BuildError(f"unknown flavor {opts.flavor!r}: choose from {', '.join(FLAVORS)}")
    targets = []
    for plat in opts.platforms:
        try:
            targets.append(target(plat, opts.python))
        except ValueError as e:
            raise BuildError(str(e)) from e
        reason = unsupported_reason(plat, opts.flavor)
        if reason:
            raise BuildError(f"the {opts.flavor} flavor is not available for {plat}: {reason}")
    mirror = resolve_mirror(opts.debian_mirror)
    results = []
    for tgt in targets:
        log(f"building {tgt.platform} (Python {tgt.python} from Debian {tgt.suite})")
        with tempfile.TemporaryDirectory(prefix="minimaldask-build-") as work:
            try:
                result = _Platform(opts, tgt, work, mirror).run()
            except MinimalDaskError as e:
                raise BuildError(f"{tgt.platform}: {e}") from e
        log(f"  {tgt.platform}: Debian {tgt.suite} InRelease {result.signature}")
        for name, deb in sorted(result.from_debian.items()):
            log(f"  {tgt.platform}: {name} from Debian {tgt.suite} ({deb}): no wheel on the index")
        results.append(result)
    annotations = _labels(opts, _iso(opts.source_date_epoch))
    index = oci.index_blob([r.image for r in results], annotations)
    return BuildResult(opts, results, index, annotations)
