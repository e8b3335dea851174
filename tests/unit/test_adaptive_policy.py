"""The adaptive policy's decision: up at once, down only after a steady cool-down, no flapping."""

from __future__ import annotations

from minimaldask.pod.plugin import AdaptivePolicy


def policy(**kw):
    return AdaptivePolicy(minimum=0, maximum=4, cooldown=10, **kw)


def test_up_is_at_once_even_right_after_a_change():
    assert policy().decide(4, asked=1, connected=1, low_since=None, last=99, now=100) == (4, None)


def test_the_bounds_hold():
    p = AdaptivePolicy(minimum=1, maximum=3, cooldown=0)
    assert p.decide(9, asked=1, connected=1, low_since=None, last=0, now=100) == (3, None)
    assert p.decide(0, asked=3, connected=3, low_since=50, last=0, now=100) == (2, 50)
    assert p.decide(0, asked=1, connected=1, low_since=None, last=0, now=100) == (None, None)


def test_a_dip_while_new_workers_start_removes_nobody():
    # Four asked, one connected: its first tiny tasks make the queue look short.
    p = policy()
    target, low = p.decide(1, asked=4, connected=1, low_since=None, last=95, now=100)
    assert (target, low) == (None, 100)
    target, low = p.decide(1, asked=4, connected=3, low_since=low, last=95, now=105)
    assert (target, low) == (None, 100)
    # Wanted fewer for a whole cool-down: down, by at most half.
    assert p.decide(1, asked=4, connected=4, low_since=low, last=95, now=110) == (2, 100)


def test_the_cool_down_counts_from_the_last_change_too():
    p = policy()
    assert p.decide(0, asked=4, connected=4, low_since=80, last=95, now=100) == (None, 80)
    assert p.decide(0, asked=4, connected=4, low_since=80, last=95, now=105) == (2, 80)


def test_wanting_as_many_again_resets_the_wait():
    p = policy()
    assert p.decide(4, asked=4, connected=2, low_since=100, last=0, now=105) == (None, None)


def test_a_target_that_swings_every_second_does_not_make_the_cluster_flap():
    p = policy()
    asked, low, last, changes = 1, None, 0.0, []
    for second in range(120):
        wanted = 4 if second % 2 == 0 else 1
        target, low = p.decide(
            wanted, asked=asked, connected=asked, low_since=low, last=last, now=second
        )
        if target is not None:
            changes.append((second, asked, target))
            asked, last, low = target, second, None
    assert changes == [(0, 1, 4)]


def test_connected_workers_above_the_replicas_count_as_current():
    # A worker still connected from a pod that is going: not a reason to ask for more.
    p = policy()
    assert p.decide(2, asked=2, connected=3, low_since=None, last=0, now=100) == (None, 100)


def test_with_no_task_left_down_goes_straight_to_the_target_after_the_cool_down():
    p = policy()
    # A whole cool-down with nothing left to do: all four go in one step, not 4 -> 2 -> 1 -> 0.
    assert p.decide(0, asked=4, connected=4, low_since=90, last=0, now=100, idle_since=90) == (
        0,
        90,
    )
    # The bounds still hold.
    q = AdaptivePolicy(minimum=1, maximum=4, cooldown=10)
    assert q.decide(0, asked=4, connected=4, low_since=90, last=0, now=100, idle_since=90) == (
        1,
        90,
    )


def test_while_tasks_are_left_down_still_goes_by_halves():
    # The target is an estimate from task durations while work runs: a step too large
    # would cost a pod start when the estimate is wrong.
    p = policy()
    assert p.decide(0, asked=4, connected=4, low_since=90, last=0, now=100) == (2, 90)


def test_the_cool_down_of_an_idle_cluster_counts_from_its_last_task():
    # The target dipped at 88, in the last seconds of a burst (its queue looked short);
    # the last task ended at 93. A gap shorter than a cool-down from there keeps everyone.
    p = policy()
    assert p.decide(0, asked=4, connected=4, low_since=88, last=0, now=100, idle_since=93) == (
        None,
        88,
    )
    assert p.decide(0, asked=4, connected=4, low_since=88, last=0, now=103, idle_since=93) == (
        0,
        88,
    )


def test_an_idle_dip_right_after_a_scale_up_removes_nobody():
    # Pods asked for at 95 still start; the scheduler has nothing left for now.
    p = policy()
    assert p.decide(0, asked=4, connected=1, low_since=None, last=95, now=100, idle_since=80) == (
        None,
        100,
    )
    assert p.decide(0, asked=4, connected=2, low_since=100, last=95, now=108, idle_since=80) == (
        None,
        100,
    )


def _replay(p, burst_ends, gap, until, dip=4):
    """One look a second at 4 workers: a burst's tail (the target dips ``dip`` s before
    its last task), then ``gap`` idle seconds, then a burst again."""
    asked, low, last, changes = 4, None, 0.0, []
    for now in range(until):
        if now < burst_ends - dip or now >= burst_ends + gap:
            wanted, idle_since = 4, None
        elif now < burst_ends:
            wanted, idle_since = 1, None
        else:
            wanted, idle_since = 0, burst_ends
        target, low = p.decide(
            wanted,
            asked=asked,
            connected=asked,
            low_since=low,
            last=last,
            now=now,
            idle_since=idle_since,
        )
        if target is not None:
            changes.append((now, asked, target))
            asked, last, low = target, now, None
    return changes


def test_the_defaults_keep_the_workers_through_a_5_s_gap():
    # bench/cost.py's short-gaps workload: adaptive must not cost more than fixed.
    p = AdaptivePolicy(minimum=0, maximum=4)
    assert _replay(p, burst_ends=30, gap=5, until=60) == []
    # Even when the gap looks twice as long to the scheduler (a loaded node, a slow client).
    assert _replay(p, burst_ends=30, gap=9, until=60) == []


def test_the_defaults_reach_zero_in_one_step_within_15_s_of_the_last_task():
    # bench/cost.py's bursty workload: 90 s gaps. The pod-seconds between the last task
    # and zero are what adaptive scaling costs over nothing (docs/performance.md).
    p = AdaptivePolicy(minimum=0, maximum=4)
    changes = _replay(p, burst_ends=30, gap=90, until=119)
    assert len(changes) == 1
    when, before, after = changes[0]
    assert (before, after) == (4, 0) and when - 30 <= 15
