"""``minimaldask image build``: the command line of the image builder.

``register(subparsers)`` adds the ``image`` command to the ``minimaldask``
command; ``python -m minimaldask.image build ...`` runs it on its own.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import sys
from collections.abc import Sequence

from minimaldask import config
from minimaldask.exceptions import MinimalDaskError
from minimaldask.image import oci, registry
from minimaldask.image.builder import BuildOptions, BuildResult, build, host_platform
from minimaldask.image.recipe import FLAVORS, PLATFORMS, PYTHONS, STANDALONE_SUITE, target

__all__ = ["main", "register", "run_build"]


def _default_python() -> str:
    """The running Python's version: an image must match its client (target() checks it)."""
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def _mirror_setting() -> str | None:
    """``MINIMALDASK_DEBIAN_MIRROR``, else dask config ``minimaldask.image.debian-mirror``."""
    value = os.environ.get("MINIMALDASK_DEBIAN_MIRROR") or config.get("image.debian-mirror")
    return str(value) if value else None


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    """Add ``image build`` to a ``minimaldask`` argument parser's subcommands."""
    image: argparse.ArgumentParser = subparsers.add_parser(
        "image", help="build the minimaldask container image"
    )
    image_sub = image.add_subparsers(dest="image_command", required=True)
    p = image_sub.add_parser(
        "build",
        help="build the image for one or more platforms (no Docker, no emulation)",
        description="Build the minimaldask image from Debian packages and wheels.",
    )
    p.add_argument(
        "--platform",
        action="append",
        help=f"target platform, repeatable or comma-separated: {', '.join(PLATFORMS)}"
        " (default: this machine's)",
    )
    p.add_argument(
        "--python",
        default=None,
        help="Python version: "
        + ", ".join(f"{v} (Debian {s})" for v, s in PYTHONS.items())
        + "; default: this Python's (3.13 when linux/arm/v7 is asked for); with --python-from:"
        " its version",
    )
    p.add_argument(
        "--python-from",
        action="append",
        default=[],
        metavar="PATH",
        help="a relocatable CPython for a platform (an install prefix, or an archive with"
        " python/bin/python3.X as the standalone CPython builds have), for a Python that no"
        f" Debian suite ships; repeat for more platforms. Libraries from Debian {STANDALONE_SUITE}",
    )
    p.add_argument(
        "--lock",
        metavar="FILE",
        help="rebuild with the wheels of FILE (an image's /etc/minimaldask-image.lock, or"
        " --write-lock), downloaded with pip --require-hashes",
    )
    p.add_argument("--write-lock", metavar="FILE", help="write the build's lock file to FILE")
    p.add_argument(
        "--ignore-valid-until",
        action="store_true",
        help="accept a Debian InRelease past its Valid-Until (a frozen snapshot mirror); the"
        " build says so. Without it an expired index is refused",
    )
    p.add_argument(
        "--debian-keyring",
        metavar="FILE",
        help="the Debian archive keyring (default: $MINIMALDASK_DEBIAN_KEYRING, else"
        " /usr/share/keyrings/debian-archive-keyring.gpg from the debian-archive-keyring package)",
    )
    p.add_argument("--dask", help="dask and distributed version (default: the installed one)")
    p.add_argument("--flavor", default="default", choices=sorted(FLAVORS))
    p.add_argument("--pip", nargs="+", default=[], metavar="PKG", help="extra Python packages")
    p.add_argument("--deb", nargs="+", default=[], metavar="PKG", help="extra Debian packages")
    p.add_argument("--compression", choices=["gzip", "zstd"], default="gzip")
    p.add_argument(
        "--compression-level",
        type=int,
        metavar="N",
        help="gzip 1 to 9 (default 9), zstd 1 to 22 (default 9; 19 is 13%% smaller and"
        " takes 20 times the CPU)",
    )
    p.add_argument("--output", metavar="DIR", help="write an OCI image layout to DIR")
    p.add_argument("--docker-archive", metavar="FILE", help="write a tar for 'docker load'")
    p.add_argument(
        "--rootfs",
        metavar="DIR",
        help="unpack the image's files into DIR (for a Dockerfile's FROM scratch stage)",
    )
    p.add_argument(
        "--push",
        action="append",
        default=[],
        metavar="REF",
        help="push to a registry (repeatable for more tags): host[:port]/repository:tag",
    )
    p.add_argument("--insecure", action="store_true", help="push over plain http")
    p.add_argument("--tag", help="name:tag recorded in --output and --docker-archive")
    p.add_argument("--debian-mirror", metavar="URL", help="Debian archive (default: apt's)")
    p.add_argument("--source", metavar="URL", help="org.opencontainers.image.source")
    p.set_defaults(func=run_build)
    return image


def _platforms(values: Sequence[str] | None) -> list[str]:
    if not values:
        host = host_platform()
        return [host] if host else ["linux/amd64"]
    out: list[str] = []
    for value in values:
        out += [v.strip() for v in value.split(",") if v.strip()]
    return list(dict.fromkeys(out))


def _mb(n: int) -> str:
    return f"{n / 1e6:8.2f} MB"


def print_table(result: BuildResult) -> None:
    """Print the layers and their sizes per platform, and the digests."""
    for plat in result.platforms:
        img = plat.image
        print(f"\n{img.platform}  (built in {plat.seconds:.1f} s)")
        print(f"  Python {result.options.python}: {plat.python_source}")
        print(f"  {'layer':<12} {'compressed':>11} {'unpacked':>11}  digest")
        for name, blob, size in zip(
            img.layer_names, img.layers, img.uncompressed_sizes, strict=False
        ):
            print(f"  {name:<12} {_mb(len(blob.data))} {_mb(size)}  {blob.digest[:19]}")
        total = sum(img.uncompressed_sizes)
        print(f"  {'total':<12} {_mb(plat.compressed)} {_mb(total)}")
        print(f"  manifest {img.manifest.digest}")
        for name, deb in sorted(plat.from_debian.items()):
            print(f"  {name}: Debian {deb} (no wheel for {img.platform} on the index)")
    print(f"\nlock sha256:{result.lock.sha256}")
    print(f"index {result.digest}  ({result.tag})")


def run_build(args: argparse.Namespace) -> int:
    """Run ``image build`` with parsed arguments; return the exit status."""
    standalone = bool(args.python_from)
    platforms = [] if standalone and not args.platform else _platforms(args.platform)
    if standalone:
        python = args.python or ""
    else:
        python = args.python or ("3.13" if "linux/arm/v7" in platforms else _default_python())
    try:
        for plat in platforms:
            # An unknown platform or Python fails before anything else.
            target(plat, python or "3", standalone=standalone)
        dask_version = args.dask or importlib.metadata.version("dask")
        for ref in args.push:
            registry.check(ref, insecure=args.insecure)
        if (args.docker_archive or args.rootfs) and len(platforms or args.python_from) != 1:
            raise MinimalDaskError(
                "--docker-archive and --rootfs hold one platform: pass exactly one --platform"
            )
        opts = BuildOptions(
            platforms=platforms,
            python=python,
            dask=dask_version,
            flavor=args.flavor,
            pip=args.pip,
            deb=args.deb,
            compression=args.compression,
            compression_level=args.compression_level,
            debian_mirror=args.debian_mirror or _mirror_setting(),
            source_date_epoch=int(os.environ.get("SOURCE_DATE_EPOCH", "0")),
            source=args.source,
            python_from=args.python_from,
            lock=args.lock,
            keyring=args.debian_keyring,
            ignore_valid_until=args.ignore_valid_until,
        )
        result = build(opts)
        if args.write_lock:
            with open(args.write_lock, "w") as f:
                f.write(result.lock.text())
        tag = args.tag or f"{config.get('image.repository')}:{result.tag}"
        if args.output:
            oci.write_layout(args.output, [p.image for p in result.platforms], result.index, tag)
        if args.docker_archive:
            oci.write_docker_archive(args.docker_archive, result.platforms[0].image, [tag])
        if args.rootfs:
            oci.write_rootfs(args.rootfs, result.platforms[0].image)
        for ref in args.push:
            _push(ref, result, args.insecure)
    except (MinimalDaskError, ValueError) as e:
        print(f"minimaldask image build: error: {e}", file=sys.stderr)
        return 1
    print_table(result)
    for path in filter(None, [args.output, args.docker_archive, args.rootfs, args.write_lock]):
        print(f"wrote {path}")
    return 0


def _push(ref: str, result: BuildResult, insecure: bool) -> None:
    blobs = {}
    manifests = []
    for plat in result.platforms:
        img = plat.image
        for blob in [img.config, *img.layers]:
            blobs[blob.digest] = blob.data
        manifests.append((img.manifest.digest, oci.MANIFEST, img.manifest.data))
    sent = registry.push(
        ref,
        sorted(blobs.items()),
        manifests,
        (result.index.digest, oci.INDEX, result.index.data),
        insecure=insecure,
    )
    print(f"pushed {ref} ({sent} of {len(blobs)} blobs uploaded)")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m minimaldask.image``."""
    parser = argparse.ArgumentParser(prog="python -m minimaldask.image")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    # Accept both "python -m minimaldask.image build" and "... image build".
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] != ["image"]:
        args_list = ["image", *args_list]
    args = parser.parse_args(args_list)
    status: int = args.func(args)
    return status
