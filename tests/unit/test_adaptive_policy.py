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
