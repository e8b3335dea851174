"""Python packages for a foreign platform: resolved and downloaded by pip, unpacked here.

pip runs with ``--platform``/``--python-version``/``--only-binary`` so that it
picks wheels for the target, never builds anything, and uses whatever index
pip is configured with. Where PyPI has no wheel for the target, a stand-in
wheel of the Debian build's version tells pip's resolver that the
requirement is met, and the builder unpacks the Debian package instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass

from minimaldask.exceptions import MinimalDaskError
from minimaldask.image.recipe import DEBIAN_FALLBACK, Target

__all__ = [
    "Wheel",
    "WheelError",
    "canonical",
    "download",
    "download_locked",
    "file_sha256",
    "resolve",
    "unpack_wheel",
]


class WheelError(MinimalDaskError):
    """pip could not find wheels for the target platform."""


@dataclass(frozen=True)
class Wheel:
    """One resolved distribution: a wheel to download, or a Debian stand-in."""

    name: str
    version: str
    url: str
    debian: str | None = None
    #: sha256 the index published for the file, when it did.
    sha256: str | None = None


def canonical(name: str) -> str:
    """Normalise a distribution name (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _pip_target_args(target: Target) -> list[str]:
    args = ["--only-binary", ":all:", "--implementation", "cp"]
    args += ["--python-version", target.python]
    abi = "cp" + target.python.replace(".", "")
    args += ["--abi", abi, "--abi", "abi3", "--abi", "none"]
    for tag in target.wheel_platforms:
        args += ["--platform", tag]
    return args


def _stub_wheel(directory: str, name: str, version: str) -> None:
    """Write an empty wheel that stands for a distribution Debian provides."""
    dist = re.sub(r"[-.]+", "_", canonical(name))
    path = os.path.join(directory, f"{dist}-{version}-py3-none-any.whl")
    info = f"{dist}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(
            f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        )
        zf.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        zf.writestr(f"{info}/RECORD", "")


def _missing(stderr: str) -> str | None:
    match = re.search(r"No matching distribution found for ([A-Za-z0-9_.\-]+)", stderr)
    return canonical(match.group(1)) if match else None


def resolve(
    requirements: Iterable[str],
    target: Target,
    debian_versions: dict[str, str],
    use_debian: Iterable[str] = (),
) -> list[Wheel]:
    """Resolve requirements to wheels for ``target`` with pip's resolver.

    ``debian_versions`` maps Debian package names to upstream versions, for
    the fallback. Distributions in ``use_debian`` are taken from Debian from
    the start; others are when pip reports that no wheel exists.
    """
    requirements = list(requirements)
    from_debian = {canonical(n) for n in use_debian}
    with tempfile.TemporaryDirectory(prefix="minimaldask-pip-") as tmp:
        while True:
            stubs = os.path.join(tmp, "stubs")
            os.makedirs(stubs, exist_ok=True)
            for name in from_debian:
                _stub_wheel(stubs, name, debian_versions[DEBIAN_FALLBACK[name]])
            report = os.path.join(tmp, "report.json")
            cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed"]
            cmd += ["--quiet", "--report", report, "--target", os.path.join(tmp, "t")]
            cmd += ["--find-links", stubs, *_pip_target_args(target), *requirements]
            for name in sorted(from_debian):
                cmd += ["--constraint", _constraint(tmp, name, debian_versions)]
            result = subprocess.run(cmd, capture_output=True, text=True)
            if result.returncode == 0:
                break
            missing = _missing(result.stderr)
            if missing is None or missing in from_debian:
                last = [ln for ln in result.stderr.splitlines() if ln.startswith("ERROR")]
                raise WheelError(_pip_error(last, result.stderr, target))
            debian_name = DEBIAN_FALLBACK.get(missing)
            if debian_name is None or debian_name not in debian_versions:
                raise WheelError(
                    f"no wheel of {missing!r} for {target.platform} and Python {target.python}"
                    " on the package index, and no Debian build of it"
                    f" in {target.suite}/{target.arch}"
                )
            from_debian.add(missing)
        with open(report) as f:
            installs = json.load(f)["install"]
    wheels = []
    for item in installs:
        meta = item["metadata"]
        name = canonical(meta["name"])
        debian = DEBIAN_FALLBACK[name] if name in from_debian else None
        info = item["download_info"]
        sha256 = (info.get("archive_info") or {}).get("hashes", {}).get("sha256")
        wheels.append(Wheel(name, meta["version"], info["url"], debian, sha256))
    return sorted(wheels, key=lambda w: w.name)


def _constraint(tmp: str, name: str, debian_versions: dict[str, str]) -> str:
    path = os.path.join(tmp, f"constraint-{name}.txt")
    with open(path, "w") as f:
        f.write(f"{name}=={debian_versions[DEBIAN_FALLBACK[name]]}\n")
    return path


def _pip_error(errors: list[str], stderr: str, target: Target) -> str:
    text = " ".join(errors) or (stderr.strip().splitlines() or [""])[-1]
    if "No matching distribution" in text:
        return (
            f"no wheel for {target.platform} and Python {target.python} on the package index:"
            f" {text.removeprefix('ERROR: ')}"
        )
    return f"pip could not resolve the Python packages for {target.platform}: {text}"


def download(wheels: Iterable[Wheel], target: Target, dest: str) -> dict[str, str]:
    """Download the wheels (pip reuses files already in ``dest``); return name -> path."""
    wanted = [w for w in wheels if w.debian is None]
    if not wanted:
        return {}
    os.makedirs(dest, exist_ok=True)
    # A file already here with the digest the index publishes needs no request.
    fetch = [w for w in wanted if not _cached(dest, w)]
    if fetch:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", dest]
        cmd += [*_pip_target_args(target), *(f"{w.name}=={w.version}" for w in fetch)]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise WheelError(
                "pip could not download the wheels: " + result.stderr.strip().splitlines()[-1]
            )
    paths = {}
    for w in wanted:
        filename = os.path.basename(w.url.split("#")[0])
        path = os.path.join(dest, filename)
        if not os.path.exists(path):
            raise WheelError(f"pip did not download {filename}")
        if w.sha256 and file_sha256(path) != w.sha256:
            raise WheelError(
                f"{filename}: sha256 {file_sha256(path)} differs from the index's {w.sha256}"
            )
        paths[w.name] = path
    return paths


def _cached(dest: str, wheel: Wheel) -> bool:
    path = os.path.join(dest, os.path.basename(wheel.url.split("#")[0]))
    return bool(wheel.sha256) and os.path.exists(path) and file_sha256(path) == wheel.sha256


def file_sha256(path: str) -> str:
    """sha256 (hex) of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download_locked(
    wanted: Iterable[tuple[str, str, list[str]]], target: Target, dest: str
) -> dict[str, str]:
    """Download ``(name, version, sha256 digests)`` with pip's ``--require-hashes``.

    pip picks each distribution's wheel for the target among those whose
    digest is listed and refuses any other. Returns name -> path.
    """
    wanted = list(wanted)
    if not wanted:
        return {}
    os.makedirs(dest, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="minimaldask-lock-") as tmp:
        requirements = os.path.join(tmp, "requirements.txt")
        with open(requirements, "w") as f:
            for name, version, digests in wanted:
                hashes = " ".join(f"--hash=sha256:{d}" for d in digests)
                f.write(f"{name}=={version} {hashes}\n")
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", dest]
        cmd += ["--require-hashes", *_pip_target_args(target), "-r", requirements]
        result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        lines = [ln.strip() for ln in result.stderr.splitlines() if ln.strip()]
        first = next((i for i, ln in enumerate(lines) if ln.startswith("ERROR")), len(lines) - 1)
        raise WheelError(
            f"pip could not download the locked wheels for {target.platform}: "
            + " ".join(lines[first:])
        )
    by_digest: dict[str, str] = {}
    for filename in sorted(os.listdir(dest)):
        if filename.endswith(".whl"):
            by_digest.setdefault(file_sha256(os.path.join(dest, filename)), filename)
    paths = {}
    for name, version, digests in wanted:
        found = [by_digest[d] for d in digests if d in by_digest]
        prefix = re.sub(r"[-.]+", "_", name).lower() + "-" + version + "-"
        mine = [f for f in found if f.lower().startswith(prefix)]
        if not mine:
            raise WheelError(f"pip downloaded no wheel of {name}=={version} with a locked digest")
        best = _best(mine, target)
        if best is None:
            raise WheelError(f"no locked wheel of {name}=={version} is for {target.platform}")
        paths[name] = os.path.join(dest, best)
    return paths


def _best(filenames: list[str], target: Target) -> str | None:
    """The wheel pip would take for ``target`` (its most specific platform tag), if any fits."""
    tags = [*target.wheel_platforms, "any"]

    def rank(filename: str) -> int:
        platforms = filename[: -len(".whl")].split("-")[-1].split(".")
        return min((tags.index(p) for p in platforms if p in tags), default=len(tags))

    fitting = [f for f in filenames if rank(f) < len(tags)]
    return min(fitting, key=lambda f: (rank(f), f)) if fitting else None


def unpack_wheel(path: str, site: str, data_root: str) -> str:
    """Unpack a wheel into ``site`` (its ``.data/data`` into ``data_root``); return its version.

    Scripts and headers are not installed: the image starts Python modules
    with ``python -m``.
    """
    with zipfile.ZipFile(path) as zf:
        version = ""
        for info in sorted(zf.infolist(), key=lambda i: i.filename):
            name = info.filename
            if name.endswith("/"):
                continue
            head, _, rest = name.partition("/")
            if head.endswith(".data"):
                kind, _, rel = rest.partition("/")
                if kind in ("purelib", "platlib"):
                    dest = os.path.join(site, rel)
                elif kind == "data":
                    dest = os.path.join(data_root, rel)
                else:
                    continue
            else:
                dest = os.path.join(site, name)
                if head.endswith(".dist-info") and not version:
                    version = head[: -len(".dist-info")].rpartition("-")[2]
            if ".." in name.split("/") or name.startswith("/"):
                raise WheelError(f"unsafe path {name!r} in {os.path.basename(path)}")
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with zf.open(info) as src, open(dest, "wb") as out:
                out.write(src.read())
            mode = (info.external_attr >> 16) & 0o777
            os.chmod(dest, 0o755 if mode & 0o111 else 0o644)
        return version
