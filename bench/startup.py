"""Seconds from the call to N workers connected (N = 1, 3, 6), and from close() to nothing left.

Runs on a real Kubernetes with the image already on the node (a warm-up
cluster pulls it first from the registry). On the local Kubernetes, as root (it
reads the API server's audit log when there is one):

    python3 tools/localkube/localkube.py up
    python bench/startup.py    # this checkout's image, built and pushed if needed;
                               # as the namespace-only user, in its namespace

Prints a table and writes JSON (``--json``, default bench/results/startup.json),
with a timeline of every run (``--timeline N`` prints the one of the median start
to N workers, and of the median close): the client's requests and log lines, each
pod's milestones from a watch, and the containers' own log lines with the
runtime's timestamps; for the close, the client's deletes, and each pod's end
(deleting, container ended, gone) from the watch.

``--variant LABEL:NAME=VALUE[,NAME=VALUE...]`` (repeatable) adds runs whose pods
get those variables, alternating with the default's runs, and the table gives
each variant's median over the default's, measured in the same run. For example
``--variant spawn:DASK_DISTRIBUTED__WORKER__MULTIPROCESSING_METHOD=spawn``
measures distributed's way of starting a worker process against ours (fork).

``--close-after SECONDS`` closes each cluster that long after its start returned,
as a cluster used for a while: a kubelet that has just started a pod handles its
deletion only after the syncs queued by the start, each waiting for its next look
at the containers (every second), and a close at once measures that too.

``--client LABEL:PATH`` (repeatable) adds runs whose client is the minimaldask of
another checkout (``git worktree add /tmp/before HEAD~1``), same image: a change of
the client measured against the code before it, alternating in one run. Every run
is then made in a Python process of its own, the default's included.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from _machine import write_results
from _timeline import PodWatch, timeline
from minimaldask import MinimalCluster

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools" / "localkube"))

LOCALKUBE_USER = Path("/var/lib/localkube/user.kubeconfig")


def audit_marks(name: str, namespace: str, since: float) -> list[tuple[float, str]]:
    """The client's first request and its writes, from the audit log (none without one)."""
    try:
        import localkube
        from minimaldask.kubernetes.api import user_agent

        agent = user_agent(name, namespace) + " "
        events = [
            e
            for e in localkube.audit_events(since - 1, user=localkube.USER_NAME)
            if e.get("userAgent", "").startswith(agent)
        ]
    except Exception:
        return []
    marks = []
    for i, e in enumerate(events):
        ref = e.get("objectRef") or {}
        if i == 0 or e["verb"] in ("create", "patch", "update", "delete"):
            what = f"{e['verb']} {ref.get('resource', '')}/{ref.get('subresource') or ref.get('name', '')}"
            marks.append((localkube._timestamp(e["requestReceivedTimestamp"]), f"request: {what}"))
    return marks


def one_run(
    name: str,
    namespace: str,
    workers: int,
    image: str,
    resources: dict,
    worker_options: list[str] | None = None,
    env: dict[str, str] | None = None,
    close_after: float = 0.0,
) -> dict:
    watch = PodWatch(namespace, name).start()
    wall0 = time.time()
    t0 = time.perf_counter()
    cluster = MinimalCluster(
        name=name,
        namespace=namespace,
        workers=workers,
        image=image,
        resources=resources,
        scheduler_resources={"cpu": "100m", "memory": "384Mi"},
        worker_options=worker_options or [],
        env=env or {},
        quiet=True,
    )
    started = time.perf_counter() - t0
    returned = time.time()
    connected = len(cluster.scheduler_info["workers"])
    watch.read_logs()
    said = [(when.timestamp(), f"said: {line}") for when, line in cluster._cluster_manager_logs]
    client = [*said, *audit_marks(name, namespace, wall0), (returned, "MinimalCluster() returned")]
    start_timeline = timeline(wall0, watch, client, ending=False)
    # A cluster used for a while: its node is done with the start (see --close-after).
    time.sleep(max(close_after - (time.perf_counter() - t0 - started), 0))
    wall1 = time.time()
    t1 = time.perf_counter()
    cluster.close()  # as users end it: every object deleted, and gone
    deleted = time.perf_counter() - t1
    closed = time.time()
    time.sleep(0.5)  # the watch's last events
    watch.stop()
    marks = [m for m in audit_marks(name, namespace, wall1) if m[0] >= wall1 and "delete" in m[1]]
    close_timeline = timeline(wall1, watch, [*marks, (closed, "close() returned")], ending=True)
    return {
        "workers": workers,
        "connected": connected,
        "start_s": started,
        "delete_s": deleted,
        "timeline": start_timeline,
        "close_timeline": close_timeline,
    }


def print_timeline(console: Console, run: dict, close: bool = False, label: str = "") -> None:
    if close:
        title = f"where the close of {run['workers']} workers went ({run['delete_s']:.2f} s)"
    else:
        title = f"where the start to {run['workers']} workers went ({run['start_s']:.2f} s)"
    if label and label != "default":
        title += f", {label}"
    table = Table(title=title)
    for col, justify in (("s", "right"), ("who", "left"), ("what", "left")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for row in run["close_timeline" if close else "timeline"]:
        table.add_row(f"{row['t']:.2f}", row["who"], row["what"][:90])
    console.print(table)


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    """``LABEL:NAME=VALUE,NAME=VALUE`` to the label and the variables."""
    label, sep, assignments = text.partition(":")
    env = dict(a.split("=", 1) for a in assignments.split(",") if "=" in a)
    if not sep or not re.fullmatch(r"[a-z0-9]{1,12}", label) or not env or label == "default":
        raise argparse.ArgumentTypeError(
            f"invalid --variant {text!r}: expected LABEL:NAME=VALUE[,NAME=VALUE...], "
            "LABEL of 1 to 12 lowercase letters and digits, not 'default'"
        )
    return label, env


def parse_client(text: str) -> tuple[str, str]:
    """``LABEL:PATH`` to the label and the checkout whose client those runs use."""
    label, sep, path = text.partition(":")
    if not sep or not re.fullmatch(r"[a-z0-9]{1,12}", label) or label == "default":
        raise argparse.ArgumentTypeError(
            f"invalid --client {text!r}: expected LABEL:PATH, LABEL of 1 to 12 lowercase "
            "letters and digits, not 'default'"
        )
    if not (Path(path) / "src" / "minimaldask" / "__init__.py").exists():
        raise argparse.ArgumentTypeError(
            f"invalid --client {text!r}: {path} is not a checkout of minimaldask (no "
            "src/minimaldask); make one with: git worktree add PATH COMMIT"
        )
    return label, str(Path(path).resolve())


def run_elsewhere(client: str, **run: object) -> dict:
    """:func:`one_run` in a process of its own whose minimaldask is the checkout ``client``."""
    path = [str(Path(client) / "src"), str(ROOT / "bench"), str(ROOT / "tools" / "localkube")]
    proc = subprocess.run(
        [sys.executable, __file__, "--one-run", json.dumps(run)],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(path)},
        capture_output=True,
        text=True,
        timeout=900,
    )
    if proc.returncode:
        raise SystemExit(f"a run with the client of {client} failed:\n{proc.stderr[-4000:]}")
    result: dict = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    if sys.argv[1:2] == ["--one-run"]:  # a run for run_elsewhere: its result on the last line
        import minimaldask

        result = one_run(**json.loads(sys.argv[2]))
        result["client"] = str(Path(minimaldask.__file__).parents[2])
        print(json.dumps(result))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--namespace", default=None)
    parser.add_argument(
        "--image", default=None, help="default: this checkout's image, built and pushed if needed"
    )
    parser.add_argument("--workers", default="1,3,6")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cpu", default="200m")
    parser.add_argument("--memory", default="384Mi")
    parser.add_argument("--json", default="bench/results/startup.json")
    parser.add_argument(
        "--worker-options", default="", help="extra `dask worker` options, e.g. --no-nanny"
    )
    parser.add_argument(
        "--timeline", default="3", help="print the median run's timeline for these N (e.g. 1,3)"
    )
    parser.add_argument(
        "--close-after",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="close each cluster this long after its start returned (default: at once)",
    )
    parser.add_argument(
        "--variant",
        type=parse_variant,
        action="append",
        default=[],
        metavar="LABEL:NAME=VALUE[,NAME=VALUE]",
        help="also run with these pod variables, alternating with the default",
    )
    parser.add_argument(
        "--client",
        type=parse_client,
        action="append",
        default=[],
        metavar="LABEL:PATH",
        help="also run with the client of the checkout at PATH, alternating with the default",
    )
    args = parser.parse_args()
    variants: list[tuple[str, dict[str, str]]] = [("default", {}), *args.variant]
    clients = dict(args.client)
    variants += [(label, {}) for label in clients]
    if len({label for label, _ in variants}) < len(variants):
        parser.error("each --variant and --client needs a label of its own")
    if clients:
        clients["default"] = str(ROOT)
    if "KUBECONFIG" not in os.environ and LOCALKUBE_USER.exists():
        os.environ["KUBECONFIG"] = str(LOCALKUBE_USER)
    namespace = args.namespace or ("minimaldask-e2e" if LOCALKUBE_USER.exists() else "default")
    resources = {"cpu": args.cpu, "memory": args.memory}
    if args.image is None:
        from api_calls import checkout_image

        args.image = checkout_image()

    console = Console()
    console.print(f"warm-up: pulling {args.image} onto the node")
    options = args.worker_options.split()
    one_run("bench-warmup", namespace, 1, args.image, resources, options)

    runs = []
    for n in [int(x) for x in args.workers.split(",")]:
        for i in range(args.repeat):
            for label, env in variants:  # alternating: the machine's noise falls on all
                # A name of its own: a name used again within the cluster DNS's cache
                # time (30 s) costs the new workers that long (docs/performance.md).
                name = f"bench-{n}-{i}" + ("" if label == "default" else f"-{label}")
                run_args: dict = {
                    "name": name,
                    "namespace": namespace,
                    "workers": n,
                    "image": args.image,
                    "resources": resources,
                    "worker_options": options,
                    "env": env,
                    "close_after": args.close_after,
                }
                run = run_elsewhere(clients[label], **run_args) if clients else one_run(**run_args)
                run["variant"] = label
                console.print(
                    f"N={n} run {i + 1} ({label}): start {run['start_s']:.2f}s, "
                    f"delete {run['delete_s']:.2f}s"
                )
                runs.append(run)

    summary = []
    table = Table(title=f"minimaldask start-up on Kubernetes ({args.image})")
    columns = ["workers", "variant", "start median (s)", "start min (s)", "delete median (s)"]
    if len(variants) > 1:
        columns += ["start / default", "delete / default"]
    for col in [*columns, "runs"]:
        table.add_column(col, justify="right")
    for n in sorted({r["workers"] for r in runs}):
        base: dict = {}
        for label, _ in variants:
            mine = [r for r in runs if r["workers"] == n and r["variant"] == label]
            row = {
                "workers": n,
                "variant": label,
                "start_median_s": statistics.median(r["start_s"] for r in mine),
                "start_min_s": min(r["start_s"] for r in mine),
                "delete_median_s": statistics.median(r["delete_s"] for r in mine),
                "runs": len(mine),
            }
            base = base or row
            cells = [
                str(n),
                label,
                f"{row['start_median_s']:.2f}",
                f"{row['start_min_s']:.2f}",
                f"{row['delete_median_s']:.2f}",
            ]
            if len(variants) > 1:
                row["start_ratio"] = row["start_median_s"] / base["start_median_s"]
                row["delete_ratio"] = row["delete_median_s"] / base["delete_median_s"]
                cells += [f"{row['start_ratio']:.2f}", f"{row['delete_ratio']:.2f}"]
            summary.append(row)
            table.add_row(*cells, str(row["runs"]))
    console.print(table)
    for n in [int(x) for x in args.timeline.split(",") if x]:
        for label, _ in variants:
            mine = sorted(
                (r for r in runs if r["workers"] == n and r["variant"] == label),
                key=lambda r: r["start_s"],
            )
            if mine:
                print_timeline(console, mine[len(mine) // 2], label=label)
                by_close = sorted(mine, key=lambda r: r["delete_s"])
                print_timeline(console, by_close[len(by_close) // 2], close=True, label=label)
    out = Path(args.json)
    write_results(
        out,
        {
            "image": args.image,
            "namespace": namespace,
            "variants": dict(variants),
            "clients": clients,
            "close_after_s": args.close_after,
            "summary": summary,
            "runs": runs,
        },
    )


if __name__ == "__main__":
    main()
