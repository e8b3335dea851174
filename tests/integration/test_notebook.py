"""The article's functions in a real Jupyter kernel, on the local backend.

A kernel runs an event loop in its main thread: ``asyncio.run`` refuses to
start there, which is how ``list_clusters`` and ``delete_dask_cluster`` once failed.
"""

import pytest

from kernel import cells, run_notebook
from testutil import cluster_processes, wait_until

pytestmark = pytest.mark.slow


def test_the_article_in_a_jupyter_kernel_on_the_local_backend(cluster_name):
    printed = run_notebook(cells("local", "default", cluster_name))
    assert printed["mean"] == pytest.approx(1.0, abs=0.01)
    assert cluster_name in printed["listed"]
    assert cluster_name in printed["awaited"]
    assert printed["workers"] == 1
    assert printed["deleted"] is True
    assert cluster_name not in printed["after"]
    assert wait_until(lambda: not cluster_processes(cluster_name), 30)
