"""What the cost controls save: a bursty workload with adapt(0, 4) against a fixed 4 workers.

Three bursts of work separated by idle gaps run on each cluster, while the
worker pods are counted every second (worker-pod-seconds: what a cloud bills).
Also measured: seconds from the last task to zero worker pods (adaptive), and
seconds from a client's SIGKILL to no object of its cluster left.

On the local Kubernetes, as the namespace-only user:

    tools/localkube/localkube up
    python -m minimaldask.image build --platform linux/amd64 \\
        --push 127.0.0.1:5000/minimaldask:TAG --insecure
    python bench/cost.py

Prints a table and writes JSON (``--json``, default bench/results/cost.json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import distributed
from distributed import Client
from rich.console import Console
from rich.table import Table

from minimaldask import MinimalCluster, delete_dask_cluster
from minimaldask.contract import label_selector
from minimaldask.kubernetes import api as kube
from minimaldask.kubernetes.backend import KubernetesBackend
from minimaldask.kubernetes.objects import POD
from minimaldask.spec import default_image_tag

LOCALKUBE_USER = Path("/var/lib/localkube/user.kubeconfig")
console = Console()


class PodMeter:
    """Integrates the number of live worker pods of a cluster over time, once a second."""

    def __init__(self, namespace: str, name: str) -> None:
        self.namespace, self.name = namespace, name
        self.pod_seconds = 0.0
        self.current = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        api = await kube.connect()
        last = time.monotonic()
        while not self._stop.is_set():
            pods = await kube.list_objects(
                api, POD, self.namespace, label_selector(self.name, "worker")
            )
            now = time.monotonic()
            self.pod_seconds += self.current * (now - last)
            last = now
            self.current = sum(1 for p in pods if (p.get("status") or {}).get("phase") != "Failed")
            await asyncio.sleep(1)

    def __enter__(self) -> PodMeter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def bursts(client: Client, n_bursts: int, tasks: int, seconds: float, gap: float) -> float:
    """Run the bursts; return the monotonic time at which the last task finished."""
    end = time.monotonic()
    for i in range(n_bursts):
        futures = client.map(time.sleep, [seconds] * tasks, pure=False)
        distributed.wait(futures)
        end = time.monotonic()
        del futures
        console.print(f"  burst {i + 1} done")
        if i < n_bursts - 1:
            time.sleep(gap)
    return end


def run(mode: str, args: argparse.Namespace, namespace: str) -> dict[str, float]:
    name = f"bench-cost-{mode}"
    options = {
        "name": name,
        "namespace": namespace,
        "image": args.image,
        # The tag is rebuilt under the same name during development: never a stale one.
        "image_pull_policy": "Always",
        "resources": {"cpu": args.cpu, "memory": args.memory},
        "scheduler_resources": {"cpu": "100m", "memory": "384Mi"},
        "idle_timeout": None,
        "no_client_timeout": None,
        "quiet": True,
    }
    console.print(f"{mode}: starting")
    with PodMeter(namespace, name) as meter:
        t0 = time.monotonic()
        cluster = MinimalCluster(workers=0 if mode == "adaptive" else 4, **options)
        with Client(cluster) as client:
            if mode == "adaptive":
                cluster.adapt(0, 4, cooldown=args.cooldown, min_worker_age=5)
            last_task = bursts(client, 3, args.tasks, args.task_seconds, args.gap)
            to_zero = None
            if mode == "adaptive":
                while meter.current and time.monotonic() - last_task < 600:
                    time.sleep(1)
                to_zero = time.monotonic() - last_task
            else:
                time.sleep(args.tail)  # the same tail a fixed cluster would run idle
        cluster.close()
        total = time.monotonic() - t0
    return {
        "worker_pod_seconds": meter.pod_seconds,
        "wall_seconds": total,
        "seconds_last_task_to_zero_workers": to_zero if to_zero is not None else float("nan"),
    }


def sigkill_to_nothing_left(args: argparse.Namespace, namespace: str) -> float:
    """Seconds from a client's SIGKILL until no object of its cluster is left."""
    name = "bench-cost-sigkill"
    script = textwrap.dedent(
        f"""
        import time
        from minimaldask import MinimalCluster
        MinimalCluster(name={name!r}, namespace={namespace!r}, image={args.image!r}, workers=1,
                       image_pull_policy="Always",
                       resources={{"cpu": {args.cpu!r}, "memory": {args.memory!r}}},
                       scheduler_resources={{"cpu": "100m", "memory": "384Mi"}},
                       no_client_timeout={args.no_client_timeout!r}, quiet=True)
        print("up", flush=True)
        time.sleep(3600)
        """
    )
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert owner.stdout is not None and owner.stdout.readline().strip() == "up"
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    t = time.monotonic()

    while asyncio.run(KubernetesBackend.leftovers(name, namespace)) and time.monotonic() - t < 600:
        time.sleep(1)
    return time.monotonic() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--namespace", default=None)
    parser.add_argument("--image", default=f"localhost:5000/minimaldask:{default_image_tag()}")
    parser.add_argument("--cpu", default="200m")
    parser.add_argument("--memory", default="384Mi")
    parser.add_argument("--tasks", type=int, default=200, help="tasks per burst")
    parser.add_argument("--task-seconds", type=float, default=0.5)
    parser.add_argument("--gap", type=float, default=90, help="idle seconds between bursts")
    parser.add_argument("--cooldown", type=float, default=15)
    parser.add_argument("--tail", type=float, default=60)
    parser.add_argument("--no-client-timeout", default="20s")
    parser.add_argument("--json", default="bench/results/cost.json")
    args = parser.parse_args()
    if "KUBECONFIG" not in os.environ and LOCALKUBE_USER.exists():
        os.environ["KUBECONFIG"] = str(LOCALKUBE_USER)
    namespace = args.namespace or ("minimaldask-e2e" if LOCALKUBE_USER.exists() else "default")

    try:
        results = {mode: run(mode, args, namespace) for mode in ("fixed", "adaptive")}
        sigkill = sigkill_to_nothing_left(args, namespace)
    finally:
        for name in ("bench-cost-fixed", "bench-cost-adaptive", "bench-cost-sigkill"):
            delete_dask_cluster(namespace=namespace, name=name)
    ratio = results["adaptive"]["worker_pod_seconds"] / results["fixed"]["worker_pod_seconds"]
    report = {
        "machine": platform.node(),
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "fixed_4_workers": results["fixed"],
        "adapt_0_4": results["adaptive"],
        "adaptive_over_fixed_worker_pod_seconds": ratio,
        "seconds_sigkill_to_no_object": sigkill,
    }
    table = Table(title="cost: bursty workload, adapt(0, 4) vs 4 fixed workers")
    for column in ("", "fixed 4", "adapt(0, 4)"):
        table.add_column(column)
    f, a = results["fixed"], results["adaptive"]
    table.add_row(
        "worker-pod-seconds", f"{f['worker_pod_seconds']:.0f}", f"{a['worker_pod_seconds']:.0f}"
    )
    table.add_row("wall seconds", f"{f['wall_seconds']:.0f}", f"{a['wall_seconds']:.0f}")
    table.add_row("adaptive / fixed", "", f"{ratio:.2f}")
    table.add_row(
        "last task -> zero workers (s)", "-", f"{a['seconds_last_task_to_zero_workers']:.0f}"
    )
    table.add_row(f"SIGKILL -> no object (s), no_client_timeout={args.no_client_timeout}", "",
                  f"{sigkill:.0f}")  # fmt: skip
    console.print(table)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2))
    console.print(f"written to {args.json}")


if __name__ == "__main__":
    main()
