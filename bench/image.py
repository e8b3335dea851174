"""Benchmark of the image builder: sizes and build times, against a conventional image.

    .venv/bin/python bench/image.py [--platform P ...] [--flavor F ...] [--no-conventional]

Writes bench/results/image.json and prints a table:
- for each platform and flavor: build time, and per layer the compressed
  (gzip) and unpacked sizes;
- the import time of `distributed` + `dask.array` in the amd64 image, with the
  image's bytecode and without it (PYTHONPYCACHEPREFIX on an empty tmpfs, the
  way a read-only root without bytecode behaves);
- a conventional image built the usual way, for comparison: a Debian base
  with `pip install "dask[complete]"` run inside Docker. No base image can be
  pulled here, so the Debian base is made locally with debootstrap and
  `docker import` (tools/image/debian-base.sh); its compressed size is the
  sum of its layers gzipped at level 9, as a registry would store them.
"""

import argparse
import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import dask

from minimaldask.image import oci
from minimaldask.image.builder import BuildOptions, build
from minimaldask.image.recipe import PLATFORMS, unsupported_reason

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
EPOCH = 1700000000


def python_for(platform):
    return "3.13" if platform == "linux/arm/v7" else "3.11"


def bench_builder(platform, flavor):
    opts = BuildOptions(
        platforms=[platform],
        python=python_for(platform),
        dask=dask.__version__,
        flavor=flavor,
        source_date_epoch=EPOCH,
    )
    start = time.monotonic()
    result = build(opts, log=lambda _: None)
    seconds = time.monotonic() - start
    plat = result.platforms[0]
    img = plat.image
    layers = [
        {"layer": name, "compressed": len(blob.data), "unpacked": size}
        for name, blob, size in zip(
            img.layer_names, img.layers, img.uncompressed_sizes, strict=True
        )
    ]
    return {
        "platform": platform,
        "flavor": flavor,
        "python": opts.python,
        "build_seconds": round(seconds, 1),
        "compressed": sum(x["compressed"] for x in layers),
        "unpacked": sum(x["unpacked"] for x in layers),
        "layers": layers,
        "from_debian": plat.from_debian,
        "digest": result.digest,
    }, result


def import_times(result):
    """Seconds to import distributed + dask.array in the image, with and without bytecode."""
    with tempfile.TemporaryDirectory() as tmp:
        archive = os.path.join(tmp, "image.tar")
        oci.write_docker_archive(archive, result.platforms[0].image, ["minimaldask-bench:amd64"])
        subprocess.run(["docker", "load", "-i", archive], check=True, capture_output=True)
    code = (
        "import time; t = time.perf_counter(); import distributed, dask.array; "
        "print(time.perf_counter() - t)"
    )
    out = {}
    for label, env in (("bytecode", []), ("no bytecode", ["-e", "PYTHONPYCACHEPREFIX=/tmp/pyc"])):
        runs = []
        for _ in range(3):
            proc = subprocess.run(
                ["docker", "run", "--rm", "--read-only", "--tmpfs", "/tmp", *env,
                 "--entrypoint", "/usr/bin/python3", "minimaldask-bench:amd64", "-c", code],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            runs.append(float(proc.stdout.strip()))
        out[label] = round(min(runs), 2)
    return out


def conventional(dask_version):
    """A Debian base + `pip install dask[complete]` built by Docker; sizes and build time."""
    subprocess.run(["bash", str(REPO / "tools/image/debian-base.sh")], check=True)
    dockerfile = (
        "FROM minimaldask-debian-base:bookworm\n"
        "RUN python3 -m venv /opt/dask && /opt/dask/bin/pip install --no-cache-dir"
        f' "dask[complete]=={dask_version}"\n'
        'ENTRYPOINT ["/opt/dask/bin/dask"]\n'
    )
    tag = "minimaldask-bench:conventional"
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "Dockerfile").write_text(dockerfile)
        start = time.monotonic()
        subprocess.run(
            ["docker", "build", "--no-cache", "--network", "host", "-t", tag, tmp],
            check=True, capture_output=True,
        )  # fmt: skip
        seconds = time.monotonic() - start
        saved = os.path.join(tmp, "saved.tar")
        subprocess.run(["docker", "save", "-o", saved, tag], check=True)
        layers = []
        with tarfile.open(saved) as tar:
            manifest = json.load(tar.extractfile("manifest.json"))
            for i, name in enumerate(manifest[0]["Layers"]):
                data = tar.extractfile(name).read()
                buf = io.BytesIO()
                with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9, mtime=0) as gz:
                    gz.write(data)
                label = "debian base" if i == 0 else "pip install dask[complete]"
                layers.append(
                    {"layer": label, "compressed": len(buf.getvalue()), "unpacked": len(data)}
                )
    return {
        "platform": "linux/amd64",
        "flavor": "conventional: Debian bookworm + pip install dask[complete]",
        "python": "3.11",
        "build_seconds": round(seconds, 1),
        "compressed": sum(x["compressed"] for x in layers),
        "unpacked": sum(x["unpacked"] for x in layers),
        "layers": layers,
        "how": "base: debootstrap --variant=minbase bookworm + python3-pip, docker import",
    }


def mb(n):
    return f"{n / 1e6:7.1f}"


def table(rows, imports):
    lines = [
        f"{'platform':<14}{'flavor':<13}{'python':<7}{'build s':>8}{'gzip MB':>9}{'unpacked MB':>12}"
    ]
    for r in rows:
        flavor = r["flavor"] if len(r["flavor"]) < 13 else "conventional"
        lines.append(
            f"{r['platform']:<14}{flavor:<13}{r['python']:<7}{r['build_seconds']:>8}"
            f"{mb(r['compressed']):>9}{mb(r['unpacked']):>12}"
        )
        for layer in r["layers"]:
            lines.append(
                f"{'':<16}{layer['layer']:<32}{mb(layer['compressed']):>9}{mb(layer['unpacked']):>12}"
            )
    if imports:
        lines.append(
            "import distributed + dask.array (amd64, read-only root): "
            + ", ".join(f"{k} {v} s" for k, v in imports.items())
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--platform", action="append", default=None)
    parser.add_argument("--flavor", action="append", default=None)
    parser.add_argument("--no-conventional", action="store_true")
    args = parser.parse_args()
    rows, imports = [], {}
    for platform in args.platform or list(PLATFORMS):
        for flavor in args.flavor or ["default", "dataframe"]:
            reason = unsupported_reason(platform, flavor)
            if reason:
                print(f"{platform} {flavor}: not built ({reason})", file=sys.stderr)
                continue
            row, result = bench_builder(platform, flavor)
            rows.append(row)
            print(f"{platform} {flavor}: {row['build_seconds']} s, {mb(row['compressed'])} MB",
                  file=sys.stderr)  # fmt: skip
            if platform == "linux/amd64" and flavor == "default":
                imports = import_times(result)
    if not args.no_conventional:
        rows.append(conventional(dask.__version__))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"dask": dask.__version__, "images": rows, "import_seconds_amd64": imports}
    (RESULTS / "image.json").write_text(json.dumps(out, indent=1) + "\n")
    text = table(rows, imports)
    (RESULTS / "image.txt").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
