"""The handle's view of the workers, as the scheduler's worker-status stream updates it."""

from minimaldask.cluster import MinimalCluster


def test_a_removal_of_a_worker_never_seen_is_no_error():
    # No cluster is started: only the handler is under test.
    handle = object.__new__(MinimalCluster)
    handle.scheduler_info = {"workers": {"tls://a:1": {"name": "a"}}}
    handle._update_worker_status("remove", "tls://never-seen:1")
    handle._update_worker_status("add", {"workers": {"tls://b:1": {"name": "b"}}})
    handle._update_worker_status("remove", "tls://a:1")
    assert handle.scheduler_info["workers"] == {"tls://b:1": {"name": "b"}}
