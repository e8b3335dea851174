"""The scheduler's memory per worker: its RSS with 0 workers and with more and more, on the local backend.

One cluster of the local backend (scheduler and workers as processes on this
machine, started by the same entrypoint as the image's) is scaled up in steps
(by default 0, 8, 16, 32, 48 workers of one thread each) and back to 0. At
each step, once the workers are connected and a short round of tasks has run
on all of them, the scheduler collects its garbage and reports its resident
memory (three readings a second apart, the median). The slope of a
least-squares line through the steps is the memory per worker; what is left
after the scale back to 0 shows what the scheduler keeps of workers gone.

    python bench/scheduler_memory.py               # --workers 0,8,16,32,48

Prints a table and writes JSON (``--json``, default bench/results/scheduler_memory.json).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from distributed import Client
from rich.console import Console
from rich.table import Table

from _machine import write_results
from minimaldask import MinimalCluster

console = Console(width=130)


def scheduler_memory(dask_scheduler: Any = None) -> dict[str, Any]:
    """Run in the scheduler: its RSS after a garbage collection, and what it holds per worker."""
    import gc

    import psutil

    gc.collect()
    return {
        "rss": psutil.Process().memory_info().rss,
        "workers": len(dask_scheduler.workers),
        "python_objects": len(gc.get_objects()),
    }


def measure(client: Client, n: int) -> dict[str, Any]:
    """A round of tasks on every worker, then three readings of the scheduler's memory."""
    if n:
        futures = client.map(lambda i: i, range(4 * n), pure=False)
        client.gather(futures)
        del futures
    readings = []
    for _ in range(3):
        time.sleep(1)
        readings.append(client.run_on_scheduler(scheduler_memory))
    return {
        "workers": n,
        "connected": readings[-1]["workers"],
        "rss_mib": statistics.median(r["rss"] for r in readings) / 2**20,
        "python_objects": statistics.median(r["python_objects"] for r in readings),
    }


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of ``(x, y)`` points."""
    mx = statistics.mean(x for x, _ in points)
    my = statistics.mean(y for _, y in points)
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / sxx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="0,8,16,32,48", help="the steps, in order")
    parser.add_argument("--settle", type=float, default=5, help="seconds after each scale")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to reach a step")
    parser.add_argument("--json", default="bench/results/scheduler_memory.json")
    args = parser.parse_args()
    steps = [int(x) for x in args.workers.split(",")]
    if len(set(steps)) < 2:
        parser.error(f"--workers {args.workers}: name at least two steps, e.g. 0,8,16")
    results = []
    with (
        MinimalCluster(
            backend="local",
            workers=0,
            resources={"cpu": "1", "memory": "256Mi"},
            quiet=True,
        ) as cluster,
        Client(cluster) as client,
    ):
        for n in [*steps, 0]:
            t0 = time.monotonic()
            cluster.scale(n)
            if n:
                client.wait_for_workers(n, timeout=args.timeout)
            deadline = time.monotonic() + args.timeout
            while len(client.nthreads()) != n:
                if time.monotonic() > deadline:
                    raise SystemExit(f"the cluster did not come to {n} workers in {args.timeout}s")
                time.sleep(0.5)
            reached = time.monotonic() - t0
            time.sleep(args.settle)
            row = measure(client, n)
            row["seconds_to_reach"] = reached
            row["after_scale_down"] = bool(results) and n < results[-1]["workers"]
            results.append(row)
            console.print(
                f"{n} workers: scheduler RSS {row['rss_mib']:.1f} MiB, "
                f"{row['python_objects']:.0f} Python objects"
            )
    up = [r for r in results if not r["after_scale_down"]]
    per_worker_kib = slope([(r["workers"], r["rss_mib"]) for r in up]) * 1024
    objects_per_worker = slope([(r["workers"], r["python_objects"]) for r in up])
    table = Table(title="The scheduler's memory (local backend, idle, after a round of tasks)")
    for column in ("workers", "RSS MiB", "Python objects", "s to reach"):
        table.add_column(column, justify="right")
    for r in results:
        label = f"{r['workers']}" + (" (scaled down)" if r["after_scale_down"] else "")
        table.add_row(
            label,
            f"{r['rss_mib']:.1f}",
            f"{r['python_objects']:.0f}",
            f"{r['seconds_to_reach']:.1f}",
        )
    console.print(table)
    console.print(
        f"per worker: {per_worker_kib:.0f} KiB of RSS, {objects_per_worker:.0f} Python objects "
        "(least-squares slope over the scale-up steps)"
    )
    out = Path(args.json)
    write_results(
        out,
        {
            "settings": {k: v for k, v in vars(args).items() if k != "json"},
            "steps": results,
            "per_worker_kib": per_worker_kib,
            "python_objects_per_worker": objects_per_worker,
        },
    )


if __name__ == "__main__":
    main()
