#!/usr/bin/env python3
"""Record the modules that schedulers, workers, the pod side and the entrypoint import.

    python3 tools/image/record_imports.py [--python PYTHON] [--output FILE]

Every Python process started with the recorder on its path (a
``sitecustomize`` module in a temporary directory) writes the name of each
module it imports (audit event ``import``, and ``sys.modules`` at exit) to a
file of its own. Then, with the recorder on:
1. the integration tests (tests/integration: the local backend's scheduler
   and worker processes, the janitor, the entrypoint);
2. a scenario of this script: a scheduler (with the pod plugin preloaded) and
   two workers (one with the pod worker preload, one with EXTRA_PIP_PACKAGES,
   so pip runs) started by the entrypoint, the article's
   computation, a bag, a delayed graph, a dask.dataframe computation with
   parquet files, every dashboard page the scheduler lists in
   /sitemap.json, and EXTRA_OS_PACKAGES' code path
   (``install_runtime_packages``) against the Debian archive;
3. every module of ``minimaldask.pod`` (and so :mod:`minimaldask.contract`)
   imported in a process of its own: what runs only on Kubernetes (the
   janitor's API client, the preStop drain) is in the set even though no
   cluster runs here.
The test processes themselves (pytest, the client) are left out. The union
goes to src/minimaldask/image/recorded-imports.txt, which the image builder
reads (see docs/image.md: what it trims and what it ships without sources).

The environment is a virtual environment of its own (cached under
~/.cache/minimaldask/record-imports), with the packages of every flavor
(bokeh for the dashboard, pandas and pyarrow for the dataframe flavor).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _alone(name: str, rel: str):
    """One module of the package, alone: the package's __init__ needs dask, not here yet.

    Only for image/recipe.py (plain data) and contract.py (standard library only).
    """
    spec = importlib.util.spec_from_file_location(name, REPO / "src/minimaldask" / rel)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses looks the module up
    spec.loader.exec_module(module)
    return module


PACKAGES = sorted(
    {p for flavor in _alone("recipe", "image/recipe.py").FLAVORS.values() for p in flavor} - {"pip"}
)
contract = _alone("contract", "contract.py")
OUTPUT = REPO / "src/minimaldask/image/recorded-imports.txt"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "minimaldask"

SITECUSTOMIZE = r"""
import os, sys
_dir = os.environ.get("MINIMALDASK_IMPORT_RECORD")
if _dir:
    _out = open(os.path.join(_dir, f"{os.getpid()}.txt"), "a", buffering=1)
    _argv = " ".join(getattr(sys, "orig_argv", sys.argv)).replace("\n", " ")
    _out.write(f"#ppid {os.getppid()}\n#argv {_argv}\n")

    def _hook(event, args, _out=_out):
        if event == "import":
            _out.write(args[0] + "\n")

    sys.addaudithook(_hook)

    def _at_exit(_out=_out):
        for name in list(sys.modules):
            _out.write(name + "\n")

    import atexit
    atexit.register(_at_exit)
"""

SCENARIO_CLIENT = r"""
import json, sys, tempfile, urllib.parse, urllib.request
import dask, dask.array as da, dask.bag as db, distributed
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
# The dashboard's bokeh applications and its HTML and JSON pages, from distributed itself
# (its /sitemap.json fails once bokeh's routes are in).
from distributed.dashboard.scheduler import applications
import distributed.http.scheduler.info as info, distributed.http.scheduler.json as js
pages = sorted(applications) + [r[0] for r in info.routes + js.routes]
pages += ["/health", "/individual-plots.json"]
worker = urllib.parse.quote(next(iter(client.scheduler_info()["workers"])), safe="")
kept = x.persist()
distributed.wait(kept)
key = urllib.parse.quote(str(next(k for ks in client.has_what().values() for k in ks)), safe="")
done = 0
for page in pages:
    page = "/" + page.lstrip("/")
    if page.startswith(("/info/worker/", "/info/logs/", "/info/call-stacks/")):
        page = page.replace("(.*)", worker)
    elif page.startswith(("/info/task/", "/info/call-stack/")):
        page = page.replace("(.*)", key)
    if "{" in page or "(" in page or page.startswith(("/proxy", "/sitemap", "/eventstream")):
        continue
    try:
        urllib.request.urlopen(base + page, timeout=120).read()
        done += 1
    except Exception as e:
        print("page", page, e)
print("dashboard pages", done)
client.close()
"""

# Every module of the pod side, imported: the janitor's Kubernetes client and the
# drain run only in a cluster, which this script does not start.
POD_SIDE = r"""
import importlib, pkgutil
import minimaldask.pod
for info in pkgutil.walk_packages(minimaldask.pod.__path__, "minimaldask.pod."):
    importlib.import_module(info.name)
"""

DEBIAN = r"""
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
"""


def venv(python: str) -> Path:
    """A virtual environment with this checkout, pytest, pandas and pyarrow (cached)."""
    key = hashlib.sha256(
        (python + (REPO / "pyproject.toml").read_text() + str(REPO) + str(PACKAGES)).encode()
    ).hexdigest()[:16]
    path = CACHE / "record-imports" / key
    if not (path / "done").exists():
        subprocess.run([python, "-m", "venv", "--clear", str(path)], check=True)
        pip = [str(path / "bin/python"), "-m", "pip", "install", "-q"]
        # The newest pip, as the image has: EXTRA_PIP_PACKAGES runs it.
        subprocess.run([*pip, "--upgrade", "pip"], check=True)
        subprocess.run([*pip, "-e", f"{REPO}[test]", *PACKAGES], check=True)
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
    entrypoint = [str(python), "-m", contract.ENTRYPOINT_MODULE]
    procs = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            # The preloads a pod runs with (contract.scheduler_arguments, worker_arguments).
            scheduler = {**common, "ARGUMENTS": f"--preload {contract.PLUGIN_MODULE}"}
            procs.append(subprocess.Popen(entrypoint, env=scheduler))
            worker = {**common, "WORKER": "1", "DASK_SCHEDULER_ADDRESS": address}
            preload = {**worker, "ARGUMENTS": f"--preload {contract.WORKER_MODULE}"}
            procs.append(subprocess.Popen(entrypoint, env=preload))
            pip = {**worker, "EXTRA_PIP_PACKAGES": "camelcase", "MINIMALDASK_PREFIX": tmp}
            procs.append(subprocess.Popen(entrypoint, env=pip))
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
    # The marker argument tells collect() that this process is one of the image's.
    subprocess.run([str(python), "-c", DEBIAN, MARKER], env=env, check=True, timeout=600)
    subprocess.run([str(python), "-c", POD_SIDE, MARKER], env=env, check=True, timeout=600)


#: Command lines of the image's processes; their children (a Nanny's worker
#: process, pip run by the entrypoint) count too. Not the tests nor clients.
CLUSTER_SIDE = ("minimaldask.pod.", "distributed.cli.dask_")
MARKER = "record-os-packages"
MODULE = re.compile(r"[A-Za-z_][\w.-]*")


def collect(directory: Path) -> tuple[set[str], int]:
    """The union of the modules of the image's processes, and how many there were."""
    parents: dict[int, int] = {}
    argvs: dict[int, list[str]] = {}
    found: dict[int, set[str]] = {}
    for path in directory.glob("*.txt"):
        pid = int(path.stem)
        lines = path.read_text().splitlines()
        for line in lines:
            if line.startswith("#ppid "):
                parents.setdefault(pid, int(line[6:]))
            elif line.startswith("#argv "):
                argvs.setdefault(pid, []).append(line[6:])
        found[pid] = {ln for ln in lines if MODULE.fullmatch(ln)}

    def cluster_side(pid: int, depth: int = 0) -> bool:
        if any(p in argv for argv in argvs.get(pid, []) for p in (*CLUSTER_SIDE, MARKER)):
            return True
        parent = parents.get(pid)
        return parent in found and depth < 10 and cluster_side(parent, depth + 1)

    chosen = [pid for pid in found if cluster_side(pid)]
    return set().union(*(found[pid] for pid in chosen)), len(chosen)


IMPORTABLE = r"""
import importlib, json, sys, warnings
warnings.simplefilter("ignore")
ok = []
for name in json.load(sys.stdin):
    try:
        importlib.import_module(name)
    except BaseException:
        continue
    ok.append(name)
print(json.dumps(ok))
"""


def importable(python: Path, names: set[str]) -> set[str]:
    """The names that import in the recording environment.

    The audit event comes before the import: it names optional imports that
    failed too (cupy, scipy, winreg, ...), which no image has either.
    """
    result = subprocess.run(
        [str(python), "-c", IMPORTABLE], input=json.dumps(sorted(names)),
        capture_output=True, text=True, check=True, timeout=600,
    )  # fmt: skip
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


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
            # What ran is recorded all the same; a missing path would show in the image tests.
            print(
                f"record_imports: the integration tests exited with {tests.returncode};"
                " recording what ran",
                file=sys.stderr,
            )
        scenario(python, env)
        modules, used = collect(Path(records))
    modules = importable(python, modules - {"__main__", "__mp_main__", "sitecustomize"})
    version = subprocess.run(
        [str(python), "-c", "import sys; print(sys.version.split()[0])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    header = [
        "# Modules imported by schedulers, workers, the pod side and the entrypoint,",
        "# recorded by tools/image/record_imports.py (integration tests and its scenario:",
        "# computations, every dashboard page, EXTRA_PIP_PACKAGES, EXTRA_OS_PACKAGES,",
        "# every module of minimaldask.pod).",
        f"# Python {version}, {used} processes. Read by minimaldask.image.trim.",
    ]
    args.output.write_text("\n".join(header + sorted(modules)) + "\n")
    print(json.dumps({"modules": len(modules), "processes": used, "output": str(args.output)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
