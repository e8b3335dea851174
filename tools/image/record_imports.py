#!/usr/bin/env python3
"""Record the modules that schedulers, workers, the janitor and the entrypoint import.

    python3 tools/image/record_imports.py [--python PYTHON] [--output FILE]

Every Python process started with the recorder on its path (a
``sitecustomize`` module in a temporary directory) writes the name of each
module it imports (audit event ``import``, and ``sys.modules`` at exit) to a
file of its own. Then, with the recorder on:
1. the integration tests (tests/integration: the local backend's scheduler
   and worker processes, the janitor, the entrypoint);
2. a scenario of this script: a scheduler and two workers started by the
   entrypoint (one with EXTRA_PIP_PACKAGES, so pip runs), the article's
   computation, a bag, a delayed graph, a dask.dataframe computation with
   parquet files, every dashboard page the scheduler lists in
   /sitemap.json, and EXTRA_OS_PACKAGES' code path
   (``install_runtime_packages``) against the Debian archive.
The test processes themselves (pytest, the client) are left out. The union
goes to src/minimaldask/image/recorded-imports.txt, which the image builder
reads (see docs/image.md: what it trims and what it ships without sources).

The environment is a virtual environment of its own (cached under
~/.cache/minimaldask/record-imports), with pandas and pyarrow for the
dataframe flavor.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OUTPUT = REPO / "src/minimaldask/image/recorded-imports.txt"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "minimaldask"

SITECUSTOMIZE = r'''
import os, sys
_dir = os.environ.get("MINIMALDASK_IMPORT_RECORD")
if _dir:
    _out = open(os.path.join(_dir, f"{os.getpid()}.txt"), "a", buffering=1)

    def _hook(event, args, _out=_out):
        if event == "import":
            _out.write(args[0] + "\n")

    sys.addaudithook(_hook)

    def _at_exit(_out=_out):
        for name in list(sys.modules):
            _out.write(name + "\n")
        _out.write("#argv " + " ".join(sys.argv) + "\n")

    import atexit
    atexit.register(_at_exit)
'''

SCENARIO_CLIENT = r'''
import json, sys, tempfile, urllib.request
import dask, dask.array as da, dask.bag as db
from distributed import Client
address, dashboard = sys.argv[1], sys.argv[2]
client = Client(address, timeout=60)
client.wait_for_workers(2, timeout=120)
x = da.random.random((4000, 4000), chunks=(1000, 1000))
print("array", float((x + x.T)[::2, 2000:].mean(axis=1).sum().compute()))
print("bag", db.from_sequence(range(1000), npartitions=8).map(lambda v: v * 2).filter(lambda v: v % 3).sum().compute())
print("delayed", dask.delayed(sum)([dask.delayed(pow)(i, 2) for i in range(20)]).compute())
print("persist", float(x.persist().sum().compute()))
try:
    import pandas as pd, dask.dataframe as dd
except ImportError as e:
    print("no dataframe:", e)
else:
    df = dd.from_pandas(pd.DataFrame({"a": range(10000), "b": [i % 7 for i in range(10000)]}), npartitions=4)
    print("groupby", df.groupby("b").a.sum().compute().sum())
    with tempfile.TemporaryDirectory() as tmp:
        df.to_parquet(tmp + "/p")
        print("parquet", len(dd.read_parquet(tmp + "/p").compute()))
        df.to_csv(tmp + "/c-*.csv")
        print("csv", len(dd.read_csv(tmp + "/c-*.csv").compute()))
base = f"http://127.0.0.1:{dashboard}"
pages = json.load(urllib.request.urlopen(base + "/sitemap.json", timeout=60))["paths"]
done = 0
for page in pages:
    if "{" in page or page.startswith(("/proxy", "/sitemap")):
        continue
    try:
        urllib.request.urlopen(base + page, timeout=120).read()
        done += 1
    except Exception as e:
        print("page", page, e)
print("dashboard pages", done)
client.close()
'''

DEBIAN = r'''
import json, os, sys, tempfile
from minimaldask.image import debian
with tempfile.TemporaryDirectory() as tmp:
    record = os.path.join(tmp, "record.json")
    with open(record, "w") as f:
        json.dump({"debian": {"suite": "bookworm", "arch": "amd64", "triplet": "x86_64-linux-gnu",
                              "archive": debian.apt_archive_url(), "packages": ["libc6"]}}, f)
    debian.IMAGE_RECORD = record
    env = debian.install_runtime_packages(["jq"], os.path.join(tmp, "prefix"), environ={})
    print(sorted(env))
'''


def venv(python: str) -> Path:
    """A virtual environment with this checkout, pytest, pandas and pyarrow (cached)."""
    key = hashlib.sha256(
        (python + (REPO / "pyproject.toml").read_text() + str(REPO)).encode()
    ).hexdigest()[:16]
    path = CACHE / "record-imports" / key
    if not (path / "done").exists():
        subprocess.run([python, "-m", "venv", "--clear", str(path)], check=True)
        pip = [str(path / "bin/python"), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, "-e", f"{REPO}[test]", "pandas", "pyarrow"], check=True)
        (path / "done").write_text("")
    return path / "bin/python"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scenario(python: Path, env: dict[str, str]) -> None:
    port, dashboard = free_port(), free_port()
    common = {**env, "PORT": str(port), "DASHBOARD_PORT": str(dashboard)}
    address = f"127.0.0.1:{port}"
    procs = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            procs.append(subprocess.Popen([str(python), "-m", "minimaldask.entrypoint"], env=common))
            worker = {**common, "WORKER": "1", "DASK_SCHEDULER_ADDRESS": address}
            procs.append(subprocess.Popen([str(python), "-m", "minimaldask.entrypoint"], env=worker))
            pip = {**worker, "EXTRA_PIP_PACKAGES": "camelcase", "MINIMALDASK_PREFIX": tmp}
            procs.append(subprocess.Popen([str(python), "-m", "minimaldask.entrypoint"], env=pip))
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{dashboard}/health", timeout=5)
                    break
                except OSError:
                    time.sleep(1)
            client_env = {k: v for k, v in env.items() if k != "MINIMALDASK_IMPORT_RECORD"}
            subprocess.run(
                [str(python), "-c", SCENARIO_CLIENT, f"tcp://{address}", str(dashboard)],
                env=client_env, check=True, timeout=900,
            )  # fmt: skip
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(timeout=60)
    subprocess.run([str(python), "-c", DEBIAN], env=env, check=True, timeout=600)


def collect(directory: Path) -> tuple[set[str], int]:
    modules: set[str] = set()
    used = 0
    for path in sorted(directory.glob("*.txt")):
        lines = path.read_text().splitlines()
        argv = next((ln[6:] for ln in lines if ln.startswith("#argv ")), "")
        if "pytest" in argv.split(" ", 1)[0] or " -m pytest" in argv:
            continue  # the test runner, not a process of a cluster
        used += 1
        modules.update(ln for ln in lines if ln and not ln.startswith("#"))
    return modules, used


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=sys.executable, help="Python of the environment")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    python = venv(args.python)
    with tempfile.TemporaryDirectory() as hook, tempfile.TemporaryDirectory() as records:
        Path(hook, "sitecustomize.py").write_text(SITECUSTOMIZE)
        env = {**os.environ, "MINIMALDASK_IMPORT_RECORD": records}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [hook, os.environ.get("PYTHONPATH")]))
        tests = subprocess.run(
            [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/integration"],
            cwd=REPO, env=env,
        )  # fmt: skip
        if tests.returncode != 0:
            print("record_imports: the integration tests failed", file=sys.stderr)
            return 1
        scenario(python, env)
        modules, used = collect(Path(records))
    version = subprocess.run(
        [str(python), "-c", "import sys; print(sys.version.split()[0])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    header = [
        "# Modules imported by schedulers, workers, the janitor and the entrypoint,",
        "# recorded by tools/image/record_imports.py (integration tests and its scenario:",
        "# computations, every dashboard page, EXTRA_PIP_PACKAGES, EXTRA_OS_PACKAGES).",
        f"# Python {version}, {used} processes. Read by minimaldask.image.trim.",
    ]
    args.output.write_text("\n".join(header + sorted(modules)) + "\n")
    print(json.dumps({"modules": len(modules), "processes": used, "output": str(args.output)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
