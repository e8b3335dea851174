"""The Kubernetes backend on a real cluster, as the namespace-only user."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from distributed import Client

from minimaldask import MinimalCluster, delete_dask_cluster, list_clusters
from minimaldask.exceptions import ClusterNotFoundError

from .conftest import SMALL, kubectl, objects_of

pytestmark = [pytest.mark.kube, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def get(kind: str, name: str, namespace: str) -> dict:
    return json.loads(kubectl("get", kind, name, "-n", namespace, "-o", "json").stdout)


def pods(namespace: str, name: str, component: str) -> dict[str, dict]:
    out = kubectl(
        "get", "pods", "-n", namespace, "-o", "json",
        "-l", f"app.kubernetes.io/instance={name},app.kubernetes.io/component={component}",
    ).stdout  # fmt: skip
    return {p["metadata"]["name"]: p for p in json.loads(out)["items"]}


def load_example():
    spec = importlib.util.spec_from_file_location("article", ROOT / "examples" / "article.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_article_example(namespace):
    example = load_example()
    z, result = example.main(namespace=namespace, workers=3, name="article")
    expected = z.compute(scheduler="threads")
    assert result.shape == (5000,)
    np.testing.assert_allclose(result, expected)
    assert objects_of(namespace, "article") == []


def test_start_twice_changes_nothing_and_workers_update_in_place(namespace, cluster_name):
    with MinimalCluster(name=cluster_name, workers=2) as first:
        before = {
            (kind, n): get(kind, n, namespace)["metadata"]
            for kind, n in [
                ("deployment", f"{cluster_name}-scheduler"),
                ("deployment", f"{cluster_name}-worker"),
                ("service", f"{cluster_name}-scheduler"),
            ]
        }
        scheduler_pods = set(pods(namespace, cluster_name, "scheduler"))
        worker_pods = set(pods(namespace, cluster_name, "worker"))

        second = MinimalCluster(name=cluster_name, workers=2, shutdown_on_close=False)
        for kind, meta in before.items():
            now = get(kind, meta["name"], namespace)["metadata"]
            assert now["resourceVersion"] == meta["resourceVersion"], (
                f"{kind} {meta['name']} changed"
            )
            assert now["uid"] == meta["uid"]
        assert set(pods(namespace, cluster_name, "scheduler")) == scheduler_pods
        assert set(pods(namespace, cluster_name, "worker")) == worker_pods
        second.close()

        third = MinimalCluster(name=cluster_name, workers=3, shutdown_on_close=False)
        dep = get("deployment", f"{cluster_name}-worker", namespace)
        assert dep["spec"]["replicas"] == 3
        assert set(pods(namespace, cluster_name, "scheduler")) == scheduler_pods
        assert worker_pods < set(pods(namespace, cluster_name, "worker"))
        with Client(first) as client:
            client.wait_for_workers(3, timeout=60)
        third.close()
    assert objects_of(namespace, cluster_name) == []


def test_two_clusters_in_one_namespace_reconnect_and_list(namespace):
    with MinimalCluster(name="one", workers=1) as one, MinimalCluster(name="two", workers=2) as two:
        assert {c.name for c in list_clusters(namespace)} == {"one", "two"}
        with Client(one) as c1, Client(two) as c2:
            assert len(c1.scheduler_info()["workers"]) == 1
            assert len(c2.scheduler_info()["workers"]) == 2
            assert c1.submit(sum, [1, 2]).result() == 3
            c2.scatter(list(range(10)))
        again = MinimalCluster.from_name("two", namespace=namespace)
        with Client(again) as client:
            assert len(client.scheduler_info()["workers"]) == 2
        again.close()  # a reconnected handle leaves the cluster running
        assert {c.name for c in list_clusters(namespace)} == {"one", "two"}
        one.close()
        assert [c.name for c in list_clusters(namespace)] == ["two"]
        info = list_clusters(namespace)[0]
        assert (info.workers, info.requested_workers) == (2, 2)
    assert list_clusters(namespace) == []
    with pytest.raises(ClusterNotFoundError, match="no cluster named 'two'"):
        MinimalCluster.from_name("two", namespace=namespace)


def test_scale_down_retires_exactly_the_chosen_workers(namespace, cluster_name):
    with MinimalCluster(name=cluster_name, workers=3) as cluster, Client(cluster) as client:
        futures = client.map(lambda i: np.full(1000, i), range(500), pure=False)
        client.gather(futures)
        before = set(pods(namespace, cluster_name, "worker"))
        assert len(before) == 3
        retired: list[str] = []
        original = cluster._retire

        async def spy(names):
            retired.extend(names)
            await original(names)

        cluster._retire = spy
        cluster.scale(1)
        after = {
            n
            for n, p in pods(namespace, cluster_name, "worker").items()
            if not p["metadata"].get("deletionTimestamp")
        }
        assert len(retired) == 2
        assert after == before - set(retired)
        values = client.gather(futures)
        assert [int(v[0]) for v in values] == list(range(500))
        deadline = time.monotonic() + 60
        while len(client.scheduler_info()["workers"]) != 1:
            assert time.monotonic() < deadline
            time.sleep(0.5)
        assert (
            set(
                client.scheduler_info()["workers"][a]["name"]
                for a in client.scheduler_info()["workers"]
            )
            == after
        )


def test_a_worker_pod_deleted_during_a_computation(namespace, cluster_name):
    import dask.array as da

    with MinimalCluster(name=cluster_name, workers=3) as cluster, Client(cluster) as client:
        x = da.random.random((4000, 4000), chunks=(500, 500))
        z = (x @ x.T).sum(axis=0)
        expected = z.compute(scheduler="threads")
        future = client.compute(z)
        deadline = time.monotonic() + 30
        while not any(client.processing().values()):
            assert time.monotonic() < deadline, "the computation did not start"
            time.sleep(0.1)
        victim = sorted(pods(namespace, cluster_name, "worker"))[0]
        kubectl("delete", "pod", victim, "-n", namespace, "--wait=false")
        np.testing.assert_allclose(future.result(timeout=300), expected)


def test_manifests_piped_into_kubectl_make_a_working_cluster(namespace, image):
    yaml_text = subprocess.run(
        [sys.executable, "-m", "minimaldask.cli", "manifests", "piped", "-n", namespace, "--workers", "2",
         "--image", image, "--cpu", SMALL["cpu"], "--memory", SMALL["memory"]],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    kubectl("apply", "-f", "-", input=yaml_text)
    try:
        with (
            MinimalCluster.from_name("piped", namespace=namespace) as cluster,
            Client(cluster) as client,
        ):
            client.wait_for_workers(2, timeout=120)
            assert client.submit(lambda: 42).result() == 42
    finally:
        assert delete_dask_cluster(namespace=namespace, name="piped")
    assert objects_of(namespace, "piped") == []


def test_deleting_a_cluster_that_does_not_exist_is_not_an_error(namespace):
    assert delete_dask_cluster(namespace=namespace, name="never-started") is False
