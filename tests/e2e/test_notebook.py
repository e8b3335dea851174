"""The article's functions in a real Jupyter kernel, on the local Kubernetes.

A kernel runs an event loop in its main thread: ``asyncio.run`` refuses to
start there. The kernel inherits the test's KUBECONFIG (the namespace-only
user) and its DASK_MINIMALDASK__* settings (image, small pods).
"""

import pytest

from kernel import cells, run_notebook

pytestmark = [pytest.mark.kube, pytest.mark.slow]


def test_the_article_in_a_jupyter_kernel_on_kubernetes(namespace, kube, cluster_name):
    printed = run_notebook(cells("kubernetes", namespace, cluster_name))
    assert printed["mean"] == pytest.approx(1.0, abs=0.01)
    assert cluster_name in printed["listed"]
    assert cluster_name in printed["awaited"]
    assert printed["workers"] == 1
    assert printed["deleted"] is True
    assert cluster_name not in printed["after"]
    assert kube.objects_of(cluster_name) == []
