"""Variants of our image for bench/cold_start.py: another compression, another layer count.

A variant is named ``COMPRESSION`` or ``COMPRESSION-N``: ``gzip`` is the image as
``minimaldask image build`` makes it (its 5 layers, gzip); ``zstd`` the same layer
tars compressed with zstd (``oci.compress``, as ``image build --compression zstd``
does, at its default level, 9: the same tar bytes, so the same diff_ids); ``zstd19``
the same at level 19 (``--compression-level 19``; the tables of docs/performance.md
made before the level knob name it ``zstd``); ``gzip-rev`` the builder's layers in
the opposite order (the smallest first: containerd unpacks the layers in order, each
once downloaded, up to 3 downloading at once); ``gzip-1`` / ``zstd-4`` the same
files repacked into N layers of about equal unpacked size, in the order of the
builder's layers.

A variant is made from the gzip image in the local registry (its layers are read,
decompressed, repacked if asked, compressed and pushed under ``TAG-VARIANT``), not
built again: a build costs minutes of the 2 shared cores, and the files are the same.

Also the offline cost of decompressing each variant's layers (CPU seconds, in this
process with zlib and zstandard, with the ``gzip -dc`` / ``zstd -dc`` commands, and with
the decoders containerd 1.6 uses when no unpigz is installed, Go's compress/gzip and
klauspost/compress/zstd: bench/godecompress, built with ``go`` when it is on PATH),
which tells the unpack part of a pull apart from the link.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from minimaldask.image import oci, registry

VARIANT = re.compile(
    r"(?P<compression>gzip|zstd)(?P<level>[1-9][0-9]?)?(?:-(?P<layers>[1-9][0-9]?))?"
    r"(?P<reverse>-rev)?"
)


@dataclass(frozen=True)
class Variant:
    """A compression and a layer count (None: the builder's layers)."""

    name: str
    compression: str
    layers: int | None
    level: int | None = None  # None: the builder's default (oci.compress)
    reverse: bool = False  # the layers in the opposite order (the smallest first)


def parse_variants(text: str) -> list[Variant]:
    """``gzip,zstd,zstd-1`` as Variants; a clear error for a bad name."""
    out = []
    for name in [v.strip() for v in text.split(",") if v.strip()]:
        match = VARIANT.fullmatch(name)
        if not match:
            raise ValueError(
                f"variant {name!r}: give gzip or zstd (level 9; zstdL for level L, 1 to 22), "
                "optionally with -N for N layers of about equal size (1 to 99) and -rev for "
                "the layers in the opposite order, e.g. gzip,zstd,zstd19,zstd-1,gzip-rev"
            )
        layers = int(match["layers"]) if match["layers"] else None
        level = int(match["level"]) if match["level"] else None
        if level is not None and (match["compression"] != "zstd" or level > 22):
            raise ValueError(f"variant {name!r}: a level is for zstd only, 1 to 22 (e.g. zstd19)")
        out.append(Variant(name, match["compression"], layers, level, bool(match["reverse"])))
    if not out:
        raise ValueError("--variants is empty: give e.g. gzip,zstd")
    return out


def _members(tars: list[bytes]) -> tuple[list[tuple[tarfile.TarInfo, bytes | None]], dict]:
    """Every entry of the layers in order; a directory only once (the layers share usr/ etc.)."""
    members: list[tuple[tarfile.TarInfo, bytes | None]] = []
    dirs: dict[str, tarfile.TarInfo] = {}
    for data in tars:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for info in tar:
                if info.isdir():
                    if info.name in dirs:
                        continue
                    dirs[info.name] = info
                content = None
                if info.isreg():
                    f = tar.extractfile(info)
                    assert f is not None
                    content = f.read()
                members.append((info, content))
    return members, dirs


def repack(tars: list[bytes], count: int) -> list[bytes]:
    """The files of ``tars`` in ``count`` layers of about equal unpacked size.

    Each layer carries the entries of its files' parent directories, so that no
    directory is made by the runtime with other owners or modes than the image's.
    """
    members, dirs = _members(tars)
    total = sum(info.size for info, _ in members) or 1
    chunks: list[list[tuple[tarfile.TarInfo, bytes | None]]] = [[] for _ in range(count)]
    done = 0
    for info, content in members:
        chunks[min(count - 1, int(done * count / total))].append((info, content))
        done += info.size
    out = []
    for chunk in chunks:
        if not chunk:
            continue
        buf = io.BytesIO()
        written: set[str] = set()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for info, content in chunk:
                parts = info.name.split("/")
                for i in range(1, len(parts)):
                    parent = "/".join(parts[:i])
                    if parent in dirs and parent not in written:
                        tar.addfile(dirs[parent])
                        written.add(parent)
                if info.isdir():
                    if info.name in written:
                        continue
                    written.add(info.name)
                tar.addfile(info, None if content is None else io.BytesIO(content))
        out.append(buf.getvalue())
    return out


def _read(ref: str) -> tuple[dict, dict, dict, list[tuple[str, bytes]], registry.Reference]:
    """The index, the linux/amd64 manifest, its config and its layers (media type, bytes)."""
    parsed = registry.parse_reference(ref)
    client = registry.Client(parsed.registry, True)
    _, index = client.get_json(parsed, parsed.tag)
    entries = [m for m in index.get("manifests", []) if m["platform"]["architecture"] == "amd64"]
    if not entries:
        raise RuntimeError(f"{ref} has no linux/amd64 image")
    _, manifest = client.get_json(parsed, entries[0]["digest"])
    config = json.loads(client.get_blob(parsed, manifest["config"]["digest"]))
    layers = [(d["mediaType"], client.get_blob(parsed, d["digest"])) for d in manifest["layers"]]
    return index, manifest, config, layers, parsed


def layers_of(ref: str) -> list[oci.Blob]:
    """The compressed layers of ``ref``'s linux/amd64 image."""
    return [oci.Blob(media, data) for media, data in _read(ref)[3]]


def make_variant(base: str, variant: Variant) -> str:
    """``base`` (the gzip build, a 127.0.0.1:5000 reference) as ``variant``, pushed once."""
    if variant.name == "gzip":
        return base
    ref = f"{base}-{variant.name}"
    try:
        registry.image_digest(ref, insecure=True)
        return ref
    except registry.ImageNotFoundError:
        pass
    index, manifest, config, layers, _ = _read(base)
    tars = [oci._decompress(oci.Blob(media, data)) for media, data in layers]
    names = [h["created_by"].rsplit(": ", 1)[-1] for h in config["history"]]
    if variant.layers is not None:
        tars = repack(tars, variant.layers)
        names = [f"part{i + 1}of{len(tars)}" for i in range(len(tars))]
    if variant.reverse:  # every layer carries its own directories: the files are the same
        tars, names = tars[::-1], names[::-1]
    blobs = [oci.Blob(oci.LAYER[variant.compression], _compress(t, variant)) for t in tars]
    diff_ids = [oci.Blob("", t).digest for t in tars]
    config["rootfs"]["diff_ids"] = diff_ids
    config["history"] = [
        {"created": config["created"], "created_by": f"minimaldask image build: {name}"}
        for name in names
    ]
    image = oci.Image(
        platform="linux/amd64",
        config=oci.Blob(oci.CONFIG, oci.canonical_json(config)),
        layers=blobs,
        layer_names=names,
        uncompressed_sizes=[len(t) for t in tars],
        diff_ids=diff_ids,
        annotations=manifest.get("annotations") or {},
    )
    top = oci.index_blob([image], index.get("annotations") or {})
    registry.push(
        ref,
        sorted({b.digest: b.data for b in [image.config, *blobs]}.items()),
        [(image.manifest.digest, oci.MANIFEST, image.manifest.data)],
        (top.digest, oci.INDEX, top.data),
        insecure=True,
    )
    return ref


GO_SOURCE = Path(__file__).resolve().parent / "godecompress"


def go_decompressor() -> str | None:
    """bench/godecompress built once (cached outside the repository by its sources' hash)."""
    go = shutil.which("go")
    if go is None:
        print("go is not on PATH: the offline table has no Go (containerd's decoders) column")
        return None
    digest = hashlib.sha256()
    for name in ("main.go", "go.mod", "go.sum"):
        digest.update((GO_SOURCE / name).read_bytes())
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "minimaldask"
    binary = cache / f"godecompress-{digest.hexdigest()[:16]}"
    if not binary.exists():
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [go, "build", "-o", str(binary), "."], cwd=GO_SOURCE, check=True, timeout=600
        )
    return str(binary)


def _compress(tar: bytes, variant: Variant) -> bytes:
    return oci.compress(tar, variant.compression, variant.level)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def decompression(ref: str, repeat: int = 3, go: str | None = None) -> dict[str, Any]:
    """Sizes of ``ref``'s layers and the CPU seconds to decompress them all (medians).

    ``go``: the bench/godecompress binary (``go_decompressor()``), or None for no Go figure.
    """
    layers = layers_of(ref)
    compressed = sum(len(b.data) for b in layers)
    tars = [oci._decompress(b) for b in layers]
    unpacked = sum(len(t) for t in tars)
    in_process, cli = [], []
    command = {"gzip": ["gzip", "-dc"], "zstd": ["zstd", "-dcq"]}
    with tempfile.TemporaryDirectory(prefix="coldstart-") as tmp:
        paths = []
        for i, blob in enumerate(layers):
            path = f"{tmp}/{i}"
            with open(path, "wb") as f:
                f.write(blob.data)
            paths.append((path, blob.media_type.rsplit("+", 1)[-1]))
        for _ in range(repeat):
            t = time.process_time()
            for blob in layers:
                oci._decompress(blob)
            in_process.append(time.process_time() - t)
            before = _children_cpu()
            for path, kind in paths:
                if shutil.which(command[kind][0]) is None:
                    break
                with open(path, "rb") as f:
                    subprocess.run(
                        command[kind], stdin=f, stdout=subprocess.DEVNULL, check=True, timeout=300
                    )
            else:
                cli.append(_children_cpu() - before)
        go_cpu = None
        if go is not None:
            out = subprocess.run(
                [go, "-repeat", str(repeat), *(p for p, _ in paths)],
                capture_output=True,
                text=True,
                check=True,
                timeout=600,
            )
            go_cpu = round(statistics.median(json.loads(out.stdout)["cpu_s"]), 3)
    return {
        "layers": len(layers),
        "compressed_bytes": compressed,
        "unpacked_bytes": unpacked,
        "decompress_cpu_s": round(statistics.median(in_process), 3),
        "decompress_cli_cpu_s": round(statistics.median(cli), 3) if cli else None,
        "decompress_go_cpu_s": go_cpu,
        "repeat": repeat,
    }
