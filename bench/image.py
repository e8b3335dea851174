"""Benchmark of the image builder: build time of all platforms in one run, and the size table.

    .venv/bin/python bench/image.py [--runs N] [--no-conventional] [--update-docs]
                                    [--ignore-valid-until]

Writes bench/results/image.json and bench/results/image.txt, and prints:
- the build of linux/amd64, linux/arm64 and linux/arm/v7 in one run (Python
  3.13, default flavor), ``--runs`` times (default 2: the first fills the
  download caches if they are cold, the others are warm), with the seconds of
  each phase per platform; goal: <= 120 s for the three with warm caches;
- the size of every image CI publishes, a row per Python and platform
  (3.11, 3.13 and 3.14 from Debian; 3.12 from --python-from, with this
  machine's pyenv CPython as tests/pythonfrom.py packs it; no standalone
  archive can be downloaded here), and the dataframe flavor;
- the import time of `distributed` + `dask.array` in the amd64 image, with the
  image's bytecode and without it (PYTHONPYCACHEPREFIX on an empty tmpfs);
- a conventional image (Debian + `pip install dask[complete]` run by Docker)
  for comparison, unless --no-conventional.

``--update-docs`` rewrites the size table of docs/image.md (between its
``bench/image.py`` markers) from this run. ``--ignore-valid-until`` is for a
Debian mirror that serves a frozen snapshot (this machine's: forky's
InRelease is past its Valid-Until); the table says so.
"""

import argparse
import gzip
import io
import json
import os
import platform as _platform
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import dask

from minimaldask.image import oci
from minimaldask.image.builder import BuildOptions, build
from minimaldask.image.recipe import PLATFORMS, PYTHONS

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from pythonfrom import standalone_archive  # noqa: E402

RESULTS = REPO / "bench" / "results"
DOCS = REPO / "docs" / "image.md"
EPOCH = 1700000000
ALL = list(PLATFORMS)
#: Goals of issue 14: the default amd64 image, the dataframe flavor, three platforms' build.
GOALS = {"default": 40e6, "dataframe": 90e6, "three platforms seconds": 120}


def options(platforms, python, flavor="default", python_from=(), ignore_valid_until=False):
    return BuildOptions(
        platforms=platforms,
        python=python,
        dask=dask.__version__,
        flavor=flavor,
        source_date_epoch=EPOCH,
        python_from=python_from,
        ignore_valid_until=ignore_valid_until,
    )


def run_build(opts):
    start = time.monotonic()
    result = build(opts, log=lambda line: print("  " + line, file=sys.stderr))
    return result, time.monotonic() - start


def rows_of(result):
    out = []
    for plat in result.platforms:
        img = plat.image
        layers = [
            {"layer": name, "compressed": len(blob.data), "unpacked": size}
            for name, blob, size in zip(
                img.layer_names, img.layers, img.uncompressed_sizes, strict=True
            )
        ]
        out.append({
            "platform": img.platform,
            "flavor": result.options.flavor,
            "python": result.options.python,
            "python_source": plat.python_source,
            "build_seconds": round(plat.seconds, 1),
            "phases": {k: round(v, 1) for k, v in plat.phases.items()},
            "compressed": sum(x["compressed"] for x in layers),
            "unpacked": sum(x["unpacked"] for x in layers),
            "layers": layers,
            "from_debian": plat.from_debian,
        })  # fmt: skip
    return out


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
    runs = {"bytecode": [], "no bytecode": []}
    for _ in range(3):  # alternating, the machine is noisy
        for label, env in (
            ("bytecode", []),
            ("no bytecode", ["-e", "PYTHONPYCACHEPREFIX=/tmp/pyc"]),
        ):
            proc = subprocess.run(
                ["docker", "run", "--rm", "--read-only", "--tmpfs", "/tmp", *env,
                 "--entrypoint", "/usr/bin/python3", "minimaldask-bench:amd64", "-c", code],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            runs[label].append(float(proc.stdout.strip()))
    for label, values in runs.items():
        out[label] = round(statistics.median(values), 2)
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
        "flavor": "conventional",
        "python": "3.11",
        "python_source": "Debian bookworm + pip install dask[complete] in Docker",
        "build_seconds": round(seconds, 1),
        "compressed": sum(x["compressed"] for x in layers),
        "unpacked": sum(x["unpacked"] for x in layers),
        "layers": layers,
    }


def mb(n):
    return f"{n / 1e6:.1f}"


def size_table(rows):
    lines = [
        f"{'platform':<14}{'flavor':<14}{'python':<8}{'gzip MB':>9}{'unpacked MB':>13}{'build s':>9}  Python from"
    ]
    for r in rows:
        lines.append(
            f"{r['platform']:<14}{r['flavor']:<14}{r['python']:<8}{mb(r['compressed']):>9}"
            f"{mb(r['unpacked']):>13}{r['build_seconds']:>9}  {r['python_source']}"
        )
        for layer in r["layers"]:
            lines.append(
                f"{'':<16}{layer['layer']:<30}{mb(layer['compressed']):>9}{mb(layer['unpacked']):>13}"
            )
    return "\n".join(lines)


def three_table(runs):
    lines = ["three platforms in one run (Python 3.13, default flavor):"]
    for i, run in enumerate(runs, 1):
        phases = {}
        for row in run["platforms"]:
            for k, v in row["phases"].items():
                phases[k] = phases.get(k, 0) + v
        spent = ", ".join(f"{k} {v:.0f}" for k, v in phases.items())
        lines.append(f"  run {i}: {run['seconds']:.1f} s  ({spent})")
    return "\n".join(lines)


def short_source(text):
    """``... archive sha256:<64 hex>`` with the digest cut to 12 digits."""
    return re.sub(r"sha256:([0-9a-f]{12})[0-9a-f]{52}", r"sha256:\1…", text)


def markdown(rows, note, machine):
    out = [
        f"`bench/image.py`, {time.strftime('%Y-%m-%d')}, {machine}, dask {dask.__version__}{note}:",
        "",
        "| platform | flavor | Python | from | compressed | unpacked | build |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['platform']} | {r['flavor']} | {r['python']} | {short_source(r['python_source'])} |"
            f" {mb(r['compressed'])} MB | {mb(r['unpacked'])} MB | {r['build_seconds']:.0f} s |"
        )
    return "\n".join(out)


def update_docs(text):
    doc = DOCS.read_text()
    new, n = re.subn(
        r"(<!-- bench/image.py sizes -->\n).*?(\n<!-- end bench/image.py sizes -->)",
        lambda m: m.group(1) + text + m.group(2),
        doc,
        flags=re.S,
    )
    if n != 1:
        raise SystemExit("docs/image.md has no '<!-- bench/image.py sizes -->' markers")
    DOCS.write_text(new)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2, help="runs of the three-platform build")
    parser.add_argument("--no-conventional", action="store_true")
    parser.add_argument("--update-docs", action="store_true")
    parser.add_argument("--ignore-valid-until", action="store_true")
    parser.add_argument(
        "--from-json", action="store_true", help="build nothing: render results/image.json again"
    )
    args = parser.parse_args()
    if args.from_json:
        out = json.loads((RESULTS / "image.json").read_text())
        note = (
            " (forky's InRelease past its Valid-Until on this machine's snapshot mirror: accepted)"
        )
        rows = [r for r in out["images"] if r["flavor"] != "conventional"]
        table = markdown(rows, note if out.get("ignore_valid_until") else "", out["machine"])
        print(table)
        if args.update_docs:
            update_docs(table)
        return
    ivu = args.ignore_valid_until
    runs = []
    for i in range(args.runs):
        print(f"three platforms, run {i + 1}", file=sys.stderr)
        result, seconds = run_build(options(ALL, "3.13"))
        print(f"three platforms, run {i + 1}: {seconds:.1f} s", file=sys.stderr)
        runs.append({"seconds": round(seconds, 1), "platforms": rows_of(result)})
    rows = list(runs[-1]["platforms"])
    print("import times (amd64, 3.13)", file=sys.stderr)
    imports = import_times(result)
    for python in sorted(PYTHONS):
        if python == "3.13":
            continue
        platforms = [p for p in ALL if python in PLATFORMS[p][3]]
        print(f"Python {python}: {', '.join(platforms)}", file=sys.stderr)
        rows += rows_of(run_build(options(platforms, python, ignore_valid_until=ivu))[0])
    print("Python 3.12 from --python-from (pyenv's CPython, packed)", file=sys.stderr)
    archive = str(standalone_archive("3.12"))
    rows += rows_of(run_build(options(["linux/amd64"], "", python_from=[archive]))[0])
    print("dataframe flavor", file=sys.stderr)
    rows += rows_of(run_build(options(["linux/amd64", "linux/arm64"], "3.11", "dataframe"))[0])
    rows.sort(
        key=lambda r: (
            r["flavor"] != "default",
            [int(x) for x in r["python"].split(".")],
            ALL.index(r["platform"]),
        )
    )
    if not args.no_conventional:
        rows.append(conventional(dask.__version__))
    machine = f"{os.cpu_count()} cores, {_platform.machine()}"
    note = (
        " (forky's InRelease past its Valid-Until on this machine's snapshot mirror: accepted)"
        if ivu
        else ""
    )
    warm = min(r["seconds"] for r in runs[1:]) if len(runs) > 1 else runs[0]["seconds"]
    out = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine,
        "dask": dask.__version__,
        "three_platforms": {
            "runs": runs,
            "warm_seconds": warm,
            "goal_seconds": GOALS["three platforms seconds"],
        },
        "images": rows,
        "import_seconds_amd64": imports,
        "goals_bytes": {k: v for k, v in GOALS.items() if k != "three platforms seconds"},
        "ignore_valid_until": ivu,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "image.json").write_text(json.dumps(out, indent=1) + "\n")
    table = markdown([r for r in rows if r["flavor"] != "conventional"], note, machine)
    text = "\n\n".join([
        three_table(runs) + f"\n  warm: {warm:.1f} s (goal <= {GOALS['three platforms seconds']} s)",
        size_table(rows),
        "import distributed + dask.array (amd64, 3.13, read-only root, median of 3): "
        + ", ".join(f"{k} {v} s" for k, v in imports.items()),
        table,
    ])  # fmt: skip
    (RESULTS / "image.txt").write_text(text + "\n")
    print(text)
    if args.update_docs:
        update_docs(table)


if __name__ == "__main__":
    main()
