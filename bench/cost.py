"""What adaptive scaling costs: worker-pod-seconds of bursty workloads, adapt(0, 4) against 4 fixed.

Two workloads, each run on a cluster with ``adapt(0, 4)`` and on one with 4
fixed workers, alternating (fixed, adaptive, fixed, ...), ``--repeat`` times:

``bursty``
    3 bursts of 200 tasks of 0.5 s, 90 s idle between them.
``short-gaps``
    5 such bursts, 5 s between them: adaptive scaling must not cost more.

Every second the worker pods are counted (worker-pod-seconds: what a cloud
bills), each in its state: starting (never Ready yet), Ready while a burst runs,
Ready between bursts, retired (Ready once, no longer), terminating. Both modes
wait ``--tail`` seconds after the last task before the cluster is deleted
(adaptive: and until it reached zero workers). Also measured:

- scale events: every change of the adaptive target (the scheduler's
  ``minimaldask-adapt`` events) and every change of the worker Deployment's
  replicas, with their times; a reversal less than 30 s after the change
  before it counts as flapping;
- keys computed twice: a scheduler plugin counts each key's transitions to
  ``processing`` (a key started again after it was lost or rescheduled);
- seconds from the last task to zero worker pods, and from a client's SIGKILL
  to no object of its cluster left.

On the local Kubernetes, as the namespace-only user, one command (it builds the
image of this checkout and pushes it to the local registry, tagged by the
sources, unless the registry has it):

    python bench/cost.py [--repeat 3] [--workloads bursty,short-gaps]

``--image REF`` uses an image already pushed; give it a tag of its own, since
with the default pull policy (``IfNotPresent``, the product's default) a node
keeps what it pulled once. Prints a table per workload and writes JSON
(``--json``, default bench/results/cost.json).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import distributed
from distributed import Client
from distributed.diagnostics.plugin import SchedulerPlugin
from rich.console import Console
from rich.table import Table

from minimaldask import MinimalCluster, delete_dask_cluster
from minimaldask.contract import label_selector
from minimaldask.kubernetes import api as kube
from minimaldask.kubernetes.backend import KubernetesBackend
from minimaldask.kubernetes.objects import DEPLOYMENT, POD
from minimaldask.spec import default_image_tag

ROOT = Path(__file__).resolve().parents[1]
LOCALKUBE_USER = Path("/var/lib/localkube/user.kubeconfig")
#: A scale event that reverses the one before it within this many seconds is flapping.
FLAP_WINDOW = 30.0
STATES = ("starting", "ready_busy", "ready_idle", "retired", "terminating")
console = Console()


@dataclass(frozen=True)
class Workload:
    """Bursts of ``tasks`` sleeps of ``task_seconds``, ``gap`` idle seconds apart."""

    name: str
    bursts: int
    gap: float
    tasks: int = 200
    task_seconds: float = 0.5


WORKLOADS = {
    "bursty": Workload("bursty", bursts=3, gap=90),
    "short-gaps": Workload("short-gaps", bursts=5, gap=5),
    # A check of the benchmark itself, in about two minutes a pair.
    "smoke": Workload("smoke", bursts=2, gap=20, tasks=40),
}


# -- the image ----------------------------------------------------------------------------------


def source_digest() -> str:
    """A digest of minimaldask's sources: what an image built from them depends on."""
    h = hashlib.sha256()
    for path in sorted((ROOT / "src" / "minimaldask").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            h.update(str(path.relative_to(ROOT)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def ensure_image(repository: str) -> str:
    """The image of this checkout in the local registry (built and pushed if missing)."""
    sys.path.insert(0, str(ROOT / "tools" / "localkube"))
    import localkube  # the local Kubernetes's registry addresses

    tag = f"{default_image_tag()}-{source_digest()}"
    request = urllib.request.Request(
        f"http://{localkube.REGISTRY_LISTEN}/v2/{repository}/manifests/{tag}",
        method="HEAD",
        headers={"Accept": "application/vnd.oci.image.index.v1+json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10):
            console.print(f"image {repository}:{tag} is in the local registry")
    except urllib.error.HTTPError as e:
        if e.code != 404:
            raise
        push = f"{localkube.REGISTRY_LISTEN}/{repository}:{tag}"
        console.print(f"building the image of this checkout: {push}")
        subprocess.run(
            [sys.executable, "-m", "minimaldask.image", "build", "--push", push, "--insecure"],
            check=True,
            timeout=1800,
        )
    return f"{localkube.REGISTRY}/{repository}:{tag}"


# -- what the scheduler saw ---------------------------------------------------------------------


class Recomputations(SchedulerPlugin):
    """Counts, per key, how often it went to ``processing``: more than once is computed twice."""

    name = "bench-recomputations"

    def __init__(self) -> None:
        self.processing: Counter[str] = Counter()
        self.memory: Counter[str] = Counter()

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        """Count starts and completions."""
        if finish == "processing":
            self.processing[str(key)] += 1
        elif finish == "memory":
            self.memory[str(key)] += 1

    def summary(self) -> dict[str, Any]:
        """Keys started, keys started more than once, keys completed more than once."""
        twice = {k: n for k, n in self.processing.items() if n > 1}
        return {
            "keys": len(self.processing),
            "started_more_than_once": len(twice),
            "completed_more_than_once": sum(1 for n in self.memory.values() if n > 1),
            "examples": sorted(twice.items())[:5],
        }


def recomputations(client: Client) -> dict[str, Any]:
    """The plugin's summary, from the scheduler."""
    return client.run_on_scheduler(
        lambda dask_scheduler: dask_scheduler.plugins[Recomputations.name].summary()
    )


# -- the worker pods ----------------------------------------------------------------------------


def _pod_state(pod: dict[str, Any], ever_ready: set[str]) -> str | None:
    meta, status = pod["metadata"], pod.get("status") or {}
    if meta.get("deletionTimestamp"):
        return "terminating"
    if status.get("phase") in ("Failed", "Succeeded"):
        return None
    conditions = status.get("conditions") or []
    if any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
        ever_ready.add(meta["name"])
        return "ready"
    return "retired" if meta["name"] in ever_ready else "starting"


class PodMeter:
    """Samples the worker pods (by state) and the worker Deployment's replicas, once a second."""

    def __init__(self, namespace: str, name: str) -> None:
        self.namespace, self.name = namespace, name
        #: (monotonic time, pods by state, replicas asked)
        self.samples: list[tuple[float, Counter[str], int | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    @property
    def current(self) -> int:
        """Worker pods in the latest sample."""
        return sum(self.samples[-1][1].values()) if self.samples else 0

    async def _run(self) -> None:
        api = await kube.connect()
        ever_ready: set[str] = set()
        selector = label_selector(self.name, "worker")
        deployment = f"{self.name}-worker"
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                pods = await kube.list_objects(api, POD, self.namespace, selector)
                dep = await kube.get(api, DEPLOYMENT, self.namespace, deployment)
            except Exception as e:  # a slow API server: this second is counted with the next
                console.print(f"  [yellow]meter: {e!r}[/]")
                await asyncio.sleep(1)
                continue
            states = Counter(s for p in pods if (s := _pod_state(p, ever_ready)))
            replicas = int((dep or {}).get("spec", {}).get("replicas") or 0) if dep else None
            self.samples.append((time.monotonic(), states, replicas))
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - began)))

    def __enter__(self) -> PodMeter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def pod_seconds(
        self, bursts: list[tuple[float, float]], until: float | None = None
    ) -> dict[str, float]:
        """Worker-pod-seconds by state (Ready split into during a burst and between), up to ``until``."""
        out = dict.fromkeys(STATES, 0.0)
        for (t, states, _), (t_next, _, _) in itertools.pairwise(self.samples):
            if until is not None:
                t_next = min(t_next, until)
            if t_next <= t:
                continue
            span = t_next - t
            busy = sum(max(0.0, min(t_next, e) - max(t, s)) for s, e in bursts)
            for state, n in states.items():
                if state == "ready":
                    out["ready_busy"] += n * busy
                    out["ready_idle"] += n * (span - busy)
                else:
                    out[state] += n * span
        return out

    def replica_changes(self, t0: float) -> list[tuple[float, int, int]]:
        """(seconds since ``t0``, from, to) for every change of the Deployment's replicas."""
        changes, last = [], None
        for t, _, replicas in self.samples:
            if replicas is None:
                continue
            if last is not None and replicas != last:
                changes.append((round(t - t0, 1), last, replicas))
            last = replicas
        return changes


def flaps(changes: list[tuple[float, int, int]]) -> int:
    """Scale events that reverse the one before within :data:`FLAP_WINDOW` seconds."""
    count = 0
    for (t1, a1, b1), (t2, a2, b2) in itertools.pairwise(changes):
        if (b1 - a1) * (b2 - a2) < 0 and t2 - t1 < FLAP_WINDOW:
            count += 1
    return count


# -- one run ------------------------------------------------------------------------------------


def bursts(client: Client, workload: Workload) -> list[tuple[float, float]]:
    """Run the bursts; (submitted, last task done) of each, monotonic."""
    windows = []
    for i in range(workload.bursts):
        submitted = time.monotonic()
        futures = client.map(time.sleep, [workload.task_seconds] * workload.tasks, pure=False)
        distributed.wait(futures, timeout=600)
        windows.append((submitted, time.monotonic()))
        del futures
        console.print(f"    burst {i + 1}: {windows[-1][1] - submitted:.1f} s")
        if i < workload.bursts - 1:
            time.sleep(workload.gap)
    return windows


def run(
    mode: str, workload: Workload, index: int, args: argparse.Namespace, namespace: str, image: str
) -> dict[str, Any]:
    """One cluster, one workload; what it cost and how it scaled."""
    name = f"cost-{mode[:5]}-{workload.name[:5]}-{index}"
    options = {
        "name": name,
        "namespace": namespace,
        "image": image,
        "image_pull_policy": args.pull_policy,
        "resources": {"cpu": args.cpu, "memory": args.memory},
        "scheduler_resources": {"cpu": "100m", "memory": "384Mi"},
        "idle_timeout": None,
        "no_client_timeout": None,
        "quiet": True,
    }
    console.print(f"  {workload.name} #{index} {mode}: starting")
    with PodMeter(namespace, name) as meter:
        t0 = time.monotonic()
        wall0 = time.time()
        cluster = MinimalCluster(workers=0 if mode == "adaptive" else 4, **options)
        try:
            with Client(cluster) as client:
                client.register_plugin(Recomputations())
                if mode == "adaptive":
                    cluster.adapt(0, 4, cooldown=args.cooldown, min_worker_age=args.min_worker_age)
                windows = bursts(client, workload)
                last_task = windows[-1][1]
                while time.monotonic() - last_task < args.tail or (
                    mode == "adaptive" and meter.current and time.monotonic() - last_task < 600
                ):
                    time.sleep(1)
                to_zero = None
                if mode == "adaptive":
                    zero = next(
                        (t for t, s, _ in meter.samples if t > last_task and not sum(s.values())),
                        None,
                    )
                    to_zero = zero - last_task if zero is not None else None
                computed = recomputations(client)
                events = [
                    {"t": round(t - wall0, 1), **msg}
                    for t, msg in client.get_events("minimaldask-adapt")
                    if isinstance(msg, dict)
                ]
        finally:
            cluster.close()
        end = time.monotonic()
    states = meter.pod_seconds(windows)
    active = meter.pod_seconds(windows, until=last_task)
    changes = meter.replica_changes(t0)
    return {
        "mode": mode,
        "workload": workload.name,
        "index": index,
        "worker_pod_seconds": sum(states.values()),
        "worker_pod_seconds_to_last_task": sum(active.values()),
        "pod_seconds_by_state": states,
        "wall_seconds": end - t0,
        "bursts": [{"submitted": round(s - t0, 1), "seconds": round(e - s, 1)} for s, e in windows],
        "seconds_last_task_to_zero_workers": to_zero,
        "replica_changes": changes,
        "target_changes": events,
        "flaps": flaps(changes),
        "recomputations": computed,
    }


def sigkill_to_nothing_left(args: argparse.Namespace, namespace: str, image: str) -> float:
    """Seconds from a client's SIGKILL until no object of its cluster is left."""
    name = "cost-sigkill"
    script = textwrap.dedent(
        f"""
        import time
        from minimaldask import MinimalCluster
        MinimalCluster(name={name!r}, namespace={namespace!r}, image={image!r}, workers=1,
                       image_pull_policy={args.pull_policy!r},
                       resources={{"cpu": {args.cpu!r}, "memory": {args.memory!r}}},
                       scheduler_resources={{"cpu": "100m", "memory": "384Mi"}},
                       no_client_timeout={args.no_client_timeout!r}, quiet=True)
        print("up", flush=True)
        time.sleep(3600)
        """
    )
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert owner.stdout is not None
    if owner.stdout.readline().strip() != "up":
        raise RuntimeError("the SIGKILL client did not start its cluster")
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    t = time.monotonic()
    while asyncio.run(KubernetesBackend.leftovers(name, namespace)) and time.monotonic() - t < 600:
        time.sleep(1)
    return time.monotonic() - t


# -- the report ---------------------------------------------------------------------------------


def _median(runs: list[dict[str, Any]], key: str) -> float:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else float("nan")


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians per mode, and the ratio adaptive / fixed of each alternating pair."""
    fixed = [r for r in runs if r["mode"] == "fixed"]
    adaptive = [r for r in runs if r["mode"] == "adaptive"]
    pairs = list(zip(fixed, adaptive, strict=False))
    ratios = [a["worker_pod_seconds"] / f["worker_pod_seconds"] for f, a in pairs]
    active = [
        a["worker_pod_seconds_to_last_task"] / f["worker_pod_seconds_to_last_task"]
        for f, a in pairs
    ]
    return {
        "runs": len(pairs),
        "ratio_per_pair": ratios,
        "ratio_median": statistics.median(ratios) if ratios else float("nan"),
        "ratio_to_last_task_per_pair": active,
        "ratio_to_last_task_median": statistics.median(active) if active else float("nan"),
        **{
            f"{mode}_{key}_median": _median(rs, key)
            for mode, rs in (("fixed", fixed), ("adaptive", adaptive))
            for key in ("worker_pod_seconds", "worker_pod_seconds_to_last_task", "wall_seconds")
        },
        "adaptive_seconds_last_task_to_zero_median": _median(
            adaptive, "seconds_last_task_to_zero_workers"
        ),
        "keys_started_more_than_once": sum(
            r["recomputations"]["started_more_than_once"] for r in runs
        ),
        "flaps": sum(r["flaps"] for r in runs),
    }


def table(workload: Workload, runs: list[dict[str, Any]], summary: dict[str, Any]) -> Table:
    """One table per workload: medians of each mode, their ratio, where the pod-seconds go."""
    fixed = [r for r in runs if r["mode"] == "fixed"]
    adaptive = [r for r in runs if r["mode"] == "adaptive"]
    t = Table(
        title=f"{workload.name}: {workload.bursts} bursts of {workload.tasks} x "
        f"{workload.task_seconds:g} s tasks, {workload.gap:g} s apart; "
        f"median of {summary['runs']} alternating pairs"
    )
    for column in ("", "fixed 4", "adapt(0, 4)", "adaptive / fixed"):
        t.add_column(column, justify="right")

    def med(rs: list[dict[str, Any]], f: Any) -> float:
        values = [f(r) for r in rs]
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else float("nan")

    t.add_row(
        "worker-pod-seconds",
        f"{summary['fixed_worker_pod_seconds_median']:.0f}",
        f"{summary['adaptive_worker_pod_seconds_median']:.0f}",
        f"{summary['ratio_median']:.2f} ({', '.join(f'{x:.2f}' for x in summary['ratio_per_pair'])})",
    )
    t.add_row(
        "  of which to the last task",
        f"{summary['fixed_worker_pod_seconds_to_last_task_median']:.0f}",
        f"{summary['adaptive_worker_pod_seconds_to_last_task_median']:.0f}",
        f"{summary['ratio_to_last_task_median']:.2f}",
    )
    for state in STATES:
        t.add_row(
            f"  {state.replace('_', ' ')}",
            f"{med(fixed, lambda r, s=state: r['pod_seconds_by_state'][s]):.0f}",
            f"{med(adaptive, lambda r, s=state: r['pod_seconds_by_state'][s]):.0f}",
            "",
        )
    for i in range(workload.bursts):
        t.add_row(
            f"burst {i + 1} (s)",
            f"{med(fixed, lambda r, i=i: r['bursts'][i]['seconds']):.1f}",
            f"{med(adaptive, lambda r, i=i: r['bursts'][i]['seconds']):.1f}",
            "",
        )
    t.add_row("wall seconds", f"{med(fixed, lambda r: r['wall_seconds']):.0f}",
              f"{med(adaptive, lambda r: r['wall_seconds']):.0f}", "")  # fmt: skip
    t.add_row(
        "last task -> zero workers (s)",
        "-",
        f"{summary['adaptive_seconds_last_task_to_zero_median']:.0f}",
        "",
    )
    t.add_row(
        "scale events (replicas changed)",
        f"{med(fixed, lambda r: len(r['replica_changes'])):.0f}",
        f"{med(adaptive, lambda r: len(r['replica_changes'])):.0f}",
        "",
    )
    t.add_row("flapping (all runs)", str(sum(r["flaps"] for r in fixed)),
              str(sum(r["flaps"] for r in adaptive)), "")  # fmt: skip
    t.add_row(
        "keys computed twice (all runs)",
        str(sum(r["recomputations"]["started_more_than_once"] for r in fixed)),
        str(sum(r["recomputations"]["started_more_than_once"] for r in adaptive)),
        "",
    )
    return t


def print_events(run_: dict[str, Any]) -> None:
    """The scale events of one adaptive run, with their times since the cluster was asked for."""
    bursts_ = ", ".join(f"{b['submitted']:.0f}+{b['seconds']:.0f}s" for b in run_["bursts"])
    console.print(f"  {run_['workload']} #{run_['index']} adaptive, bursts at {bursts_}")
    targets = [
        f"{e['t']:.1f}s {e.get('from')}->{e.get('to')}" + (f" ({e['why']})" if e.get("why") else "")
        for e in run_["target_changes"]
    ]
    console.print(f"    target changes ({len(targets)}): {'; '.join(targets) or '-'}")
    replicas = [f"{t:.1f}s {a}->{b}" for t, a, b in run_["replica_changes"]]
    console.print(f"    replicas changes ({len(replicas)}): {'; '.join(replicas) or '-'}")
    r = run_["recomputations"]
    console.print(
        f"    keys started {r['keys']}, more than once {r['started_more_than_once']}, "
        f"completed more than once {r['completed_more_than_once']}; flaps {run_['flaps']}"
    )


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return {
        "node": platform.node(),
        "nproc": os.cpu_count(),
        "ram_gib": round(pages / 2**30, 1),
        "cpu_model": model,
        "load_average_at_start": os.getloadavg(),
    }


def main() -> None:
    """Run the workloads, alternating fixed and adaptive; print the tables; write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--namespace", default=None)
    parser.add_argument("--image", default=None, help="an image already pushed (see above)")
    parser.add_argument("--repository", default="minimaldask-bench",
                        help="where the built image goes in the local registry")  # fmt: skip
    parser.add_argument("--pull-policy", default="IfNotPresent")
    parser.add_argument("--workloads", default="bursty,short-gaps")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cpu", default="200m")
    parser.add_argument("--memory", default="384Mi")
    parser.add_argument("--cooldown", type=float, default=15)
    parser.add_argument("--min-worker-age", type=float, default=5)
    parser.add_argument("--tail", type=float, default=60, help="idle seconds after the last task")
    parser.add_argument("--no-client-timeout", default="20s")
    parser.add_argument("--no-sigkill", action="store_true")
    parser.add_argument("--json", default="bench/results/cost.json")
    args = parser.parse_args()
    workloads = [WORKLOADS[w] for w in args.workloads.split(",")]
    if "KUBECONFIG" not in os.environ and LOCALKUBE_USER.exists():
        os.environ["KUBECONFIG"] = str(LOCALKUBE_USER)
    namespace = args.namespace or ("minimaldask-e2e" if LOCALKUBE_USER.exists() else "default")
    image = args.image or ensure_image(args.repository)
    started = time.strftime("%Y-%m-%d %H:%M")
    report: dict[str, Any] = {
        "date": started,
        "machine": machine(),
        "image": image,
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "workloads": {},
    }
    for workload in workloads:
        runs = []
        for i in range(1, args.repeat + 1):
            for mode in ("fixed", "adaptive"):
                try:
                    runs.append(run(mode, workload, i, args, namespace, image))
                finally:
                    delete_dask_cluster(
                        namespace=namespace, name=f"cost-{mode[:5]}-{workload.name[:5]}-{i}"
                    )
                if mode == "adaptive":
                    print_events(runs[-1])
        summary = summarize(runs)
        report["workloads"][workload.name] = {
            "workload": vars(workload),
            "summary": summary,
            "runs": runs,
        }
        console.print(table(workload, runs, summary))
    if not args.no_sigkill:
        try:
            report["seconds_sigkill_to_no_object"] = sigkill_to_nothing_left(args, namespace, image)
        finally:
            delete_dask_cluster(namespace=namespace, name="cost-sigkill")
        console.print(
            f"SIGKILL -> no object: {report['seconds_sigkill_to_no_object']:.0f} s "
            f"(no_client_timeout={args.no_client_timeout})"
        )
    m = report["machine"]
    console.print(
        f"{started}, {m['nproc']} cores ({m['cpu_model']}), {m['ram_gib']} GiB, "
        f"load average at start {m['load_average_at_start'][0]:.1f}"
    )
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2))
    console.print(f"written to {args.json}")


if __name__ == "__main__":
    main()
