"""The clocks that end a cluster: pure decisions, checked at chosen moments."""

from __future__ import annotations

from minimaldask.contract import JanitorSettings
from minimaldask.pod.clocks import STARTUP_GRACE, Clocks, Facts

T0 = 1_000_000.0


def clocks(**timeouts):
    return Clocks(JanitorSettings(cluster="c", **timeouts), created=T0, last_client=T0)


def test_max_lifetime_counts_from_the_creation_whatever_happens():
    c = clocks(max_lifetime=120)
    c.observe(T0 + 60, Facts(idle_since=None, clients=3, workers=2))
    assert c.reason(T0 + 119) is None
    assert c.reason(T0 + 121)[0] == "max_lifetime"


def test_no_client_counts_from_the_last_client_seen():
    c = clocks(no_client_timeout=30)
    c.observe(T0 + 10, Facts(idle_since=None, clients=1, workers=1))
    c.observe(T0 + 20, Facts(idle_since=None, clients=0, workers=1))
    assert c.reason(T0 + 39) is None
    assert c.reason(T0 + 41)[0] == "no_client_timeout"


def test_no_client_counts_from_the_schedulers_first_report_not_from_the_creation():
    # The scheduler's image took 25 s to pull on a busy node: no client could connect before.
    c = clocks(no_client_timeout=15)
    assert c.reason(T0 + 24) is None
    c.observe(T0 + 25, Facts(idle_since=None, clients=0, workers=0))
    assert c.reason(T0 + 25) is None
    assert c.reason(T0 + 39) is None
    assert c.reason(T0 + 41)[0] == "no_client_timeout"


def test_a_restored_no_client_clock_counts_the_time_the_scheduler_was_away():
    before = clocks(no_client_timeout=60)
    before.observe(T0 + 10, Facts(idle_since=None, clients=1, workers=1))
    after = clocks(no_client_timeout=60)
    after.restore(before.to_state())
    assert after.reason(T0 + 71)[0] == "no_client_timeout"


def test_idle_counts_from_the_first_worker_and_stops_when_busy():
    c = clocks(idle_timeout=60)
    # Waiting for workers is the start, not idleness (within the start-up grace).
    c.observe(T0 + 5, Facts(idle_since=T0, clients=1, workers=0))
    assert c.reason(T0 + 100) is None
    c.observe(T0 + 100, Facts(idle_since=T0, clients=1, workers=1))
    assert c.reason(T0 + 159) is None
    assert c.reason(T0 + 161)[0] == "idle_timeout"
    c.observe(T0 + 161, Facts(idle_since=None, clients=1, workers=1))
    assert c.reason(T0 + 1000) is None


def test_a_cluster_that_never_gets_a_worker_is_idle_after_the_grace():
    c = clocks(idle_timeout=60)
    c.observe(T0 + 5, Facts(idle_since=T0, clients=1, workers=0))
    assert c.reason(T0 + STARTUP_GRACE + 1)[0] == "idle_timeout"


def test_a_new_scheduler_goes_on_from_the_saved_clocks():
    before = clocks(idle_timeout=120, no_client_timeout=300)
    before.observe(T0 + 10, Facts(idle_since=T0 + 10, clients=1, workers=2))
    saved = before.to_state()
    # The scheduler pod is replaced at T0 + 100; its new scheduler is idle since it started.
    after = clocks(idle_timeout=120, no_client_timeout=300)
    after.restore(saved)
    after.observe(T0 + 101, Facts(idle_since=T0 + 100, clients=0, workers=0))
    assert after.idle_since == T0 + 10
    assert after.last_client == T0 + 10
    assert after.reason(T0 + 129) is None
    assert after.reason(T0 + 131)[0] == "idle_timeout"
