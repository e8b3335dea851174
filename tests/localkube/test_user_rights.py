"""The namespace-only user (the e2e tests of the Kubernetes backend run as it)
may use its namespace and nothing else."""

import json

import pytest

pytestmark = pytest.mark.kube


def can_i(ns, *args) -> str:
    proc = ns.kubectl("auth", "can-i", *args, check=False)
    return proc.stdout.strip()


def test_namespace_user_may_use_its_namespace(kube_namespace):
    kube_namespace.kubectl("create", "configmap", "mine", "--from-literal=a=b")
    assert (
        kube_namespace.kubectl("get", "configmap", "mine", "-o", "jsonpath={.data.a}").stdout == "b"
    )
    for verb_resource in (
        ["create", "deployments"],
        ["create", "pods"],
        ["create", "services"],
        ["create", "pods/exec"],
        ["create", "pods/portforward"],
        ["get", "pods/log"],
        ["create", "roles"],
        ["create", "rolebindings"],
    ):
        assert can_i(kube_namespace, *verb_resource) == "yes", verb_resource


@pytest.mark.parametrize(
    "args",
    [
        ["get", "nodes"],
        ["get", "namespaces"],
        ["create", "namespace", "not-allowed"],
        ["get", "clusterroles"],
        ["get", "persistentvolumes"],
        [
            "create",
            "clusterrolebinding",
            "steal",
            "--clusterrole=cluster-admin",
            "--user=minimaldask-e2e",
        ],
    ],
    ids=lambda a: " ".join(a[:2]),
)
def test_namespace_user_is_refused_cluster_scoped_objects(kube_namespace, args):
    proc = kube_namespace.cluster.kubectl(*args, as_user=True, check=False)
    assert proc.returncode != 0
    assert "forbidden" in proc.stderr.lower() and 'User "minimaldask-e2e"' in proc.stderr, (
        proc.stderr
    )


def test_namespace_user_is_refused_other_namespaces(kube_namespace, localkube_cluster):
    other = kube_namespace.name + "-other"
    localkube_cluster.kubectl("create", "namespace", other)
    try:
        for ns in ("kube-system", "default", other):
            proc = localkube_cluster.kubectl("-n", ns, "get", "pods", as_user=True, check=False)
            assert proc.returncode != 0 and "forbidden" in proc.stderr.lower(), (ns, proc.stderr)
            proc = localkube_cluster.kubectl(
                "-n", ns, "create", "configmap", "x", as_user=True, check=False
            )
            assert proc.returncode != 0 and "forbidden" in proc.stderr.lower(), (ns, proc.stderr)
    finally:
        localkube_cluster.kubectl("delete", "namespace", other, "--wait=false", check=False)


def test_namespace_user_cannot_grant_itself_more_than_it_has(kube_namespace):
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "escalate"},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "cluster-admin",
        },
        "subjects": [
            {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "minimaldask-e2e"}
        ],
    }
    proc = kube_namespace.kubectl("create", "-f", "-", input=json.dumps(binding), check=False)
    assert proc.returncode != 0 and "forbidden" in proc.stderr.lower(), proc.stderr
