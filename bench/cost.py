"""What adaptive scaling costs: worker-pod-seconds of bursty workloads, adapt(0, 4) against 4 fixed.

Each workload runs on a cluster with 4 fixed workers and on one with
``adapt(0, 4)`` (and on one per extra ``--adapt`` setting), alternating
(fixed, adaptive, fixed, adaptive, ...), ``--repeat`` times:

``bursty``
    3 bursts of 200 tasks of 0.5 s, 90 s idle between them (goal: adaptive
    <= 0.45 of fixed).
``short-gaps``
    5 such bursts, 5 s between them: adaptive must not cost more than fixed.
``smoke``
    2 bursts of 40 tasks, 20 s apart: a check of the benchmark itself.

Every second the worker pods are counted (worker-pod-seconds: what a cloud
bills), each in its state: starting (never Ready yet), Ready while a burst runs,
Ready between bursts, retired (Ready once, no longer), terminating. Both modes
wait ``--tail`` seconds after the last task before the cluster is deleted;
adaptive also until it reached zero workers (at most 600 s). Also measured:

- scale events: every change of the worker Deployment's replicas, with its
  time since the cluster was asked for, and the scheduler plugin's own lines
  (``minimaldask adapt: A -> B workers``); a change that reverses the one
  before it less than 30 s later is a flap;
- keys computed twice: a result stored twice (``processing -> memory`` more
  than once, as ``tests/testutil.computed_more_than_once`` counts it), and,
  apart, keys started twice (``processing`` more than once: a task queued on a
  worker that left and sent to another, computed once);
- where the adaptive pod-seconds go after each burst: waiting for the first
  step down, then the staircase of steps to zero (what a direct step to zero
  would save at most);
- seconds from the last task to zero worker pods, and from a client's SIGKILL
  to no object of its cluster left.

On the local Kubernetes, as root (it makes a namespace of its own for the
namespace-only user and deletes it at the end; the clusters run as that user):

    python bench/cost.py [--repeat 1] [--workloads bursty,short-gaps]
    python bench/cost.py --workloads bursty --adapt 'cooldown=15;cooldown=10,min_worker_age=5'

The image is this checkout's, tagged by its sources as the e2e tests tag it
(built and pushed to the local registry unless it is there). Prints a table per
workload and writes JSON (``--json``, default bench/results/cost.json).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import itertools
import json
import os
import re
import secrets
import signal
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import distributed
from distributed import Client
from rich.console import Console
from rich.table import Table

from minimaldask import MinimalCluster, delete_dask_cluster
from minimaldask.contract import label_selector
from minimaldask.kubernetes import api as kube
from minimaldask.kubernetes.backend import KubernetesBackend
from minimaldask.kubernetes.objects import DEPLOYMENT, POD

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools" / "localkube"))
sys.path.insert(0, str(ROOT / "tests"))
import localkube  # noqa: E402
from _machine import machine  # noqa: E402
from api_calls import checkout_image  # noqa: E402  (the e2e image: tag from testutil.source_hash)
from testutil import computed_more_than_once  # noqa: E402

#: A scale event that reverses the one before it within this many seconds is a flap.
FLAP_WINDOW = 30.0
STATES = ("starting", "ready_busy", "ready_idle", "retired", "terminating")
#: Keep every transition of a run, so that keys computed twice can be counted.
FULL_LOG = {"DASK_DISTRIBUTED__ADMIN__LOW_LEVEL_LOG_LENGTH": "1000000"}
GOALS = {"bursty": 0.45, "short-gaps": 1.0}
ADAPT_LINE = re.compile(r"minimaldask adapt: (\d+) -> (\d+) workers(.*)$")
console = Console(width=150)


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
    "smoke": Workload("smoke", bursts=2, gap=20, tasks=40),
}


def parse_adapt(text: str) -> dict[str, float]:
    """``cooldown=15,min_worker_age=5`` as adapt()'s keyword arguments; ``default``: none."""
    if text.strip() in ("", "default"):
        return {}
    out = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        key = key.strip()
        if key not in ("cooldown", "min_worker_age") or not value:
            raise SystemExit(
                f"invalid --adapt setting {part!r}: expected cooldown=SECONDS or "
                "min_worker_age=SECONDS, comma-separated (e.g. cooldown=15,min_worker_age=5)"
            )
        out[key] = float(value)
    return out


def adapt_label(settings: dict[str, float]) -> str:
    """How the setting reads as a call."""
    return "adapt(0, 4" + "".join(f", {k}={v:g}" for k, v in settings.items()) + ")"


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
        self.errors = 0
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
            except Exception as e:
                # Said; the span until the next sample counts with the state seen before.
                self.errors += 1
                console.print(f"  [yellow]meter: {e!r}; this second counts as the one before[/]")
                await asyncio.sleep(1)
                continue
            states = Counter(s for p in pods if (s := _pod_state(p, ever_ready)))
            replicas = int(dep.get("spec", {}).get("replicas") or 0) if dep else None
            self.samples.append((time.monotonic(), states, replicas))
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - began)))

    def __enter__(self) -> PodMeter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def pod_seconds(
        self, bursts: list[tuple[float, float]], since: float = 0.0, until: float = float("inf")
    ) -> dict[str, float]:
        """Worker-pod-seconds by state in [since, until) (Ready: during a burst or between)."""
        out = dict.fromkeys(STATES, 0.0)
        for (t, states, _), (t_next, _, _) in itertools.pairwise(self.samples):
            t, t_next = max(t, since), min(t_next, until)
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

    def replica_changes(self) -> list[tuple[float, int, int]]:
        """(monotonic time, from, to) of every change of the Deployment's replicas."""
        changes, last = [], None
        for t, _, replicas in self.samples:
            if replicas is None:
                continue
            if last is not None and replicas != last:
                changes.append((t, last, replicas))
            last = replicas
        return changes


def flaps(changes: list[tuple[float, int, int]]) -> list[tuple[float, float]]:
    """(time, time) of each change that reverses the one before within :data:`FLAP_WINDOW`."""
    return [
        (t1, t2)
        for (t1, a1, b1), (t2, a2, b2) in itertools.pairwise(changes)
        if (b1 - a1) * (b2 - a2) < 0 and t2 - t1 < FLAP_WINDOW
    ]


def descents(
    meter: PodMeter, windows: list[tuple[float, float]], changes: list[tuple[float, int, int]]
) -> list[dict[str, float | None]]:
    """After each burst: seconds and pod-seconds until the first step down, then until zero."""
    out: list[dict[str, float | None]] = []
    for i, (_, end) in enumerate(windows):
        nxt = windows[i + 1][0] if i + 1 < len(windows) else float("inf")
        downs = [(t, a, b) for t, a, b in changes if end <= t < nxt and b < a]
        first = downs[0][0] if downs else None
        zero = next((t for t, _, b in downs if b == 0), None)
        wait = sum(meter.pod_seconds(windows, end, first or nxt).values())
        stair = sum(meter.pod_seconds(windows, first, zero).values()) if first and zero else None
        out.append(
            {
                "seconds_to_first_step_down": None if first is None else first - end,
                "seconds_to_zero": None if zero is None else zero - end,
                "steps": len(downs),
                "pod_seconds_before_first_step": wait,
                "pod_seconds_first_step_to_zero": stair,
            }
        )
    return out


# -- what the scheduler saw ---------------------------------------------------------------------


def started_more_than_once(client: Client, keys: list[str]) -> dict[str, int]:
    """Keys that went to ``processing`` more than once (from the same transition log)."""
    log = client.run_on_scheduler(
        lambda dask_scheduler: [t[0] for t in dask_scheduler.transition_log if t[2] == "processing"]
    )
    wanted = set(keys)
    return {k: n for k, n in Counter(k for k in log if k in wanted).items() if n > 1}


def adapt_lines(cluster: MinimalCluster) -> list[tuple[float, str]]:
    """(epoch, message) of the plugin's scaling lines, from the scheduler pod's log.

    Not from the scheduler's own log deque: that keeps only ``distributed.scheduler``'s lines.
    """
    out = []
    for text in cluster.get_logs(cluster=False, scheduler=True, workers=False).values():
        for line in text.splitlines():
            if match := ADAPT_LINE.search(line):
                when = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
                out.append((when.replace(tzinfo=datetime.timezone.utc).timestamp(), match[0]))
    return sorted(out)


# -- one run ------------------------------------------------------------------------------------


def bursts(client: Client, workload: Workload) -> tuple[list[tuple[float, float]], list[str]]:
    """Run the bursts: (submitted, last task done) of each, monotonic; and every key."""
    windows: list[tuple[float, float]] = []
    keys: list[str] = []
    for i in range(workload.bursts):
        submitted = time.monotonic()
        futures = client.map(time.sleep, [workload.task_seconds] * workload.tasks, pure=False)
        keys += [f.key for f in futures]
        distributed.wait(futures, timeout=600)
        if any(f.status != "finished" for f in futures):
            raise RuntimeError(f"burst {i + 1}: not every task finished within 600 s")
        windows.append((submitted, time.monotonic()))
        del futures  # nothing stays in memory between bursts
        console.print(f"    burst {i + 1}: {windows[-1][1] - submitted:.1f} s")
        if i < workload.bursts - 1:
            time.sleep(workload.gap)
    return windows, keys


def run(
    settings: dict[str, float] | None,
    workload: Workload,
    name: str,
    args: argparse.Namespace,
    namespace: str,
    image: str,
) -> dict[str, Any]:
    """One cluster, one workload (``settings`` None: 4 fixed workers); what it cost, how it scaled."""
    adaptive = settings is not None
    label = adapt_label(settings) if adaptive else "fixed 4"
    console.print(f"  {name}: {workload.name}, {label}")
    with PodMeter(namespace, name) as meter:
        t0, wall0 = time.monotonic(), time.time()
        cluster = MinimalCluster(
            name=name,
            namespace=namespace,
            workers=0 if adaptive else 4,
            image=image,
            image_pull_policy="IfNotPresent",
            resources={"cpu": args.cpu, "memory": args.memory},
            scheduler_resources={"cpu": "100m", "memory": "384Mi"},
            idle_timeout=None,
            no_client_timeout=None,
            env=FULL_LOG,
            quiet=True,
        )
        try:
            with Client(cluster) as client:
                if adaptive:
                    cluster.adapt(0, 4, **settings)
                windows, keys = bursts(client, workload)
                last_task = windows[-1][1]
                while time.monotonic() - last_task < args.tail or (
                    adaptive and meter.current and time.monotonic() - last_task < 600
                ):
                    time.sleep(1)
                if adaptive and meter.current:
                    console.print(
                        f"  [yellow]{name}: not at zero workers 600 s after the last task[/]"
                    )
                stored_twice = computed_more_than_once(client, keys)
                started_twice = started_more_than_once(client, keys)
                lines = adapt_lines(cluster)
        finally:
            cluster.close()
        end = time.monotonic()
    if len(meter.samples) < (end - t0) / 2:
        raise RuntimeError(
            f"{name}: the pod meter took {len(meter.samples)} samples in {end - t0:.0f} s "
            f"({meter.errors} failed): its worker-pod-seconds would be wrong"
        )
    # A fixed cluster reaches zero only when it is deleted: not a figure of its own.
    zero = next((t for t, s, _ in meter.samples if t > last_task and not sum(s.values())), None)
    zero = zero if adaptive else None
    changes = meter.replica_changes()
    states = meter.pod_seconds(windows)

    def rel(t: float) -> float:
        return round(t - t0, 1)

    return {
        "mode": "adaptive" if adaptive else "fixed",
        "label": label,
        "adapt": settings,
        "workload": workload.name,
        "name": name,
        "worker_pod_seconds": sum(states.values()),
        "worker_pod_seconds_to_last_task": sum(
            meter.pod_seconds(windows, until=last_task).values()
        ),
        "pod_seconds_by_state": states,
        "wall_seconds": end - t0,
        "bursts": [{"submitted": rel(s), "seconds": round(e - s, 1)} for s, e in windows],
        "seconds_last_task_to_zero_workers": None if zero is None else zero - last_task,
        "scale_events": [{"t": rel(t), "from": a, "to": b} for t, a, b in changes],
        "plugin_lines": [{"t": round(t - wall0, 1), "line": msg} for t, msg in lines],
        "flaps": [[rel(a), rel(b)] for a, b in flaps(changes)],
        "descents": descents(meter, windows, changes) if adaptive else [],
        "keys": len(keys),
        "keys_computed_twice": stored_twice,
        "keys_started_twice": started_twice,
        "meter_errors": meter.errors,
    }


def sigkill_to_nothing_left(args: argparse.Namespace, namespace: str, image: str) -> float:
    """Seconds from a client's SIGKILL until no object of its cluster is left."""
    name = f"cost-{args.run_id}-sigkill"
    script = textwrap.dedent(
        f"""
        import time
        from minimaldask import MinimalCluster
        MinimalCluster(name={name!r}, namespace={namespace!r}, image={image!r}, workers=1,
                       image_pull_policy="IfNotPresent",
                       resources={{"cpu": {args.cpu!r}, "memory": {args.memory!r}}},
                       scheduler_resources={{"cpu": "100m", "memory": "384Mi"}},
                       no_client_timeout={args.no_client_timeout!r}, quiet=True)
        print("up", flush=True)
        time.sleep(3600)
        """
    )
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None
        if owner.stdout.readline().strip() != "up":
            raise RuntimeError("the SIGKILL client did not start its cluster")
        owner.send_signal(signal.SIGKILL)
        owner.wait(timeout=30)
        t = time.monotonic()
        while asyncio.run(KubernetesBackend.leftovers(name, namespace)):
            if time.monotonic() - t > 600:
                raise RuntimeError(f"cluster {name} still has objects 600 s after the SIGKILL")
            time.sleep(1)
        return time.monotonic() - t
    finally:
        owner.kill()
        delete_dask_cluster(namespace=namespace, name=name)


# -- the report ---------------------------------------------------------------------------------


def _median(values: list[Any]) -> float:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per setting: medians, and the ratio to the fixed run of the same round."""
    fixed = {r["round"]: r for r in runs if r["mode"] == "fixed"}
    out: dict[str, Any] = {"fixed 4": _medians([r for r in runs if r["mode"] == "fixed"])}
    for label in dict.fromkeys(r["label"] for r in runs if r["mode"] == "adaptive"):
        mine = [r for r in runs if r["label"] == label and r["round"] in fixed]
        ratios = [r["worker_pod_seconds"] / fixed[r["round"]]["worker_pod_seconds"] for r in mine]
        out[label] = {
            **_medians(mine),
            "ratio_per_round": ratios,
            "ratio_median": _median(ratios),
            "ratio_to_last_task_median": _median(
                [
                    r["worker_pod_seconds_to_last_task"]
                    / fixed[r["round"]]["worker_pod_seconds_to_last_task"]
                    for r in mine
                ]
            ),
        }
    return out


def at_a_burst(r: dict[str, Any]) -> list[list[float]]:
    """The run's flaps whose second change came within 5 s of a burst's submission.

    Those are the workload's doing (new work after a step down), not the policy's.
    """
    starts = [b["submitted"] for b in r["bursts"]]
    return [f for f in r["flaps"] if any(0 <= f[1] - s <= 5 for s in starts)]


def _medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "runs": len(runs),
        **{
            f"{key}_median": _median([r[key] for r in runs])
            for key in (
                "worker_pod_seconds",
                "worker_pod_seconds_to_last_task",
                "wall_seconds",
                "seconds_last_task_to_zero_workers",
            )
        },
        "scale_events_median": _median([len(r["scale_events"]) for r in runs]),
        "flaps": sum(len(r["flaps"]) for r in runs),
        "flaps_at_a_burst": sum(len(at_a_burst(r)) for r in runs),
        "keys_computed_twice": sum(len(r["keys_computed_twice"]) for r in runs),
        "keys_started_twice": sum(len(r["keys_started_twice"]) for r in runs),
    }


def table(workload: Workload, runs: list[dict[str, Any]], summary: dict[str, Any]) -> Table:
    """One table per workload: a column per setting, medians over the rounds."""
    labels = list(summary)
    goal = GOALS.get(workload.name)
    t = Table(
        title=f"{workload.name}: {workload.bursts} bursts of {workload.tasks} x "
        f"{workload.task_seconds:g} s tasks, {workload.gap:g} s apart; median of "
        f"{summary['fixed 4']['runs']} round(s), alternating"
        + (f"; goal adaptive / fixed <= {goal:g}" if goal else "")
    )
    t.add_column("")
    for label in labels:
        t.add_column(label, justify="right")

    def by(f: Any) -> list[str]:
        return [f([r for r in runs if r["label"] == label], summary[label]) for label in labels]

    def med(key: Any, fmt: str = "{:.0f}") -> Any:
        def cell(rs: list[dict[str, Any]], _s: Any) -> str:
            value = _median([key(r) for r in rs])
            return "-" if value != value else fmt.format(value)  # NaN: none measured

        return cell

    t.add_row("worker-pod-seconds", *by(lambda rs, s: f"{s['worker_pod_seconds_median']:.0f}"))
    t.add_row(
        "adaptive / fixed",
        *by(
            lambda rs, s: (
                f"{s['ratio_median']:.2f}"
                + (
                    f" ({', '.join(f'{x:.2f}' for x in s['ratio_per_round'])})"
                    if len(rs) > 1
                    else ""
                )
                if "ratio_median" in s
                else ""
            )
        ),
    )
    t.add_row(
        "  to the last task only",
        *by(lambda rs, s: f"{s['ratio_to_last_task_median']:.2f}" if "ratio_median" in s else ""),
    )
    for state in STATES:
        t.add_row(
            f"  {state.replace('_', ' ')}",
            *by(med(lambda r, s=state: r["pod_seconds_by_state"][s])),
        )
    for i in range(workload.bursts):
        t.add_row(
            f"burst {i + 1} (s)", *by(med(lambda r, i=i: r["bursts"][i]["seconds"], "{:.1f}"))
        )
    t.add_row("wall seconds", *by(med(lambda r: r["wall_seconds"])))
    t.add_row(
        "last task -> zero workers (s)", *by(med(lambda r: r["seconds_last_task_to_zero_workers"]))
    )
    t.add_row("scale events (replicas changed)", *by(med(lambda r: len(r["scale_events"]))))
    t.add_row(
        "flaps, reversal < 30 s (all rounds)",
        *by(lambda rs, s: f"{s['flaps']} ({s.get('flaps_at_a_burst', 0)} at a burst's start)"),
    )
    t.add_row("keys computed twice (all rounds)", *by(lambda rs, s: str(s["keys_computed_twice"])))
    t.add_row("keys started twice (all rounds)", *by(lambda rs, s: str(s["keys_started_twice"])))
    return t


def print_events(r: dict[str, Any]) -> None:
    """The scale events of one run, with their times since the cluster was asked for."""
    shown = ", ".join(f"{b['submitted']:.0f}s (+{b['seconds']:.0f}s)" for b in r["bursts"])
    console.print(f"  {r['name']} {r['label']}: bursts at {shown}")
    events = "; ".join(f"{e['t']:.0f}s {e['from']}->{e['to']}" for e in r["scale_events"])
    console.print(f"    replicas ({len(r['scale_events'])} changes): {events or '-'}")
    for line in r["plugin_lines"]:
        console.print(f"    plugin {line['t']:.0f}s: {line['line']}")
    for i, d in enumerate(r["descents"], 1):
        if d["seconds_to_first_step_down"] is None:
            console.print(f"    after burst {i}: no step down")
            continue
        stair = d["pod_seconds_first_step_to_zero"]
        console.print(
            f"    after burst {i}: first step down at +{d['seconds_to_first_step_down']:.0f}s "
            f"({d['pod_seconds_before_first_step']:.0f} pod-s), "
            + (
                f"zero at +{d['seconds_to_zero']:.0f}s in {d['steps']} steps ({stair:.0f} pod-s)"
                if stair is not None
                else f"{d['steps']} steps, not at zero before the next burst"
            )
        )
    console.print(
        f"    keys {r['keys']}: computed twice {len(r['keys_computed_twice'])}, started twice "
        f"{len(r['keys_started_twice'])}; flaps {len(r['flaps'])}"
        + (f" at {r['flaps']}, {len(at_a_burst(r))} at a burst's start" if r["flaps"] else "")
    )


def main() -> None:
    """Run the workloads, alternating fixed and adaptive; print the tables; write the JSON."""
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--namespace", default="bench-cost",
                        help="made for the run and deleted after it")  # fmt: skip
    parser.add_argument("--image", help="default: this checkout's, built and pushed if needed")
    parser.add_argument("--workloads", default="bursty,short-gaps",
                        help=f"comma-separated, of {', '.join(WORKLOADS)}")  # fmt: skip
    parser.add_argument(
        "--adapt",
        default="default",
        help="adapt() settings to run, ';'-separated, each 'default' (the product's) or "
        "e.g. 'cooldown=15,min_worker_age=5'",
    )
    parser.add_argument("--repeat", type=int, default=3, help="rounds (fixed, then each setting)")
    parser.add_argument("--cpu", default="200m", help="cpu request of each worker")
    parser.add_argument("--memory", default="384Mi", help="memory of each worker")
    parser.add_argument("--tail", type=float, default=60, help="idle seconds after the last task")
    parser.add_argument("--no-client-timeout", default="20s", help="of the SIGKILL cluster")
    parser.add_argument("--no-sigkill", action="store_true", help="skip the SIGKILL measurement")
    parser.add_argument("--json", default="bench/results/cost.json")
    parser.add_argument("--show", metavar="JSON", help="print the tables of an earlier run")
    args = parser.parse_args()
    if args.show:
        show(args.show)
        return
    unknown = [w for w in args.workloads.split(",") if w not in WORKLOADS]
    if unknown:
        sys.exit(f"unknown workload(s) {unknown}: choose from {', '.join(WORKLOADS)}")
    workloads = [WORKLOADS[w] for w in args.workloads.split(",")]
    settings = [parse_adapt(s) for s in args.adapt.split(";")]
    if not localkube.is_up():
        sys.exit(
            "the local Kubernetes is not up: python3 tools/localkube/localkube.py up (as root)"
        )
    if os.geteuid() != 0:
        sys.exit("run this as root: it makes the namespace for the namespace-only user")
    args.run_id = secrets.token_hex(2)
    image = args.image or checkout_image()
    report: dict[str, Any] = {
        "machine": machine(),
        "image": image,
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "workloads": {},
    }
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    namespace = args.namespace
    localkube.apply(localkube.namespace_user_objects(namespace))
    # The clusters run as the namespace-only user, as a user of a shared cluster would.
    os.environ["KUBECONFIG"] = str(localkube.USER_KUBECONFIG)
    try:
        for workload in workloads:
            runs: list[dict[str, Any]] = []
            entry = report["workloads"][workload.name] = {
                "workload": vars(workload),
                "goal_adaptive_over_fixed": GOALS.get(workload.name),
                "runs": runs,
            }
            for i in range(1, args.repeat + 1):
                for j, setting in enumerate([None, *settings]):
                    mode = "f" if setting is None else f"a{j}"
                    name = f"cost-{args.run_id}-{workload.name[:5]}-{i}-{mode}"
                    try:
                        r = run(setting, workload, name, args, namespace, image)
                    finally:
                        delete_dask_cluster(namespace=namespace, name=name)
                    r["round"] = i
                    runs.append(r)
                    print_events(r)
                    # Written after every run: a failure later keeps what was measured.
                    entry["summary"] = summarize(runs)
                    out.write_text(json.dumps(report, indent=2))
            console.print(table(workload, runs, entry["summary"]))
        if not args.no_sigkill:
            report["seconds_sigkill_to_no_object"] = sigkill_to_nothing_left(args, namespace, image)
            console.print(
                f"SIGKILL -> no object: {report['seconds_sigkill_to_no_object']:.0f} s "
                f"(no_client_timeout={args.no_client_timeout})"
            )
    finally:
        localkube.kubectl("delete", "namespace", namespace, "--timeout=180s", timeout=200)
    out.write_text(json.dumps(report, indent=2))
    print_machine(report["machine"])
    console.print(f"written to {out}")


def print_machine(m: dict[str, Any]) -> None:
    """The date and the machine, under the tables."""
    console.print(
        f"{m['date']}, {m['nproc']} cores ({m['cpu']}), {m['ram_gib']} GiB, "
        f"load average at start {m['load_average'][0]:.1f}"
    )


def show(path: str) -> None:
    """The tables and scale events of an earlier run's JSON."""
    report = json.loads(Path(path).read_text())
    for entry in report["workloads"].values():
        for r in entry["runs"]:
            print_events(r)
        console.print(table(Workload(**entry["workload"]), entry["runs"], summarize(entry["runs"])))
    print_machine(report["machine"])


if __name__ == "__main__":
    main()
