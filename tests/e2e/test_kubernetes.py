"""The Kubernetes backend on a real cluster, as the namespace-only user."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from distributed import Client

from minimaldask import MinimalCluster, delete_dask_cluster, list_clusters
from minimaldask.exceptions import ClusterNotFoundError
from testutil import workers_of

pytestmark = [pytest.mark.kube, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def load_example():
    spec = importlib.util.spec_from_file_location("article", ROOT / "examples" / "article.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_article_example(namespace, kube):
    example = load_example()
    z, result = example.main(namespace=namespace, workers=3, name="article")
    expected = z.compute(scheduler="threads")
    assert result.shape == (5000,)
    np.testing.assert_allclose(result, expected)
    assert kube.objects_of("article") == []


def test_start_twice_changes_nothing_and_workers_update_in_place(namespace, kube, cluster_name):
    with MinimalCluster(name=cluster_name, workers=2) as first:
        before = {
            (kind, n): kube.get(kind, n)["metadata"]
            for kind, n in [
                ("deployment", f"{cluster_name}-scheduler"),
                ("deployment", f"{cluster_name}-worker"),
                ("service", f"{cluster_name}-scheduler"),
            ]
        }
        scheduler_pods = set(kube.pods(cluster_name, "scheduler"))
        worker_pods = set(kube.pods(cluster_name, "worker"))

        second = MinimalCluster(name=cluster_name, workers=2, shutdown_on_close=False)
        for (kind, n), meta in before.items():
            now = kube.get(kind, n)["metadata"]
            # Status updates change resourceVersion; a change of the object changes generation.
            assert now.get("generation") == meta.get("generation"), f"{kind} {n} changed"
            if kind == "service":  # no status to update: any write would show
                assert now["resourceVersion"] == meta["resourceVersion"]
            assert now["uid"] == meta["uid"]
        assert set(kube.pods(cluster_name, "scheduler")) == scheduler_pods
        assert set(kube.pods(cluster_name, "worker")) == worker_pods
        second.close()

        third = MinimalCluster(name=cluster_name, workers=3, shutdown_on_close=False)
        dep = kube.get("deployment", f"{cluster_name}-worker")
        assert dep["spec"]["replicas"] == 3
        assert set(kube.pods(cluster_name, "scheduler")) == scheduler_pods
        assert worker_pods < set(kube.pods(cluster_name, "worker"))
        with Client(first) as client:
            client.wait_for_workers(3, timeout=60)
        third.close()
    assert kube.objects_of(cluster_name) == []


def test_two_clusters_in_one_namespace_reconnect_and_list(namespace, kube):
    with MinimalCluster(name="one", workers=1) as one, MinimalCluster(name="two", workers=2) as two:
        assert {c.name for c in list_clusters(namespace)} == {"one", "two"}
        with Client(one) as c1, Client(two) as c2:
            assert len(workers_of(c1)) == 1
            assert len(workers_of(c2)) == 2
            assert c1.submit(sum, [1, 2]).result() == 3
            c2.scatter(list(range(10)))
        again = MinimalCluster.from_name("two", namespace=namespace)
        with Client(again) as client:
            assert len(workers_of(client)) == 2
        logs = again.get_logs()
        assert any(k.startswith("pod two-scheduler-") for k in logs)
        assert any("distributed.worker" in v for k, v in logs.items() if "two-worker-" in k)
        again.close()  # a reconnected handle leaves the cluster running
        assert {c.name for c in list_clusters(namespace)} == {"one", "two"}
        one.close()
        assert [c.name for c in list_clusters(namespace)] == ["two"]
        info = list_clusters(namespace)[0]
        assert (info.workers, info.requested_workers) == (2, 2)
    assert list_clusters(namespace) == []
    with pytest.raises(ClusterNotFoundError, match="no cluster named 'two'"):
        MinimalCluster.from_name("two", namespace=namespace)


@pytest.mark.parametrize(
    "worker_options", [[], ["--no-nanny"]], ids=["with-nanny", "without-nanny"]
)
def test_scale_down_retires_exactly_the_chosen_workers(
    namespace, kube, cluster_name, worker_options
):
    # Without a nanny (docs/performance.md: a faster start, less memory), the worker is the
    # pod's process: retiring, the readiness probe and the preStop drain work the same.
    with (
        MinimalCluster(name=cluster_name, workers=3, worker_options=worker_options) as cluster,
        Client(cluster) as client,
    ):
        nannies = [w["nanny"] for w in workers_of(client).values()]
        assert all(nannies) if not worker_options else not any(nannies)
        futures = client.map(lambda i: np.full(1000, i), range(500), pure=False)
        client.gather(futures)
        before = set(kube.pods(cluster_name, "worker"))
        assert len(before) == 3
        names = {a: w["name"] for a, w in workers_of(client).items()}
        cluster.scale(1)
        after = {
            n
            for n, p in kube.pods(cluster_name, "worker").items()
            if not p["metadata"].get("deletionTimestamp")
        }
        retired = {
            addr
            for _, msg in client.get_events("all")
            if isinstance(msg, dict) and msg.get("action") == "retire-workers"
            for addr in msg["retired"]
        }
        assert len(retired) == 2
        assert retired <= names.keys(), (
            f"retired {sorted(retired - names.keys())}, not among the workers before the scale: "
            f"{names}; events: {[m for _, m in client.get_events('all')]}"
        )
        # Exactly the pods of the workers the scheduler retired went.
        assert after == before - {names[a] for a in retired}
        values = client.gather(futures)
        assert [int(v[0]) for v in values] == list(range(500))
        deadline = time.monotonic() + 60
        while len(workers_of(client)) != 1:
            assert time.monotonic() < deadline
            time.sleep(0.5)
        assert {w["name"] for w in workers_of(client).values()} == after


def test_a_worker_pod_deleted_during_a_computation(namespace, kube, cluster_name):
    import dask.array as da

    with MinimalCluster(name=cluster_name, workers=3) as cluster, Client(cluster) as client:
        x = da.random.random((4000, 4000), chunks=(500, 500))
        z = (x @ x.T).sum(axis=0)
        expected = z.compute(scheduler="threads")
        future = client.compute(z)
        workers = workers_of(client)
        deadline = time.monotonic() + 30
        # The victim is a worker busy with the computation at the moment it goes.
        while not (busy := [w for w, tasks in client.processing().items() if tasks]):
            assert time.monotonic() < deadline, "the computation did not start"
            time.sleep(0.05)
        victim = workers[busy[0]]["name"]
        kube.kubectl("delete", "pod", victim, "-n", namespace, "--wait=false")
        assert not future.done(), "the computation ended before the pod went: nothing recovered"
        np.testing.assert_allclose(future.result(timeout=300), expected)
        finished = time.time()
        removed = [
            (when, msg)
            for when, msg in client.get_events("all")
            if isinstance(msg, dict)
            and msg.get("action") == "remove-worker"
            and msg.get("worker") == busy[0]
        ]
        assert removed, "the scheduler never saw the victim go"
        # The scheduler and this test share the machine's clock (the local Kubernetes).
        assert removed[0][0] < finished, "the victim went after the computation ended"
        print(
            f"the victim went {finished - removed[0][0]:.1f}s before the computation ended; "
            f"keys it was computing: {len(removed[0][1]['processing-tasks'])}"
        )


def test_manifests_piped_into_kubectl_make_a_working_cluster(namespace, kube, image):
    yaml_text = subprocess.run(
        [sys.executable, "-m", "minimaldask.cli", "manifests", "piped", "-n", namespace, "--workers", "2",
         "--image", image, "--cpu", "50m", "--memory", "384Mi"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    kube.kubectl("apply", "-f", "-", input=yaml_text)
    try:
        with (
            MinimalCluster.from_name("piped", namespace=namespace) as cluster,
            Client(cluster) as client,
        ):
            client.wait_for_workers(2, timeout=120)
            assert client.submit(lambda: 42).result() == 42
    finally:
        assert delete_dask_cluster(namespace=namespace, name="piped")
    assert kube.objects_of("piped") == []


def test_deleting_a_cluster_that_does_not_exist_is_not_an_error(namespace, kube):
    assert delete_dask_cluster(namespace=namespace, name="never-started") is False


def test_expose_nodeport(namespace, kube, cluster_name):
    with MinimalCluster(name=cluster_name, workers=1, expose="nodeport") as cluster:
        service = kube.get("service", f"{cluster_name}-scheduler")
        assert service["spec"]["type"] == "NodePort"
        node_port = service["spec"]["ports"][0]["nodePort"]
        assert cluster.scheduler_address.endswith(f":{node_port}")
        with Client(cluster) as client:
            assert client.submit(lambda: 1).result() == 1


def test_changing_an_option_updates_the_cluster_in_place(namespace, kube, cluster_name):
    with MinimalCluster(name=cluster_name, workers=1):
        uid = kube.get("deployment", f"{cluster_name}-scheduler")["metadata"]["uid"]
        old_scheduler = set(kube.pods(cluster_name, "scheduler"))
        updated = MinimalCluster(name=cluster_name, workers=1, env={"TEAM": "data"}, update=True)
        try:
            dep = kube.get("deployment", f"{cluster_name}-scheduler")
            assert dep["metadata"]["uid"] == uid  # the same object, updated
            env = dep["spec"]["template"]["spec"]["containers"][0]["env"]
            assert {"name": "TEAM", "value": "data"} in env
            assert not set(kube.pods(cluster_name, "scheduler")) & old_scheduler
            with Client(updated) as client:
                client.wait_for_workers(1, timeout=120)
                assert client.submit(lambda: 2).result() == 2
        finally:
            updated.close()  # it attached: the cluster runs on
        assert kube.get("deployment", f"{cluster_name}-scheduler")["metadata"]["uid"] == uid
    # The handle that created it deleted it.
    assert kube.objects_of(cluster_name) == []
