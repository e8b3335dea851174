"""The one way a cluster on Kubernetes loses workers without losing data.

Every path that scales down (a handle, an attached handle, ``minimaldask
scale``, adaptive scaling in the scheduler) runs :func:`scale_to`:

1. read the worker pods (how many live, how many Ready) and the connected workers;
2. pods that hold nothing (not started, not yet connected) and workers retired
   earlier are not Ready: the ReplicaSet removes not-Ready pods first, so
   replicas are lowered by at most their number, and only when every not-Ready
   pod is one of them (a busy worker that misses a probe holds data);
3. for the rest of the excess, the scheduler retires workers it chooses, with a
   deadline: their data moves to others, and only the workers it reports as
   retired are flagged, which makes their pods not Ready (their readiness
   probe asks the worker); a retirement that does not finish is undone;
4. again from 1, until the excess is gone, the scheduler keeps the rest (their
   data has nowhere to go), or the deadline passes.

No pod is patched or deleted by name: the janitor needs no right on pods.
The two sides are small protocols, implemented in the scheduler (the plugin and
its janitor) and in the client (RPC and the Kubernetes API).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Protocol

logger = logging.getLogger("distributed.minimaldask.scaling")

#: Seconds between two looks while waiting for pods to follow.
POLL = 0.5


@dataclass(frozen=True)
class Pods:
    """The worker Deployment as it is: replicas asked, pods alive, pods Ready."""

    replicas: int
    live: int
    ready: int
    #: Names of the live pods that are not Ready, where the reader may see pods; else None.
    not_ready: frozenset[str] | None = None


@dataclass(frozen=True)
class Connected:
    """The workers as the scheduler has them: running, and retired by us (flagged)."""

    running: frozenset[str]
    retired: frozenset[str]


class Replicas(Protocol):
    """The worker Deployment's side."""

    async def pods(self) -> Pods:
        """Replicas asked, live pods (not terminating), Ready pods."""

    async def set(self, replicas: int) -> None:
        """Ask for this many worker pods."""


class Workers(Protocol):
    """The scheduler's side."""

    async def connected(self) -> Connected:
        """The workers connected now."""

    async def retire(self, n: int, timeout: float) -> list[str]:
        """Retire ``n`` workers the scheduler chooses; the names of those it retired."""


@dataclass
class Outcome:
    """What a scale-down did."""

    target: int
    retired: list[str] = field(default_factory=list)
    #: Workers the scheduler would not retire: their data had nowhere to go.
    kept: int = 0
    #: Replicas lowered, from and to.
    lowered: list[tuple[int, int]] = field(default_factory=list)
    #: Why it stopped short of the target, if it did.
    reason: str = ""


def holds_nothing(pods: Pods, workers: Connected) -> bool:
    """Whether every live pod that is not Ready holds no data (so the ReplicaSet may take it).

    With pod names: no not-Ready pod is a running worker's. With counts only (the
    janitor may not list pods): every running worker's pod is Ready; the workers'
    readiness probe tolerates a busy worker long enough for this to hold.
    """
    if pods.not_ready is not None:
        return not (pods.not_ready & workers.running)
    return pods.ready >= len(workers.running)


async def scale_to(target: int, replicas: Replicas, workers: Workers, timeout: float) -> Outcome:
    """Bring the workers to ``target``: up by asking for pods, down by retiring first."""
    outcome = Outcome(target)
    deadline = time.monotonic() + timeout
    while True:
        pods = await replicas.pods()
        if pods.live <= target:
            if pods.replicas != target:
                await replicas.set(target)
            return outcome
        excess = pods.live - target
        connected = await workers.connected()
        not_ready = pods.live - pods.ready
        if not_ready and holds_nothing(pods, connected):
            # The ReplicaSet removes not-Ready pods first: exactly those that hold nothing.
            lower = min(excess, not_ready)
            new = max(min(pods.replicas, pods.live) - lower, target)
            await replicas.set(new)
            outcome.lowered.append((pods.replicas, new))
            await _until(replicas, deadline, live=pods.live - lower)
            continue
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            outcome.reason = (
                f"after {timeout:g}s: {pods.live} worker pods, {pods.ready} Ready, "
                f"{len(connected.running)} workers running"
            )
            return outcome
        if not_ready:
            # A running worker's pod is not Ready (busy, or its probe is late): lowering
            # replicas now might take it. Look again.
            await asyncio.sleep(POLL)
            continue
        wanted = min(excess, len(connected.running))
        names = await workers.retire(wanted, remaining) if wanted else []
        outcome.retired += names
        if not names:
            outcome.kept = wanted
            outcome.reason = "the scheduler kept the workers: their data had nowhere to go"
            return outcome
        # Their pods stop being Ready once their probe sees the flag.
        await _until(replicas, deadline, ready=pods.ready - len(names))


async def _until(
    replicas: Replicas, deadline: float, live: int | None = None, ready: int | None = None
) -> None:
    """Wait until at most ``live`` pods live (or ``ready`` are Ready), or the deadline passes.

    The caller looks again either way.
    """
    while time.monotonic() < deadline:
        pods = await replicas.pods()
        if (live is None or pods.live <= live) and (ready is None or pods.ready <= ready):
            return
        await asyncio.sleep(POLL)
