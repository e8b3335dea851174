"""localkube enforces NetworkPolicy (kube-router's controller, iptables and ipset)."""

import json
import re
import subprocess
from pathlib import Path

import pytest

import localkube

pytestmark = pytest.mark.kube


def pod(name: str, image: str, labels: dict, ports=(8080,)) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "containers": [
                {
                    "name": f"probe-{port}",
                    "image": image,
                    "args": ["serve", f":{port}"],
                    "readinessProbe": {
                        "httpGet": {"path": "/ready", "port": port},
                        "periodSeconds": 1,
                    },
                }
                for port in ports
            ],
            "terminationGracePeriodSeconds": 0,
        },
    }


def policies(client_namespace: str) -> list[dict]:
    """Default deny of all ingress, and an allow rule for pods labelled access=web of
    `client_namespace`, on port 8080."""
    return [
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "default-deny-ingress"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
        },
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "allow-web-clients"},
            "spec": {
                "podSelector": {"matchLabels": {"app": "web"}},
                "policyTypes": ["Ingress"],
                "ingress": [
                    {
                        "from": [
                            {
                                "namespaceSelector": {
                                    "matchLabels": {"kubernetes.io/metadata.name": client_namespace}
                                },
                                "podSelector": {"matchLabels": {"access": "web"}},
                            }
                        ],
                        "ports": [{"protocol": "TCP", "port": 8080}],
                    }
                ],
            },
        },
    ]


@pytest.fixture
def other_namespace(kube_namespace, localkube_cluster):
    """A second namespace for the clients, in which the namespace user is admin too."""
    name = kube_namespace.name + "-cl"
    localkube.apply(localkube.namespace_user_objects(name, localkube_cluster.user))
    localkube.wait_for(
        f"service account default in {name}",
        30,
        lambda: (
            localkube_cluster.kubectl(
                "-n", name, "get", "serviceaccount", "default", check=False
            ).returncode
            == 0
        ),
    )
    yield name
    localkube_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def connect(cluster, namespace: str, pod_name: str, address: str) -> tuple[str, float]:
    out = cluster.kubectl(
        "-n", namespace, "exec", pod_name, "--", "/probe", "connect", address, check=False
    ).stdout
    match = re.fullmatch(r"connect \S+: (.+) after ([\d.]+) s\n", out)
    assert match, out
    return match.group(1), float(match.group(2))


def test_default_deny_keeps_other_namespaces_out_and_an_allow_rule_lets_its_pods_in(
    kube_namespace, other_namespace, probe_image
):
    cluster = kube_namespace.cluster
    # web listens on 8080, which the allow rule names, and on 8081, which it does not
    kube_namespace.apply(pod("web", probe_image, {"app": "web"}, ports=(8080, 8081)))
    clients = {
        "intruder": {"app": "intruder"},
        "friend": {"app": "friend", "access": "web"},
    }
    for name, labels in clients.items():
        cluster.kubectl(
            "-n",
            other_namespace,
            "apply",
            "-f",
            "-",
            input=json.dumps(pod(name, probe_image, labels)),
        )
    kube_namespace.kubectl("wait", "--for=condition=Ready", "pod/web", "--timeout=90s", timeout=120)
    cluster.kubectl(
        "-n", other_namespace, "wait", "--for=condition=Ready", "pod/intruder", "pod/friend",
        "--timeout=90s", timeout=120,
    )  # fmt: skip
    web_ip = kube_namespace.kubectl("get", "pod", "web", "-o", "jsonpath={.status.podIP}").stdout
    target = f"{web_ip}:8080"

    # Before any policy both get in, on both ports: what follows is the policy's doing.
    for name in clients:
        for port in (8080, 8081):
            result = connect(cluster, other_namespace, name, f"{web_ip}:{port}")[0]
            assert result == "connected", (name, port, result)

    kube_namespace.apply(*policies(other_namespace))
    denied = localkube.wait_for(
        "kube-router to apply the policies",
        30,
        lambda: (
            (r := connect(cluster, other_namespace, "intruder", target))[0] != "connected" and r
        ),
        interval=0.5,
    )
    print(f"intruder -> web: {denied}")
    for attempt in range(3):
        result, seconds = connect(cluster, other_namespace, "intruder", target)
        print(f"intruder -> web, try {attempt + 1}: {result} after {seconds:.3f} s")
        assert result in ("refused", "timeout"), result
        result, seconds = connect(cluster, other_namespace, "friend", target)
        print(f"friend -> web, try {attempt + 1}: {result} after {seconds:.3f} s")
        assert result == "connected", result
    # the port the allow rule does not name is closed to the friend too
    blocked = connect(cluster, other_namespace, "friend", f"{web_ip}:8081")
    print(f"friend -> web:8081: {blocked}")
    assert blocked[0] in ("refused", "timeout")

    # The kubelet's readiness probe (from the node) still gets through: web stays Ready.
    ready = kube_namespace.kubectl(
        "get", "pod", "web", "-o", 'jsonpath={.status.conditions[?(@.type=="Ready")].status}'
    ).stdout
    assert ready == "True"

    # A port-forward enters the pod's own network namespace: the policy does not apply.
    forward = subprocess.Popen(
        [
            str(cluster.bin_dir / "kubectl"),
            f"--kubeconfig={cluster.user_kubeconfig}",
            "-n",
            kube_namespace.name,
            "port-forward",
            "--address=127.0.0.1",
            "pod/web",
            ":8080",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = localkube.wait_for("port-forward to print its port", 30, forward.stdout.readline)
        port = re.match(r"Forwarding from 127\.0\.0\.1:(\d+) -> 8080", line)
        assert port, line
        with localkube.DIRECT.open(
            f"http://127.0.0.1:{port.group(1)}/through-forward", timeout=10
        ) as r:
            body = r.read().decode()
        assert body.startswith("hello from web") and "path=/through-forward" in body
    finally:
        forward.terminate()
        forward.wait(timeout=10)


def test_the_controller_runs_with_its_own_identity_and_only_read_rights(localkube_cluster):
    user = localkube.NETPOL_USER
    can = lambda *args: localkube_cluster.kubectl(  # noqa: E731
        "auth", "can-i", *args, f"--as={user}", check=False
    ).stdout.strip()
    assert can("watch", "networkpolicies", "--all-namespaces") == "yes"
    assert can("list", "pods", "--all-namespaces") == "yes"
    assert can("get", f"nodes/{localkube.NODE_NAME}") == "yes"
    for verb_resource in (
        ["create", "pods"],
        ["get", "secrets"],
        ["patch", "networkpolicies"],
        ["get", "nodes/other-node"],
        ["delete", "namespaces"],
    ):
        assert can(*verb_resource, "--all-namespaces") == "no", verb_resource
    # and it is that identity the process uses
    kubeconfig = json.loads((localkube.STATE / "netpol.kubeconfig").read_text())
    pid = localkube.pid_of("netpol")
    assert pid, "netpol is not running"
    cmdline = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
    assert f"--kubeconfig={localkube.STATE / 'netpol.kubeconfig'}" in cmdline
    assert kubeconfig["users"][0]["name"] == "netpol"
    subject = localkube.run(
        ["openssl", "x509", "-noout", "-subject", "-in", localkube.PKI / "netpol.crt"]
    ).stdout
    assert f"CN = {user}" in subject
