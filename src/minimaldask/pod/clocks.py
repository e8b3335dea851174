"""When a cluster ends: its idle, no-client and lifetime clocks, as pure decisions.

The clocks are anchored to times that outlive a scheduler: the cluster's
creation (which the API server stores) and the last state the janitor saved.
Both the janitor beside a scheduler on Kubernetes and the plugin in a local
scheduler decide with this class; neither decides anything else about ending.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from minimaldask.contract import JanitorSettings

#: Idle time does not count before the first worker joins, up to this long.
STARTUP_GRACE = 300.0


@dataclass(frozen=True)
class Facts:
    """What the scheduler says about itself at one moment."""

    #: Since when no task was processing or waiting (seconds since the epoch); None: busy.
    idle_since: float | None
    #: Dask clients connected, plus MinimalCluster handles heard from recently.
    clients: int
    #: Workers connected now.
    workers: int

    def to_json(self) -> dict[str, Any]:
        """The facts as the plugin sends them to the janitor."""
        return {"idle_since": self.idle_since, "clients": self.clients, "workers": self.workers}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Facts:
        """The facts the plugin sent."""
        idle = data.get("idle_since")
        return cls(
            idle_since=float(idle) if idle else None,
            clients=int(data.get("clients") or 0),
            workers=int(data.get("workers") or 0),
        )


@dataclass
class Clocks:
    """The three ways a cluster ends, and the times they count from."""

    settings: JanitorSettings
    #: When the cluster was created: max_lifetime counts from here.
    created: float
    #: The last time a client (or handle) was seen; the no-client clock counts from here.
    last_client: float
    #: Since when the cluster has had nothing to do, as far as is known; None: busy.
    idle_since: float | None = None
    #: When the first worker joined (idleness before that is the start, not idleness).
    ready_at: float | None = None
    #: Whether any fact was seen yet.
    observed: bool = field(default=False, compare=False)
    #: Whether the clocks go on from a saved state (a scheduler ran before).
    restored: bool = field(default=False, compare=False)

    def observe(self, now: float, facts: Facts) -> None:
        """Take in what the scheduler says now.

        No client can connect before the scheduler first runs (its image pulled,
        its pod started): for a new cluster the no-client clock counts from the
        scheduler's first report, not from the creation.
        """
        if not self.observed and not self.restored:
            self.last_client = max(self.last_client, now)
        self.observed = True
        if facts.clients:
            self.last_client = now
        if facts.workers and self.ready_at is None:
            self.ready_at = now
        if facts.idle_since is None:
            self.idle_since = None
        elif self.idle_since is None or facts.idle_since < self.idle_since:
            # A restarted scheduler knows only since when it is idle itself: the
            # cluster was idle before too if the saved state says so (kept as is).
            self.idle_since = facts.idle_since

    def reason(self, now: float) -> tuple[str, str] | None:
        """Which timeout ends the cluster now, and why; or None."""
        s = self.settings
        if s.max_lifetime and now - self.created > s.max_lifetime:
            return "max_lifetime", f"it reached its max_lifetime of {s.max_lifetime:g}s"
        counting = self.observed or self.restored  # see observe()
        if s.no_client_timeout and counting and now - self.last_client > s.no_client_timeout:
            return (
                "no_client_timeout",
                f"no client was connected for its no_client_timeout of {s.no_client_timeout:g}s",
            )
        idle_since = self.idle_since
        if idle_since is not None:
            if self.ready_at is None and now - self.created < STARTUP_GRACE:
                idle_since = None  # still starting: waiting for workers is not idleness
            elif self.ready_at is not None:
                idle_since = max(idle_since, self.ready_at)
        if s.idle_timeout and idle_since is not None and now - idle_since > s.idle_timeout:
            return (
                "idle_timeout",
                f"it was idle (no task to run) for its idle_timeout of {s.idle_timeout:g}s",
            )
        return None

    def to_state(self) -> dict[str, Any]:
        """What the janitor saves, so that a new scheduler pod goes on where this one was."""
        return {
            "last_client": self.last_client,
            "idle_since": self.idle_since,
            "ready_at": self.ready_at,
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Go on from a saved state (the clocks of an earlier scheduler pod)."""
        for key in ("last_client", "idle_since", "ready_at"):
            value = state.get(key)
            if isinstance(value, (int, float)):
                setattr(self, key, float(value))
        self.restored = True
