"""Seconds from the call to N workers connected (N = 1, 3, 6), and seconds to delete.

Runs on a real Kubernetes with the image already on the node (a warm-up
cluster pulls it first from the registry). On the local Kubernetes:

    tools/localkube/localkube up
    python -m minimaldask.image build --push 127.0.0.1:5000/minimaldask:TAG --insecure
    python bench/startup.py            # as the namespace-only user, in its namespace

Prints a table and writes JSON (``--json``, default bench/results/startup.json).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from _machine import write_results
from minimaldask import MinimalCluster, delete_dask_cluster
from minimaldask.spec import default_image_tag

LOCALKUBE_USER = Path("/var/lib/localkube/user.kubeconfig")


def one_run(name: str, namespace: str, workers: int, image: str, resources: dict) -> dict:
    t0 = time.perf_counter()
    cluster = MinimalCluster(
        name=name,
        namespace=namespace,
        workers=workers,
        image=image,
        resources=resources,
        scheduler_resources={"cpu": "100m", "memory": "384Mi"},
        shutdown_on_close=False,
        quiet=True,
    )
    started = time.perf_counter() - t0
    connected = len(cluster.scheduler_info["workers"])
    cluster.close()
    t1 = time.perf_counter()
    delete_dask_cluster(namespace=namespace, name=name)
    deleted = time.perf_counter() - t1
    return {"workers": workers, "connected": connected, "start_s": started, "delete_s": deleted}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--namespace", default=None)
    parser.add_argument("--image", default=f"localhost:5000/minimaldask:{default_image_tag()}")
    parser.add_argument("--workers", default="1,3,6")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cpu", default="200m")
    parser.add_argument("--memory", default="384Mi")
    parser.add_argument("--json", default="bench/results/startup.json")
    args = parser.parse_args()
    if "KUBECONFIG" not in os.environ and LOCALKUBE_USER.exists():
        os.environ["KUBECONFIG"] = str(LOCALKUBE_USER)
    namespace = args.namespace or ("minimaldask-e2e" if LOCALKUBE_USER.exists() else "default")
    resources = {"cpu": args.cpu, "memory": args.memory}

    console = Console()
    console.print(f"warm-up: pulling {args.image} onto the node")
    one_run("bench-warmup", namespace, 1, args.image, resources)

    runs = []
    for n in [int(x) for x in args.workers.split(",")]:
        for i in range(args.repeat):
            run = one_run(f"bench-{n}-{i}", namespace, n, args.image, resources)
            console.print(
                f"N={n} run {i + 1}: start {run['start_s']:.2f}s, delete {run['delete_s']:.2f}s"
            )
            runs.append(run)

    summary = []
    table = Table(title=f"minimaldask start-up on Kubernetes ({args.image})")
    for col in ("workers", "start median (s)", "start min (s)", "delete median (s)", "runs"):
        table.add_column(col, justify="right")
    for n in sorted({r["workers"] for r in runs}):
        mine = [r for r in runs if r["workers"] == n]
        row = {
            "workers": n,
            "start_median_s": statistics.median(r["start_s"] for r in mine),
            "start_min_s": min(r["start_s"] for r in mine),
            "delete_median_s": statistics.median(r["delete_s"] for r in mine),
            "runs": len(mine),
        }
        summary.append(row)
        table.add_row(
            str(n),
            f"{row['start_median_s']:.2f}",
            f"{row['start_min_s']:.2f}",
            f"{row['delete_median_s']:.2f}",
            str(row["runs"]),
        )
    console.print(table)
    out = Path(args.json)
    write_results(
        out, {"image": args.image, "namespace": namespace, "summary": summary, "runs": runs}
    )


if __name__ == "__main__":
    main()
