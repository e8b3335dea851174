"""Listing the workers in tests: asked of the scheduler, never from the client's cache."""

import dask
from distributed import Client, LocalCluster

from testutil import workers_of


def test_workers_of_lists_every_worker_while_the_client_polls():
    # distributed's periodic poll (here every 1 ms instead of 2 s, to make its
    # race frequent) overwrites the cache that client.scheduler_info() returns
    # with an answer that has no per-worker details. workers_of asks the
    # scheduler and returns that answer itself.
    with (
        dask.config.set({"distributed.client.scheduler-info-interval": "1ms"}),
        LocalCluster(n_workers=3, processes=False, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        short_cached = sum(len(client.scheduler_info()["workers"]) != 3 for _ in range(2000))
        short_asked = sum(len(workers_of(client)) != 3 for _ in range(2000))
    print(f"of 2000 listings, short: scheduler_info() {short_cached}, workers_of {short_asked}")
    assert short_asked == 0
