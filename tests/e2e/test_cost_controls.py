"""Cost controls on a real cluster, as the namespace-only user, with short timeouts.

The janitor in the scheduler pod deletes the cluster (idle, no client, too old)
and scales it adaptively, with nothing but the cluster's own ServiceAccount.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import budgets
import distributed
import pytest
from distributed import Client
from distributed.client import FutureCancelledError

from minimaldask import MinimalCluster, list_clusters
from testutil import computed_more_than_once, wait_until, workers_of

pytestmark = [pytest.mark.kube, pytest.mark.slow, pytest.mark.timeout(600)]


def replicas(kube, name):
    return kube.get("deployment", f"{name}-worker")["spec"]["replicas"]


def test_a_client_killed_with_sigkill_leaves_no_object(namespace, kube, cluster_name, image):
    script = textwrap.dedent(
        f"""
        import time
        from minimaldask import MinimalCluster
        c = MinimalCluster(name={cluster_name!r}, namespace={namespace!r}, image={image!r}, image_pull_policy="Always",
                           workers=1, resources={{"cpu": "50m", "memory": "384Mi"}},
                           scheduler_resources={{"cpu": "50m", "memory": "384Mi"}},
                           idle_timeout=None, no_client_timeout="15s", quiet=True)
        print("started", flush=True)
        time.sleep(600)
        """
    )
    owner = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=os.environ.copy()
    )
    try:
        assert owner.stdout.readline().strip() == "started"
        # While its owner lives, the cluster lives, though no Client ever connected.
        time.sleep(20)
        assert kube.objects_of(cluster_name)
        owner.send_signal(signal.SIGKILL)
        owner.wait()
        t = time.monotonic()
        budget = budgets.self_deletion(15)
        assert wait_until(lambda: kube.objects_of(cluster_name) == [], budget, interval=1)
        print(f"every object gone {time.monotonic() - t:.0f}s after the SIGKILL")
    finally:
        owner.kill()


def test_an_idle_cluster_with_a_client_attached_ends_itself_and_says_why(
    namespace, kube, cluster_name
):
    with pytest.warns(RuntimeWarning, match="idle_timeout of 20s"):
        cluster = MinimalCluster(
            name=cluster_name, workers=1, idle_timeout="20s", no_client_timeout=None
        )
        client = Client(cluster)
        assert client.submit(sum, [1, 2]).result() == 3
        assert wait_until(lambda: cluster.shutdown_reason is not None, timeout=90)
    assert cluster.shutdown_reason == (
        f"minimaldask ended cluster {cluster_name!r}: "
        "it was idle (no task to run) for its idle_timeout of 20s"
    )
    assert wait_until(lambda: kube.objects_of(cluster_name) == [], timeout=60, interval=1)
    # The client closed instead of hanging on a reconnect.
    assert wait_until(lambda: client.status == "closed", timeout=60)
    client.close()
    cluster.close()


def test_max_lifetime_ends_a_busy_cluster(namespace, kube, cluster_name):
    cluster = MinimalCluster(
        name=cluster_name, workers=1, max_lifetime="45s", idle_timeout=None, no_client_timeout=None
    )
    with Client(cluster) as client:
        busy = client.submit(time.sleep, 600)
        with pytest.raises(FutureCancelledError, match="max_lifetime of 45s"):
            busy.result(timeout=120)
    assert wait_until(lambda: kube.objects_of(cluster_name) == [], timeout=60, interval=1)
    cluster.close()


def test_adapt_scales_with_the_work_without_losing_data_and_without_the_client(
    namespace, kube, cluster_name
):
    cluster = MinimalCluster(
        name=cluster_name,
        workers=0,
        idle_timeout=None,
        no_client_timeout=None,
        # Keep every transition, to show below that no key was computed twice.
        env={"DASK_DISTRIBUTED__ADMIN__LOW_LEVEL_LOG_LENGTH": "1000000"},
    )
    try:
        client = Client(cluster)
        cluster.adapt(0, 4, cooldown=10, min_worker_age=5)
        # Work submitted to a cluster at zero brings a worker up.
        keys = client.map(lambda i: i * 2, range(1000), pure=False)
        distributed.wait(keys, timeout=180)
        assert replicas(kube, cluster_name) >= 1

        # A burst of work brings the cluster up to its maximum.
        peak = 0

        def watch():
            nonlocal peak
            while not done.is_set():
                peak = max(peak, len(workers_of(client)))
                time.sleep(1)

        done = threading.Event()
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        burst = client.map(time.sleep, [1.0] * 300, pure=False)
        distributed.wait(burst, timeout=400)
        del burst
        # After it, graceful steps down; the 1000 keys stay retrievable at every step.
        seen = set()
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            n = len(workers_of(client))
            seen.add(n)
            assert client.gather(keys) == [i * 2 for i in range(1000)]
            if n == 1 and replicas(kube, cluster_name) == 1:
                break
            time.sleep(2)
        done.set()
        watcher.join()
        assert peak == 4, f"the burst reached {peak} workers"
        assert replicas(kube, cluster_name) == 1, "the data's last holder must stay"
        # No result was stored twice: none was lost on the way down.
        assert computed_more_than_once(client, [f.key for f in keys]) == {}
        print(f"worker counts seen on the way down: {sorted(seen, reverse=True)}")

        # The client goes away: the janitor alone takes the cluster to zero.
        client.close()
        cluster.shutdown_on_close = False
        cluster.close()
        t = time.monotonic()
        assert wait_until(lambda: replicas(kube, cluster_name) == 0, timeout=120, interval=2)
        assert wait_until(lambda: not kube.pods(cluster_name, "worker"), timeout=120)
        print(f"zero workers {time.monotonic() - t:.0f}s after the client left")

        # Work submitted to the cluster at zero brings workers back.
        again = MinimalCluster.from_name(cluster_name, namespace=namespace)
        with Client(again) as client2:
            assert client2.submit(sum, [20, 22]).result(timeout=180) == 42
        again.close()
        info = next(c for c in list_clusters(namespace=namespace) if c.name == cluster_name)
        assert info.details["adapt"] == [0, 4]
    finally:
        from minimaldask import delete_dask_cluster

        delete_dask_cluster(namespace=namespace, name=cluster_name)
    assert kube.objects_of(cluster_name) == []


def test_without_the_right_to_create_roles_the_cluster_starts_and_warns(
    namespace, kube, cluster_name, localkube_cluster
):
    user = localkube_cluster.user
    # The namespace-only user gets `edit` here instead of `admin`: no Roles.
    ns = ["-n", namespace]
    kube.kubectl("delete", "rolebinding", f"{user}-admin", *ns, admin=True)
    kube.kubectl(
        "create", "rolebinding", f"{user}-edit", "--clusterrole=edit", f"--user={user}", *ns,
        admin=True,
    )  # fmt: skip
    assert wait_until(
        lambda: kube.kubectl("auth", "can-i", "create", "roles", *ns, check=False).returncode != 0,
        30,
    )
    with pytest.warns(RuntimeWarning, match="Self-deletion is off") as warned:
        cluster = MinimalCluster(name=cluster_name, workers=1)
    # pytest.warns records every warning; take ours.
    (message,) = [str(w.message) for w in warned if "Self-deletion" in str(w.message)]
    assert message.startswith(f"Self-deletion is off for cluster {cluster_name!r}")
    assert "create roles.rbac.authorization.k8s.io" in message
    assert "create rolebindings.rbac.authorization.k8s.io" in message
    with Client(cluster) as client:
        assert client.submit(sum, [1, 2]).result() == 3
    pod = kube.get("deployment", f"{cluster_name}-scheduler")["spec"]["template"]["spec"]
    assert "serviceAccountName" not in pod
    cluster.close()
    assert kube.objects_of(cluster_name) == []


def _list(namespace, *args, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "minimaldask.cli", "list", "-n", namespace, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        **kwargs,
    ).stdout


def test_list_shows_age_workers_idle_time_and_timeouts(namespace, kube, cluster_name):
    from minimaldask.contract import STATUS_INTERVAL

    started = time.time()
    with MinimalCluster(
        name=cluster_name, workers=1, idle_timeout="10 minutes", max_lifetime="2h"
    ) as cluster:
        with Client(cluster) as client:
            assert client.submit(sum, [1, 2]).result() == 3
        assert cluster.usage()["peak_workers"] == 1

        def report():
            (info,) = [
                c for c in json.loads(_list(namespace, "--json")) if c["name"] == cluster_name
            ]
            return info if (info["details"].get("janitor") or {}).get("idle_since") else None

        # The janitor reports when it starts and every STATUS_INTERVAL: two of them at most.
        assert wait_until(lambda: report() is not None, 2 * STATUS_INTERVAL + 10, 1)
        info = report()
        details = info["details"]
        assert details["idle_timeout"] == 600 and details["max_lifetime"] == 7200
        assert (info["workers"], info["requested_workers"]) == (1, 1)
        assert started - 5 <= info["created"] <= time.time()
        idle_since = details["janitor"]["idle_since"]
        assert started - 5 <= idle_since <= time.time()

        table = _list(namespace, env={**os.environ, "COLUMNS": "200"})
        now = time.time()
        (row,) = [line for line in table.splitlines() if cluster_name in line]
        cells = [c.strip() for c in row.split("│") if c.strip()]
        name, workers, scheduler, age, idle, ends = cells
        assert (name, workers) == (cluster_name, "1/1")
        assert "(ready)" in scheduler
        assert age.endswith("s") and abs(int(age[:-1]) - (now - info["created"])) <= 5
        assert idle.endswith("s") and abs(int(idle[:-1]) - (now - idle_since)) <= 5
        assert "idle 10 min" in ends and "age 2.0 h" in ends
