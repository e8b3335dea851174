"""The handle's view of the workers, as the scheduler's worker-status stream updates it."""

import asyncio
import time

from minimaldask.cluster import MinimalCluster


def handle_without_cluster() -> MinimalCluster:
    # No cluster is started: only the handlers are under test.
    handle = object.__new__(MinimalCluster)
    handle.scheduler_info = {"workers": {"tls://a:1": {"name": "a"}}}
    handle._worker_news = asyncio.Event()
    handle._settle = 0.0
    return handle


def test_a_removal_of_a_worker_never_seen_is_no_error():
    handle = handle_without_cluster()
    handle._update_worker_status("remove", "tls://never-seen:1")
    handle._update_worker_status("add", {"workers": {"tls://b:1": {"name": "b"}}})
    handle._update_worker_status("remove", "tls://a:1")
    assert handle.scheduler_info["workers"] == {"tls://b:1": {"name": "b"}}


def test_news_of_a_worker_ends_the_wait_for_it_at_once():
    handle = handle_without_cluster()

    async def main() -> list[tuple[float, float]]:
        waits = []
        for change in ("add", *[None] * 7, "remove", None):
            if change == "add":
                handle._update_worker_status(change, {"workers": {"tls://b:1": {"name": "b"}}})
            elif change == "remove":
                asyncio.get_running_loop().call_later(
                    0.1, handle._update_worker_status, change, "tls://b:1"
                )
            began = time.monotonic()
            await handle._news_of_workers(1.0)
            waits.append((time.monotonic() - began, handle._settle))
        return waits

    added, *settling, removed, quiet = asyncio.run(main())
    assert added[0] < 0.05  # news before the wait: read at once, then cleared
    # After news, short waits (a new worker runs milliseconds after its news), doubling
    # until the whole pause; each is the one its predecessor set.
    assert [added[1]] + [s for _, s in settling] == [0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 0]
    assert 0.6 < settling[-2][0] < 1.0 < settling[-1][0] < 1.5
    assert 0.09 < removed[0] < 0.5  # news during the wait ends it
    assert removed[1] == 0.02
    assert quiet[0] < 0.5 and quiet[1] == 0.04  # after news, short again
