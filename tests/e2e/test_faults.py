"""The two promises under real faults: a cluster never outlives its limits, and scaling
down never loses data. Each fault is injected for real on the local Kubernetes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import budgets
import distributed
import pytest
import report
from distributed import Client

from minimaldask import MinimalCluster, contract
from minimaldask.pod import janitor as janitor_module
from testutil import computed_more_than_once, wait_until, why_recomputed, workers_of

pytestmark = [pytest.mark.kube, pytest.mark.slow, pytest.mark.timeout(900)]

#: Keep every transition, to show that no key was computed twice.
FULL_LOG = {"DASK_DISTRIBUTED__ADMIN__LOW_LEVEL_LOG_LENGTH": "1000000"}


def gone_within(kube, name, seconds, fault="", since=None, kept="-"):
    """Whether every object of cluster ``name`` is gone within ``seconds``; prints how long,
    counted from ``since`` (a time.monotonic()) if given, and records it for the benchmark.
    """
    t = time.monotonic()
    since = t if since is None else since
    ok = wait_until(lambda: kube.objects_of(name) == [], seconds, interval=1)
    took = time.monotonic() - since
    bound = seconds + (t - since)
    print(f"cluster {name} gone after {took:.0f}s (bound {bound:.0f}s)")
    if fault:
        observed = f"gone after {took:.0f} s" if ok else f"still there after {took:.0f} s"
        report.record(fault, f"gone within {bound:.0f} s", observed, kept)
    return ok


def scheduler_restarts(kube, name):
    pods = kube.pods(name, "scheduler")
    return {
        p: {c["name"]: c.get("restartCount", 0) for c in pod["status"].get("containerStatuses", [])}
        for p, pod in pods.items()
    }


def unique_data_on_each_worker(client, size=200_000):
    """One scattered array per worker: it cannot be recomputed, only moved."""
    import numpy as np

    futures = {}
    for address, info in workers_of(client).items():
        (futures[info["name"]],) = client.scatter(
            [np.full(size, hash(info["name"]) % 1000, dtype="int64")],
            workers=[address],
            broadcast=False,
        )
    return futures


def test_max_lifetime_survives_the_scheduler_pod_being_deleted(namespace, kube, cluster_name):
    started = time.monotonic()
    cluster = MinimalCluster(
        name=cluster_name, workers=1, max_lifetime="120s", idle_timeout=None, no_client_timeout=None
    )
    try:
        time.sleep(max(0, 60 - (time.monotonic() - started)))
        (old,) = kube.pods(cluster_name, "scheduler")
        kube.kubectl("delete", "pod", old, "-n", namespace, "--wait=false")
        assert wait_until(lambda: set(kube.pods(cluster_name, "scheduler")) - {old}, 60), (
            "no new scheduler pod"
        )
        remaining = 120 - (time.monotonic() - started)
        # The lifetime counts from the cluster's creation, not from the new pod's.
        assert gone_within(
            kube,
            cluster_name,
            remaining + budgets.self_deletion(0),
            "max_lifetime=120s, the scheduler pod deleted at 60 s (from the start)",
            since=started,
        )
        print(f"gone {time.monotonic() - started:.0f}s after the start (max_lifetime 120 s)")
    finally:
        cluster.shutdown_on_close = False
        cluster.close()


def test_a_refused_delete_is_retried_until_the_rights_come_back(
    namespace, kube, cluster_name, localkube_cluster
):
    binding = f"{cluster_name}-janitor"
    with pytest.warns(RuntimeWarning, match="cannot delete the cluster"):
        cluster = MinimalCluster(
            name=cluster_name, workers=1, idle_timeout="20s", no_client_timeout=None
        )
        saved = kube.get("rolebinding", binding)
        kube.kubectl("delete", "rolebinding", binding, "-n", namespace, admin=True)
        before = scheduler_restarts(kube, cluster_name)
        # The idle timeout passes; the janitor's delete is refused, and it says so.
        assert wait_until(lambda: cluster.janitor_error is not None, 20 + 60, 1)
    assert "403" in cluster.janitor_error or "forbidden" in cluster.janitor_error.lower()
    time.sleep(10)  # it keeps trying: the cluster must still be there, its scheduler untouched
    assert kube.objects_of(cluster_name)
    assert scheduler_restarts(kube, cluster_name) == before
    restored = {
        k: v for k, v in saved.items() if k in ("apiVersion", "kind", "roleRef", "subjects")
    }
    restored["metadata"] = {
        k: saved["metadata"][k] for k in ("name", "namespace", "labels", "ownerReferences")
    }
    kube.kubectl("apply", "-f", "-", admin=True, input=json.dumps(restored))
    # The next try (back-off at most BACKOFF[1]) succeeds.
    assert gone_within(
        kube,
        cluster_name,
        janitor_module.BACKOFF[1] + budgets.delete() + 15,
        "the janitor's RoleBinding removed past idle_timeout, then restored (from the restore)",
    )
    assert scheduler_restarts(kube, cluster_name) in ({}, before)
    cluster.shutdown_on_close = False
    cluster.close()


def test_a_scheduler_that_crash_loops_after_its_start_is_ended(
    namespace, kube, cluster_name, image
):
    # A preload file, harmless at the start, that a "broken package" later turns into a crash.
    writer = {
        "name": "preload",
        "image": image,
        "command": ["python3", "-c", "open('/tmp/late.py', 'w').write('pass\\n')"],
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
        },
    }
    patch = {"scheduler": {"spec": {"template": {"spec": {"initContainers": [writer]}}}}}
    cluster = MinimalCluster(
        name=cluster_name,
        workers=1,
        idle_timeout=None,
        no_client_timeout=None,
        scheduler_options="--preload /tmp/late.py",
        patch=patch,
    )
    cluster.shutdown_on_close = False
    cluster.close()
    (pod,) = kube.pods(cluster_name, "scheduler")
    breaking = (
        "import os, signal; open('/tmp/late.py', 'w').write('raise SystemExit(3)\\n'); "
        "[os.kill(int(p), signal.SIGKILL) for p in os.listdir('/proc') if p.isdigit() and "
        "int(p) != os.getpid() and b'dask_scheduler' in open(f'/proc/{p}/cmdline', 'rb').read()]"
    )
    crashed = time.monotonic()
    killed = kube.kubectl(
        "exec", pod, "-n", namespace, "-c", "scheduler", "--", "python3", "-c", breaking,
        check=False,
    )  # fmt: skip
    # The kill ends the container, and with it this exec if it has not returned yet (137).
    assert killed.returncode in (0, 137), killed.stdout + killed.stderr
    assert wait_until(
        lambda: any(
            (c.get("state") or {}).get("waiting", {}).get("reason") == "CrashLoopBackOff"
            for p in kube.pods(cluster_name, "scheduler").values()
            for c in p["status"].get("containerStatuses", [])
        ),
        90,
    ), "the scheduler did not crash-loop"
    assert gone_within(
        kube,
        cluster_name,
        janitor_module.GONE_AFTER + budgets.self_deletion(0),
        "the scheduler crash-loops after its start (from the first crash)",
        since=crashed,
    )


def test_a_frozen_worker_does_not_stop_max_lifetime_and_no_key_is_lost(
    namespace, kube, cluster_name
):
    started = time.monotonic()
    lifetime = 200
    cluster = MinimalCluster(
        name=cluster_name,
        workers=3,
        max_lifetime=f"{lifetime}s",
        idle_timeout=None,
        no_client_timeout=None,
        env=FULL_LOG,
    )
    client = Client(cluster)
    try:
        futures = unique_data_on_each_worker(client)
        # Freeze a worker that holds nothing (its own data goes first: a frozen worker is
        # killed by its liveness probe after a minute, and what it held with it).
        victim = sorted(futures)[0]
        futures.pop(victim).release()
        freeze = (
            "import os, signal; [os.kill(int(p), signal.SIGSTOP) for p in os.listdir('/proc') "
            "if p.isdigit() and int(p) not in (1, os.getpid())]"
        )
        kube.kubectl("exec", victim, "-n", namespace, "-c", "worker", "--", "python3", "-c", freeze)
        # Adaptive scaling wants fewer workers (nothing to do): it retires, and the frozen
        # worker is where the data of a retired one may be sent.
        cluster.adapt(0, 3, cooldown=5, min_worker_age=0)
        keys = {f.key for f in futures.values()}
        holders = []

        def look(dask_scheduler, keys=keys):
            ending = dask_scheduler.plugins["minimaldask"].shutdown_reason
            held = {
                str(k): len(dask_scheduler.tasks[k].who_has or ())
                for k in keys
                if k in dask_scheduler.tasks
            }
            return ending, held

        def watch():
            while not done.is_set():
                try:
                    ending, held = client.run_on_scheduler(look)
                except Exception:  # the scheduler is gone: the cluster ended
                    return
                if ending:  # the janitor ended the cluster: it cancels every client's keys
                    return
                holders.append(held)
                time.sleep(2)

        done = threading.Event()
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        remaining = lifetime - (time.monotonic() - started)
        ended = gone_within(kube, cluster_name, remaining + budgets.self_deletion(0))
        done.set()
        watcher.join(10)
        assert holders, "the scheduler was never looked at"
        lost = [h for h in holders if len(h) < len(keys) or min(h.values(), default=0) < 1]
        report.record(
            f"a worker frozen (SIGSTOP) while adaptive scaling retires; max_lifetime={lifetime}s",
            f"gone within {lifetime + budgets.self_deletion(0):.0f} s of the start",
            f"gone after {time.monotonic() - started:.0f} s" if ended else "still there",
            "yes" if not lost else f"no: {len(lost)} looks found a key without a holder",
        )
        assert ended
        assert lost == [], f"a key had no holder while the cluster lived: {lost[:3]}"
    finally:
        client.close()
        cluster.shutdown_on_close = False
        cluster.close()


def _scale_down_keeps_everything(client, cluster, kube, name, scale_to_one, how=""):
    """Three workers with unique data and computed results; ``scale_to_one()``; all still there."""
    client.wait_for_workers(3, timeout=180)
    assert wait_until(lambda: len(kube.pods(name, "worker")) == 3, 120)
    futures = unique_data_on_each_worker(client)
    computed = client.map(lambda i: i * 3, range(200), pure=False)
    distributed.wait(computed)
    scale_to_one()
    assert wait_until(lambda: len(workers_of(client)) == 1, 120)
    assert wait_until(lambda: len(kube.pods(name, "worker")) == 1, 120)
    for worker, future in futures.items():
        assert int(future.result(timeout=60)[0]) == hash(worker) % 1000
    assert client.gather(computed) == [i * 3 for i in range(200)]
    twice = computed_more_than_once(client, {f.key for f in computed})
    report.record(
        f"3 -> 1 workers {how}, unique data on each",
        "every key kept, none computed twice",
        f"{len(futures)} scattered and 200 computed keys gathered; {len(twice)} computed twice",
        "yes" if not twice else "no",
    )
    assert twice == {}, why_recomputed(client, twice)


def test_scaling_down_from_another_process_a_reattached_handle_and_adapt_loses_nothing(
    namespace, kube, cluster_name
):
    cluster = MinimalCluster(
        name=cluster_name, workers=3, idle_timeout=None, no_client_timeout=None, env=FULL_LOG
    )
    client = Client(cluster)
    try:
        # 1. `minimaldask scale` in another process, which never saw these workers.
        def cli():
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "minimaldask.cli",
                    "scale",
                    cluster_name,
                    "1",
                    "-n",
                    namespace,
                ],
                check=True,
                timeout=300,
                env=os.environ.copy(),
            )

        _scale_down_keeps_everything(
            client, cluster, kube, cluster_name, cli, "by minimaldask scale"
        )

        # 2. A handle attached by name.
        cluster.scale(3)

        def attached():
            again = MinimalCluster.from_name(cluster_name, namespace=namespace)
            again.scale(1)
            again.close()

        _scale_down_keeps_everything(
            client, cluster, kube, cluster_name, attached, "by an attached handle"
        )

        # 3. Adaptive scaling in the scheduler.
        cluster.scale(3)

        def adaptive():
            cluster.adapt(1, 3, cooldown=5, min_worker_age=0)

        _scale_down_keeps_everything(
            client, cluster, kube, cluster_name, adaptive, "by adaptive scaling"
        )
    finally:
        client.close()
        cluster.close()
    assert kube.objects_of(cluster_name) == []


def test_a_worker_pod_deleted_or_evicted_hands_its_data_over(namespace, kube, cluster_name):
    with (
        MinimalCluster(name=cluster_name, workers=3, env=FULL_LOG) as cluster,
        Client(cluster) as client,
    ):
        futures = unique_data_on_each_worker(client)
        computed = client.map(lambda i: i + 1, range(300), pure=False)
        distributed.wait(computed)
        first, second, _ = sorted(futures)
        # A normal delete: SIGTERM after the preStop hook, within the grace period.
        kube.kubectl("delete", "pod", first, "-n", namespace, "--wait=false")
        # A node drain's way: the eviction API.
        eviction = {
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": second, "namespace": namespace},
        }
        kube.kubectl(
            "create", "--raw", f"/api/v1/namespaces/{namespace}/pods/{second}/eviction",
            "-f", "-", input=json.dumps(eviction),
        )  # fmt: skip
        assert wait_until(
            lambda: not {first, second} & set(kube.pods(cluster_name, "worker")), 180
        ), "the two pods did not go"
        for worker, future in futures.items():
            assert int(future.result(timeout=60)[0]) == hash(worker) % 1000
        assert client.gather(computed) == [i + 1 for i in range(300)]
        twice = computed_more_than_once(client, {f.key for f in computed})
        report.record(
            "a worker pod deleted (SIGTERM) and another evicted (a drain)",
            "every key kept, none computed twice",
            f"{len(futures)} scattered and 300 computed keys gathered; {len(twice)} computed twice",
            "yes" if not twice else "no",
        )
        assert twice == {}, why_recomputed(client, twice)
        # The Deployment replaced them: three workers again.
        client.wait_for_workers(3, timeout=180)
    assert kube.objects_of(cluster_name) == []


def test_two_processes_starting_one_name_at_once_make_one_cluster(
    namespace, kube, cluster_name, image
):
    script = textwrap.dedent(
        f"""
        import sys, time
        from minimaldask import MinimalCluster
        team = sys.argv[1]
        start = float(sys.argv[2])
        time.sleep(max(0, start - time.time()))
        c = MinimalCluster(name={cluster_name!r}, namespace={namespace!r}, workers=1,
                           env={{"TEAM": team}}, quiet=True)
        print("created" if c._backend.created else "attached", flush=True)
        sys.stdin.readline()
        c.close()
        print("closed", flush=True)
        """
    )
    at = time.time() + 15  # both import and pre-flight first, then start together
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, team, str(at)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=os.environ.copy(),
        )
        for team in ("a", "b")
    ]
    try:
        said = [p.stdout.readline().strip() for p in procs]
        report.record(
            "two processes start one name at once (different env)",
            "one creates, one attaches; the scheduler is not replaced",
            " and ".join(sorted(said)),
        )
        assert sorted(said) == ["attached", "created"], said
        creator = procs[said.index("created")]
        attacher = procs[said.index("attached")]
        (pod,) = kube.pods(cluster_name, "scheduler")
        attacher.stdin.write("\n")
        attacher.stdin.flush()
        assert attacher.stdout.readline().strip() == "closed"
        time.sleep(5)
        # Closing the handle that attached left the cluster running, its scheduler unchanged.
        assert set(kube.pods(cluster_name, "scheduler")) == {pod}
        dep = kube.get("deployment", f"{cluster_name}-scheduler")
        assert dep["metadata"]["generation"] == 1
        creator.stdin.write("\n")
        creator.stdin.flush()
        assert creator.stdout.readline().strip() == "closed"
    finally:
        for p in procs:
            p.kill()
    assert gone_within(kube, cluster_name, budgets.delete() + 30)


def test_the_janitor_holds_the_only_token_and_its_clocks_are_saved(namespace, kube, cluster_name):
    with MinimalCluster(name=cluster_name, workers=1, idle_timeout="10 minutes"):
        (pod,) = kube.pods(cluster_name, "scheduler").values()
        mounts = {
            c["name"]: [m["mountPath"] for m in c.get("volumeMounts", [])]
            for c in pod["spec"]["containers"]
        }
        assert contract.TOKEN_DIR in mounts["janitor"]
        assert contract.TOKEN_DIR not in mounts["scheduler"]

        def saved():
            data = kube.get("configmap", contract.root_name(cluster_name)).get("data") or {}
            return contract.decode_status(data.get(contract.STATE_STATUS) or "{}")

        # The janitor saves its clocks when they change (the first worker joined), or every
        # SAVE_EVERY[1] seconds.
        assert wait_until(
            lambda: saved().get("ready_at") is not None, 2 * janitor_module.SAVE_EVERY[1] + 10
        )
        assert saved()["idle_timeout"] == 600
