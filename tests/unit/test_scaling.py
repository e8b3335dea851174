"""The scale-down mechanism against a model of the ReplicaSet controller.

The model removes pods as the controller does (not-Ready first) and, where the
controller's order leaves a choice, the worst one: a pod that holds data. The
real thing runs in tests/e2e; here every interleaving is cheap to check.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from minimaldask.pod import scaling

scaling.POLL = 0.001


@dataclass
class Pod:
    name: str
    connected: bool = True
    data: bool = True
    flagged: bool = False
    busy: bool = False  # a busy worker whose readiness probe fails

    @property
    def ready(self) -> bool:
        return self.connected and not self.flagged and not self.busy


class Model:
    def __init__(self, pods, names_visible=True, keep=()):
        self.pods = {p.name: p for p in pods}
        self.replicas = len(pods)
        self.names_visible = names_visible
        self.keep = set(keep)  # workers whose data has nowhere to go
        self.lost: list[str] = []

    # Replicas
    async def pods_(self):
        live = list(self.pods.values())
        not_ready = frozenset(p.name for p in live if not p.ready)
        return scaling.Pods(
            replicas=self.replicas,
            live=len(live),
            ready=len(live) - len(not_ready),
            not_ready=not_ready if self.names_visible else None,
        )

    async def set(self, replicas):
        self.replicas = replicas
        excess = len(self.pods) - replicas
        # Not Ready first; then, adversarially, pods that hold data.
        order = sorted(self.pods.values(), key=lambda p: (p.ready, not p.data))
        for p in order[: max(excess, 0)]:
            if p.data and not p.flagged:
                self.lost.append(p.name)
            del self.pods[p.name]

    # Workers
    async def connected(self):
        running = frozenset(p.name for p in self.pods.values() if p.connected and not p.flagged)
        retired = frozenset(p.name for p in self.pods.values() if p.flagged)
        return scaling.Connected(running, retired)

    async def retire(self, n, timeout):
        candidates = [
            p
            for p in self.pods.values()
            if p.connected and not p.flagged and p.name not in self.keep
        ]
        chosen = sorted(candidates, key=lambda p: p.data)[:n]
        for p in chosen:
            p.flagged = True
        return [p.name for p in chosen]


class Side:
    def __init__(self, model):
        self.model = model

    async def pods(self):
        return await self.model.pods_()

    async def set(self, n):
        await self.model.set(n)


def run(model, target, timeout=2.0):
    return asyncio.run(scaling.scale_to(target, Side(model), model, timeout))


@pytest.mark.parametrize("names_visible", [True, False])
def test_down_to_one_retires_two_and_loses_nothing(names_visible):
    model = Model([Pod("a"), Pod("b"), Pod("c")], names_visible)
    outcome = run(model, 1)
    assert len(model.pods) == 1 and model.replicas == 1
    assert sorted(outcome.retired) == sorted(set("abc") - set(model.pods))
    assert model.lost == []


def test_pods_that_never_connected_go_first_without_retiring_anyone():
    model = Model([Pod("a"), Pod("b"), Pod("new", connected=False, data=False)])
    outcome = run(model, 2)
    assert set(model.pods) == {"a", "b"} and outcome.retired == []


@pytest.mark.parametrize("names_visible", [True, False])
def test_a_busy_worker_whose_probe_fails_is_never_taken(names_visible):
    model = Model([Pod("a"), Pod("b", busy=True), Pod("c")], names_visible)
    outcome = run(model, 2, timeout=0.2)
    assert "b" in model.pods and model.lost == []
    assert outcome.reason or len(model.pods) == 2


def test_workers_the_scheduler_keeps_stay_and_replicas_follow_what_went():
    model = Model([Pod("a"), Pod("b"), Pod("c")], keep={"a", "b", "c"})
    outcome = run(model, 1)
    assert set(model.pods) == {"a", "b", "c"} and model.replicas == 3
    assert outcome.kept == 2 and "nowhere to go" in outcome.reason
    assert model.lost == []


def test_up_asks_for_pods():
    model = Model([Pod("a")])
    run(model, 4)
    assert model.replicas == 4
