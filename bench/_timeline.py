"""Where the seconds of a start (and of a close) go: one timeline from the client, the API server
and the pods.

Three sources, all on this machine's clock (the node is this machine):

- the pods, watched from the API server while the start runs (each milestone
  is when the watch saw it: created, scheduled, container running, Ready), and
  while the close runs (deleting, container ended, pod gone);
- the containers' own logs, with the runtime's timestamps (first line printed,
  scheduler listening, each worker registered);
- the client's requests, from the API server's audit log when it has one (first
  request, last apply) and the handle's own log lines.
"""

from __future__ import annotations

import asyncio
import datetime
import threading
import time
from typing import Any

import kr8s
import kr8s.asyncio

from minimaldask import contract

#: Log lines that mark a milestone, per container: (marker, milestone).
LOG_MARKS = {
    contract.SCHEDULER: [("Scheduler at:", "scheduler listening")],
    contract.WORKER: [
        ("Start worker at:", "worker listening"),
        ("Registered to:", "worker registered"),
    ],
}


def _rfc3339(value: str) -> float:
    """A runtime timestamp (nanoseconds, ``Z``) as a Unix time."""
    head, _, frac = value.rstrip("Z").partition(".")
    base = datetime.datetime.fromisoformat(head).replace(tzinfo=datetime.timezone.utc)
    return base.timestamp() + (float("0." + frac) if frac else 0.0)


class PodWatch:
    """Watch a cluster's pods in a thread of its own; the first time each milestone is seen."""

    def __init__(self, namespace: str, cluster: str) -> None:
        self.namespace = namespace
        self.cluster = cluster
        self.seen: dict[str, dict[str, float]] = {}
        self.component: dict[str, str] = {}
        self._ready = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=lambda: asyncio.run(self._watch()), daemon=True)

    def start(self) -> PodWatch:
        self._thread.start()
        if not self._ready.wait(30):
            raise TimeoutError("the pod watch did not start within 30 s")
        return self

    def stop(self) -> None:
        self._stop = True

    async def _watch(self) -> None:
        api = await kr8s.asyncio.api()
        selector = contract.label_selector(self.cluster)
        self._ready.set()
        async for event, pod in api.watch(
            "pods", namespace=self.namespace, label_selector=selector
        ):
            if self._stop:
                return
            self._record(pod.raw, time.time())
            if event == "DELETED":
                self.seen[pod.raw["metadata"]["name"]].setdefault("pod gone", time.time())

    def _record(self, pod: dict[str, Any], now: float) -> None:
        name = pod["metadata"]["name"]
        labels = pod["metadata"].get("labels") or {}
        self.component[name] = labels.get(contract.LABEL_COMPONENT, "")
        seen = self.seen.setdefault(name, {})
        seen.setdefault("pod created", now)
        status = pod.get("status") or {}
        for cond in status.get("conditions") or []:
            if cond.get("status") == "True" and cond["type"] in ("PodScheduled", "Ready"):
                seen.setdefault(
                    {"PodScheduled": "pod scheduled", "Ready": "pod Ready"}[cond["type"]], now
                )
        if pod["metadata"].get("deletionTimestamp"):
            seen.setdefault("pod deleting", now)
        for c in status.get("containerStatuses") or []:
            ended = (c.get("state") or {}).get("terminated")
            if ended and seen.get("pod deleting"):
                seen.setdefault(f"{c['name']} ended (watch)", now)
            if "running" in (c.get("state") or {}):
                seen.setdefault(f"{c['name']} running (watch)", now)
                started = c["state"]["running"].get("startedAt")
                if started:
                    seen.setdefault(f"{c['name']} started (kubelet, 1 s)", _rfc3339(started))

    def read_logs(self) -> None:
        """Each container's first line and its milestones, with the runtime's timestamps."""
        for name, component in list(self.component.items()):
            try:
                pod = kr8s.objects.Pod.get(name, namespace=self.namespace)
                lines = list(pod.logs(container=component, timestamps=True))
            except Exception:  # a pod already gone: its milestones from the watch remain
                continue
            seen = self.seen.setdefault(name, {})
            for i, line in enumerate(lines):
                stamp, _, text = line.partition(" ")
                try:
                    t = _rfc3339(stamp)
                except ValueError:
                    continue
                if i == 0:
                    seen.setdefault("first log line", t)
                for marker, milestone in LOG_MARKS.get(component, []):
                    if marker in text:
                        seen.setdefault(milestone, t)


#: The milestones of a pod's end.
ENDING = ("pod deleting", "ended (watch)", "pod gone")


def timeline(
    t0: float, watch: PodWatch, client: list[tuple[float, str]], ending: bool = False
) -> list[dict[str, Any]]:
    """Every milestone, seconds after ``t0``, in order; a worker milestone is the latest worker's.

    ``ending``: the milestones of the pods' end only; else those of their start only.
    """
    rows: list[dict[str, Any]] = [
        {"t": t - t0, "who": "client", "what": what} for t, what in client
    ]
    workers: dict[str, list[float]] = {}
    for name, seen in watch.seen.items():
        component = watch.component.get(name, "")
        for what, t in seen.items():
            if what.endswith(ENDING) != ending:
                continue
            if component == contract.WORKER:
                workers.setdefault(what, []).append(t)
            else:
                rows.append({"t": t - t0, "who": component, "what": what})
    for what, times in workers.items():
        rows.append({"t": min(times) - t0, "who": f"first of {len(times)} workers", "what": what})
        rows.append({"t": max(times) - t0, "who": f"last of {len(times)} workers", "what": what})
    return sorted(rows, key=lambda r: r["t"])
