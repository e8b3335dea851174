"""Only its owner reaches a cluster; its token touches only its own objects; it runs one build.

Run as the namespace-only user, in namespaces that enforce Pod Security "restricted".
"""

from __future__ import annotations

import json
import subprocess
import textwrap

import budgets
import pytest
from distributed import Client

import localkube
from minimaldask import MinimalCluster, contract
from testutil import wait_until, workers_of

pytestmark = [pytest.mark.kube, pytest.mark.slow, pytest.mark.timeout(900)]

RESTRICTED = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "readOnlyRootFilesystem": True,
}


def probe_pod(name, namespace, image, address, cert_dir=None):
    """A pod that tries to use the scheduler at ``address``; it prints REFUSED or CONNECTED."""
    code = textwrap.dedent(
        f"""
        import sys
        from distributed import Client
        from distributed.security import Security
        kwargs = {{}}
        if {cert_dir!r}:
            d = {cert_dir!r}
            kwargs["security"] = Security(tls_ca_file=d + "/ca.crt", tls_client_cert=d + "/tls.crt",
                                          tls_client_key=d + "/tls.key", require_encryption=True)
        for address in {address!r}:
            try:
                c = Client(address, timeout=15, **kwargs)
            except Exception as e:
                print("REFUSED", address, type(e).__name__, str(e)[:200], flush=True)
            else:
                print("CONNECTED", address, flush=True)
                c.close()
        """
    )
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 1000,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "probe",
                    "image": image,
                    "command": ["python3", "-c", code],
                    "securityContext": RESTRICTED,
                    "env": [{"name": "HOME", "value": "/tmp"}],
                    "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                }
            ],
            "volumes": [{"name": "tmp", "emptyDir": {}}],
        },
    }


def run_probe(kube, pod, namespace, admin=False, timeout=180):
    kube.kubectl("apply", "-f", "-", input=json.dumps(pod), admin=admin)
    name = pod["metadata"]["name"]

    def finished():
        phase = json.loads(
            kube.kubectl("get", "pod", name, "-n", namespace, "-o", "json", admin=admin).stdout
        )["status"].get("phase")
        return phase in ("Succeeded", "Failed")

    assert wait_until(finished, timeout, 2), f"probe pod {name} did not finish"
    return kube.kubectl("logs", name, "-n", namespace, admin=admin).stdout


def test_only_the_clusters_own_clients_reach_it(namespace, kube, image, localkube_cluster):
    other_ns = f"{namespace}-x"[:63]
    kube.kubectl("create", "namespace", other_ns, admin=True)
    try:
        with (
            MinimalCluster(name="owner", workers=1) as cluster,
            MinimalCluster(name="neighbour", workers=1),
        ):
            assert cluster.scheduler_address.startswith("tls://")
            with Client(cluster) as client:
                assert client.submit(sum, [1, 2]).result(timeout=60) == 3
            again = MinimalCluster.from_name("owner", namespace=namespace)
            with Client(again) as client:
                assert client.submit(sum, [3, 4]).result(timeout=60) == 7
            again.close()

            target = f"owner-scheduler.{namespace}.svc:8786"
            addresses = [f"tls://{target}", f"tcp://{target}"]
            # A pod of another namespace: no certificate at all.
            stranger = probe_pod("stranger", other_ns, image, addresses)
            out = run_probe(kube, stranger, other_ns, admin=True)
            print(out)
            assert "CONNECTED" not in out and out.count("REFUSED") == 2
            # The scheduler pod of another cluster in the same namespace: its own cluster's
            # certificate, which the owner's CA did not sign.
            (neighbour_pod,) = kube.pods("neighbour", "scheduler")
            code = probe_pod("x", namespace, image, addresses, contract.TLS_DIR)["spec"][
                "containers"
            ][0]["command"][2]
            result = kube.kubectl(
                "exec", neighbour_pod, "-n", namespace, "-c", "scheduler", "--",
                "python3", "-c", code, check=False,
                # Two connections that the NetworkPolicy drops, 15 s each with distributed's
                # retries, after its import on a node that may be busy.
                timeout=300,
            )  # fmt: skip
            print(result.stdout, result.stderr)
            assert "CONNECTED" not in result.stdout and result.stdout.count("REFUSED") == 2
    finally:
        kube.kubectl("delete", "namespace", other_ns, "--wait=false", admin=True, check=False)


def test_the_janitors_token_touches_only_its_own_cluster(
    namespace, kube, cluster_name, localkube_cluster, tmp_path
):
    with (
        MinimalCluster(name=cluster_name, workers=1),
        MinimalCluster(name="victim", workers=1),
    ):
        (pod,) = kube.pods(cluster_name, "scheduler")
        token = kube.kubectl(
            "exec", pod, "-n", namespace, "-c", "janitor", "--",
            "python3", "-c", f"print(open('{contract.TOKEN_DIR}/token').read())",
        ).stdout.strip()  # fmt: skip
        # The scheduler's own container has no token to read.
        found = kube.kubectl(
            "exec", pod, "-n", namespace, "-c", "scheduler", "--", "python3", "-c",
            f"import os; print(os.path.exists('{contract.TOKEN_DIR}/token'))",
        ).stdout.strip()  # fmt: skip
        assert found == "False"
        admin = json.loads(
            localkube_cluster.kubectl("config", "view", "--raw", "-o", "json").stdout
        )
        cluster = admin["clusters"][0]["cluster"]
        config = tmp_path / "janitor.kubeconfig"
        config.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "c", "cluster": cluster}],
                    "users": [{"name": "janitor", "user": {"token": token}}],
                    "contexts": [{"name": "j", "context": {"cluster": "c", "user": "janitor"}}],
                    "current-context": "j",
                }
            )
        )

        def as_janitor(*args):
            return subprocess.run(
                [str(localkube_cluster.bin_dir / "kubectl"), f"--kubeconfig={config}",
                 "-n", namespace, *args],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip

        (victim,) = kube.pods("victim", "worker")
        patched = as_janitor(
            "patch", "pod", victim, "--type=merge",
            "-p", json.dumps({"spec": {"containers": [{"name": "worker", "image": "evil:1"}]}}),
        )  # fmt: skip
        assert patched.returncode != 0 and "forbidden" in patched.stderr.lower()
        deleted = as_janitor("delete", "pod", victim, "--wait=false")
        assert deleted.returncode != 0 and "forbidden" in deleted.stderr.lower()
        template = as_janitor(
            "patch", "deployment", f"{cluster_name}-scheduler", "--type=merge",
            "-p", json.dumps({"spec": {"template": {"spec": {"serviceAccountName": "default"}}}}),
        )  # fmt: skip
        assert template.returncode != 0 and "forbidden" in template.stderr.lower()
        other_root = as_janitor("delete", "configmap", contract.root_name("victim"))
        assert other_root.returncode != 0 and "forbidden" in other_root.stderr.lower()
        # What it may do: scale its own workers.
        scaled = as_janitor("scale", "deployment", f"{cluster_name}-worker", "--replicas=1")
        assert scaled.returncode == 0, scaled.stderr


def test_a_worker_that_fills_its_tmp_is_evicted_alone_and_its_work_redone(
    namespace, kube, cluster_name
):
    with (
        MinimalCluster(name=cluster_name, workers=2, tmp_size="64Mi") as cluster,
        Client(cluster) as client,
    ):
        workers = workers_of(client)
        futures = client.map(lambda i: i * 7, range(100), pure=False)
        client.gather(futures)
        victim_address, victim = next((a, w["name"]) for a, w in workers.items())
        survivor = next(w["name"] for a, w in workers.items() if a != victim_address)

        def fill():
            with open("/tmp/ballast", "wb") as f:
                for _ in range(200):
                    f.write(b"\0" * 2**20)
            return "filled"

        assert client.submit(fill, workers=[victim_address], pure=False).result(60) == "filled"

        def evicted(name):
            # The pod's status says "Evicted" only if the kubelet wrote it before the worker
            # (draining on its SIGTERM) exited 0: else the pod ends "Succeeded". The kubelet's
            # own log says it either way (its Evicted event is best-effort, dropped when busy).
            pod = kube.pods(cluster_name, "worker", live=False).get(name) or {}
            if (pod.get("status") or {}).get("reason") == "Evicted":
                return True
            said = f'"Eviction manager: pod is evicted successfully" pod="{namespace}/{name}"'
            return said in (localkube.LOGS / "kubelet.log").read_text(errors="replace")

        assert wait_until(lambda: evicted(victim), budgets.KUBELET_EVICTION + budgets.REQUESTS, 2)
        assert not evicted(survivor), "more than the one worker went"
        assert client.gather(futures) == [i * 7 for i in range(100)]


def test_a_cluster_runs_the_digest_its_tag_named_at_the_start(
    namespace, kube, cluster_name, image, localkube_registry
):
    from test_failures import _push_with_labels

    # A tag of this test's own (others use the suite's image tag).
    mine = _push_with_labels(localkube_registry.push_address, image, f"pin-{cluster_name}", {})
    with MinimalCluster(name=cluster_name, workers=1, image=mine) as cluster:
        images = {
            c["image"]
            for kind in ("scheduler", "worker")
            for p in kube.pods(cluster_name, kind).values()
            for c in p["spec"]["containers"]
        }
        (pinned,) = images
        assert "@sha256:" in pinned and pinned.startswith(mine.rpartition(":")[0])
        # The tag moves to another build; a worker started now runs the first one.
        _push_with_labels(
            localkube_registry.push_address, image, f"pin-{cluster_name}", {"moved": "yes"}
        )
        cluster.scale(2)
        with Client(cluster) as client:
            client.wait_for_workers(2, timeout=120)
        new = {
            c["image"]
            for p in kube.pods(cluster_name, "worker").values()
            for c in p["spec"]["containers"]
        }
        assert new == {pinned}
