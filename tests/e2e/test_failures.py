"""Every way a start can fail, triggered for real: the message, the deadline, nothing left behind."""

from __future__ import annotations

import hashlib
import json
import time
import urllib.request

import budgets
import pytest
from distributed import Client

from minimaldask import MinimalCluster
from minimaldask.exceptions import (
    ClusterStartError,
    ForbiddenError,
    ImageMismatchError,
)
from minimaldask.spec import client_versions, default_image_tag

pytestmark = [pytest.mark.kube, pytest.mark.slow]

NAME = "broken"


def start_fails(kube, error, match, within, **options):
    """Start a cluster that cannot start: it fails with ``error`` matching ``match`` in time."""
    t = time.monotonic()
    with pytest.raises(error, match=match) as info:
        MinimalCluster(name=NAME, workers=1, **options)
    elapsed = time.monotonic() - t
    assert elapsed < within, f"took {elapsed:.0f}s: {info.value}"
    assert kube.objects_of(NAME) == []
    return str(info.value)


def test_an_image_of_another_python_minor_version(namespace, kube, image, localkube_registry):
    # Code objects differ between minor versions: cloudpickle would break. A patch level
    # alone (3.11.2 in the image, 3.11.7 here) is no mismatch: see the next test.
    other = _push_with_labels(
        localkube_registry.push_address,
        image,
        "other-python",
        {"org.minimaldask.python.version": "3.99"},
    )
    message = start_fails(
        kube, ImageMismatchError, "does not match this client", budgets.REQUESTS, image=other
    )
    mine = client_versions()["python"]
    assert f"python 3.99 in the image but {mine} here" in message
    assert f"image={image.rpartition(':')[0]}:{default_image_tag()}" in message


def test_a_patch_level_difference_says_nothing(namespace, kube, cluster_name):
    import warnings

    with MinimalCluster(name=cluster_name, workers=1) as cluster:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with Client(cluster) as client:
                assert client.submit(sum, [1, 1]).result(timeout=60) == 2
        versions = client_versions()["python"]
        mismatches = [str(w.message) for w in caught if "Mismatched versions" in str(w.message)]
        assert mismatches == [], f"client Python {versions}: {mismatches}"


def test_an_image_that_does_not_exist(namespace, kube, image):
    missing = image.rpartition(":")[0] + ":no-such-tag"
    message = start_fails(
        kube, ClusterStartError, "does not exist", budgets.REQUESTS, image=missing
    )
    assert missing in message


def test_an_image_that_cannot_be_pulled(namespace, kube):
    # Nothing listens there: the client cannot check it (and says so), the node cannot pull it.
    message = start_fails(
        kube,
        ClusterStartError,
        "cannot pull the image",
        budgets.fail_fast(),
        image="localhost:5999/minimaldask:1",
    )
    assert "localhost:5999/minimaldask:1" in message
    assert "ErrImagePull" in message or "ImagePullBackOff" in message


def test_a_crashing_command(namespace, kube):
    # Dask parses it (the client checks options as dask would), but the worker cannot use it.
    message = start_fails(
        kube,
        ClusterStartError,
        "CrashLoopBackOff",
        budgets.fail_fast(crashes=2),
        worker_options="--memory-limit not-a-size",
    )
    assert "exited with code 1" in message
    assert "First error in its log" in message
    assert "Could not interpret" in message  # the cause, from the first traceback


def test_workers_that_give_up_before_their_scheduler_listens_do_not_fail_the_start(
    namespace, kube, cluster_name, image
):
    # The scheduler's pod waits 45 s in an init container (a node still pulling its image);
    # the workers give up waiting for it after 15 s and exit 1, more than once.
    late = {
        "name": "late",
        "image": image,
        "command": ["/usr/bin/python3", "-c", "import time; time.sleep(45)"],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
        },
    }
    patch = {"scheduler": {"spec": {"template": {"spec": {"initContainers": [late]}}}}}
    with MinimalCluster(
        name=cluster_name, workers=2, death_timeout="15s", patch=patch, startup_timeout=240
    ) as cluster:
        restarts = {
            name: sum(c.get("restartCount", 0) for c in p["status"]["containerStatuses"])
            for name, p in kube.pods(cluster_name, "worker").items()
        }
        print(f"worker restarts before the scheduler listened: {restarts}")
        assert all(n >= 1 for n in restarts.values()), "the workers never gave up: no race here"
        with Client(cluster) as client:
            assert client.submit(sum, [1, 2]).result(timeout=60) == 3
    assert kube.objects_of(cluster_name) == []


def test_a_request_larger_than_the_node(namespace, kube):
    # A node pool may add a node that fits: the start waits for one until its deadline.
    t = time.monotonic()
    message = start_fails(
        kube,
        ClusterStartError,
        r"cannot be scheduled \(Unschedulable\) within startup_timeout=30s",
        30 + budgets.REQUESTS + budgets.delete(),
        resources={"cpu": "64", "memory": "1Gi"},
        startup_timeout=30,
    )
    assert time.monotonic() - t >= 30, "failed before its deadline"
    assert "Insufficient cpu" in message


def test_a_quota_refusal(namespace, kube):
    quota = {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "two-pods", "namespace": namespace},
        "spec": {"hard": {"pods": "1"}},
    }
    kube.kubectl("apply", "-f", "-", admin=True, input=json.dumps(quota))
    deadline = time.monotonic() + 30
    while not kube.get("resourcequota", "two-pods").get("status", {}).get("hard"):
        assert time.monotonic() < deadline, "the quota controller did not count the namespace"
        time.sleep(0.5)
    message = start_fails(kube, ClusterStartError, "exceeded quota", budgets.fail_fast())
    assert f"{NAME}-worker" in message


def test_a_forbidden_verb(namespace, kube):
    # Take the admin role away; grant everything minimaldask needs but port-forwarding.
    kube.kubectl("delete", "rolebinding", "--all", "-n", namespace, admin=True)
    rules = [
        {"apiGroups": ["apps"], "resources": ["deployments", "replicasets"], "verbs": ["*"]},
        {
            "apiGroups": [""],
            "resources": ["services", "pods", "pods/log", "configmaps", "secrets"],
            "verbs": ["*"],
        },
        {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": ["*"]},
    ]
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "no-portforward", "namespace": namespace},
        "rules": rules,
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "no-portforward", "namespace": namespace},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": "no-portforward",
        },
        "subjects": [
            {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "minimaldask-e2e"}
        ],
    }
    for obj in (role, binding):
        kube.kubectl("apply", "-f", "-", admin=True, input=json.dumps(obj))
    message = start_fails(kube, ForbiddenError, "may not create pods/portforward", budgets.REQUESTS)
    assert "minimaldask-e2e" in message and namespace in message
    assert "rolebinding" in message  # the fix


def _push_with_labels(registry: str, image: str, tag: str, labels: dict[str, str]) -> str:
    """Push a copy of ``image`` whose config records other labels; return its reference."""
    repo = image.split("/", 1)[1].rpartition(":")[0]
    base = f"http://{registry}/v2/{repo}"
    accept = "application/vnd.oci.image.index.v1+json,application/vnd.oci.image.manifest.v1+json"

    def get(url: str) -> dict:
        with urllib.request.urlopen(urllib.request.Request(url, headers={"Accept": accept})) as r:
            return json.loads(r.read())

    manifest = get(f"{base}/manifests/{image.rpartition(':')[2]}")
    if "manifests" in manifest:
        manifest = get(f"{base}/manifests/{manifest['manifests'][0]['digest']}")
    with urllib.request.urlopen(f"{base}/blobs/{manifest['config']['digest']}") as r:
        config = json.loads(r.read())
    config["config"]["Labels"] = {**config["config"].get("Labels", {}), **labels}
    data = json.dumps(config).encode()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    req = urllib.request.Request(f"{base}/blobs/uploads/", method="POST", data=b"")
    with urllib.request.urlopen(req) as r:
        location = r.headers["Location"]
    if location.startswith("/"):
        location = f"http://{registry}{location}"
    sep = "&" if "?" in location else "?"
    req = urllib.request.Request(
        f"{location}{sep}digest={digest}",
        method="PUT",
        data=data,
        headers={"Content-Type": "application/octet-stream"},
    )
    urllib.request.urlopen(req).close()
    manifest["config"] = {**manifest["config"], "digest": digest, "size": len(data)}
    if "annotations" in manifest:
        manifest["annotations"] = {**manifest["annotations"], **labels}
    req = urllib.request.Request(
        f"{base}/manifests/{tag}",
        method="PUT",
        data=json.dumps(manifest).encode(),
        headers={
            "Content-Type": manifest.get("mediaType", "application/vnd.oci.image.manifest.v1+json")
        },
    )
    urllib.request.urlopen(req).close()
    return f"{image.split('/', 1)[0]}/{repo}:{tag}"


def test_a_mismatched_image(namespace, kube, image, localkube_registry):
    other = _push_with_labels(
        localkube_registry.push_address,
        image,
        "mismatch",
        {
            "org.minimaldask.dask.version": "2024.1.0",
            "org.minimaldask.distributed.version": "2024.1.0",
        },
    )
    message = start_fails(
        kube, ImageMismatchError, "does not match this client", budgets.REQUESTS, image=other
    )
    mine = client_versions()["dask"]
    assert f"dask 2024.1.0 in the image but {mine} here" in message
    # The fix: the image built for this client.
    assert f"image={image.rpartition(':')[0]}:{default_image_tag()}" in message


def test_a_missing_namespace(namespace, kube):
    t = time.monotonic()
    with pytest.raises(ForbiddenError, match="no rights in namespace 'no-such-namespace'") as info:
        MinimalCluster(name=NAME, namespace="no-such-namespace")
    assert time.monotonic() - t < budgets.REQUESTS
    assert "does the namespace exist?" in str(info.value)


def test_keep_on_failure_keeps_the_objects(namespace, kube):
    with pytest.raises(ClusterStartError, match="CrashLoopBackOff"):
        MinimalCluster(
            name=NAME, workers=1, worker_options="--memory-limit not-a-size", keep_on_failure=True
        )
    assert f"deployment.apps/{NAME}-worker" in kube.objects_of(NAME)
    from minimaldask import delete_dask_cluster

    assert delete_dask_cluster(namespace=namespace, name=NAME)
    assert kube.objects_of(NAME) == []


def test_a_load_balancer_that_never_comes(namespace, kube):
    # The local Kubernetes has no load-balancer controller.
    start_fails(
        kube,
        ClusterStartError,
        "got no address within startup_timeout=20s: does this Kubernetes have a load-balancer",
        20 + budgets.REQUESTS + budgets.delete(),
        expose="loadbalancer",
        startup_timeout=20,
    )
