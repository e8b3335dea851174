"""localkube enforces NetworkPolicy (kube-router's controller, iptables and ipset)."""

import itertools
import json
import re
import subprocess
import threading
import time
import uuid
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


def test_rules_that_others_add_or_delete_while_the_controller_syncs_stay_as_they_left_them(
    kube_namespace,
):
    """Docker's rules for a network it had just created went missing in a CI run (the
    image suite's containers could not reach each other for 120 s), and rules of networks
    it had removed came back: kube-router v2.1.0 saves the whole filter table, rebuilds
    its chains in the copy and restores the whole table, undoing what others changed in
    between; and when another program puts its jump above the controller's in FORWARD
    (Docker does at each network it creates), the controller inserts its own at the top
    again and deletes the old copy by its position, which by then may be another rule.

    Here a program does what Docker does at each network, while NetworkPolicies change
    all the while (the controller syncs at each change): it moves its jump to the top
    of FORWARD and appends a rule there; then it deletes half of those rules."""
    chain = f"LKTEST-{uuid.uuid4().hex[:8]}"
    iptables = lambda *args, check=True: localkube.run(  # noqa: E731
        ["iptables", "-w", "5", *args], check=check
    )
    rule = lambda i: ["-s", f"192.0.2.{i + 1}/32", "-j", chain]  # noqa: E731
    jump = ["-j", chain]
    stop = threading.Event()

    def churn():
        for i in itertools.count():
            if stop.is_set():
                return
            kube_namespace.apply(netpol(f"churn-{i % 2}"), as_user=False)
            kube_namespace.kubectl(
                "delete", "networkpolicy", f"churn-{(i + 1) % 2}", "--ignore-not-found",
                as_user=False,
            )  # fmt: skip

    def ours() -> list[str]:
        return [line for line in iptables("-S", "FORWARD").stdout.splitlines() if chain in line]

    iptables("-N", chain)  # empty: its rules in FORWARD match nothing, and return
    syncs_before = syncs_started()
    churner = threading.Thread(target=churn, daemon=True)
    churner.start()
    try:
        for i in range(40):
            # a jump lost meanwhile cannot be deleted: counted below
            iptables("-D", "FORWARD", *jump, check=False)
            iptables("-I", "FORWARD", "1", *jump)
            iptables("-A", "FORWARD", *rule(i))
            time.sleep(0.05)
        for i in range(0, 40, 2):
            iptables("-D", "FORWARD", *rule(i), check=False)
            time.sleep(0.05)
        stop.set()
        churner.join(timeout=60)
        syncs = syncs_started() - syncs_before
        # what the test stands on: the controller synced all the while (12 to 35 times here)
        assert syncs >= 5, f"the controller synced {syncs} times while the rules changed"
        print(f"{syncs} syncs while 40 jumps moved, 40 rules were added and 20 deleted")
        wait_for_two_syncs(kube_namespace)
        kept = ours()
        expected = [f"-A FORWARD -j {chain}"]
        expected += [f"-A FORWARD {' '.join(rule(i))}" for i in range(1, 40, 2)]
        lost = sorted(set(expected) - set(kept))
        back = sorted(set(kept) - set(expected))
        twice = sorted({r for r in kept if kept.count(r) > 1})
        assert not lost and not back and not twice, (
            f"lost {len(lost)}: {lost}\ncame back {len(back)}: {back}\ntwice: {twice}"
        )
        # and the controller's own jump is first in FORWARD, once
        forward = iptables("-S", "FORWARD").stdout.splitlines()
        theirs = [r for r in forward if "-j KUBE-ROUTER-FORWARD" in r]
        assert len(theirs) == 1 and forward[1] == theirs[0], forward
    finally:
        stop.set()
        churner.join(timeout=60)

        def removed() -> bool:
            # a sync in flight can put back what was just deleted (the very defect): again
            for line in ours():
                iptables("-D", *line.split()[1:], check=False)
            return iptables("-X", chain, check=False).returncode == 0

        localkube.wait_for(f"the test's chain {chain} to go", 30, removed)


def netpol(name: str) -> dict:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
    }


def syncs_started() -> int:
    return (localkube.LOGS / "netpol.log").read_text().count("Starting sync of iptables")


def controller_chains() -> set[str]:
    """The controller's chains: their names carry the sync's version, so they change with each sync."""
    dump = localkube.run(["iptables-save", "-t", "filter"]).stdout
    return {
        line[1:].split()[0]
        for line in dump.splitlines()
        if line.startswith((":KUBE-POD-FW-", ":KUBE-NWPLCY-"))
    }


def wait_for_two_syncs(namespace) -> None:
    """Return once two syncs have restored after the call: the second one's save came
    after the first one's restore (the controller syncs one at a time), so it holds
    every change made before the call."""
    for k in range(2):
        before = controller_chains()
        namespace.apply(netpol(f"marker-{k}"), as_user=False)
        localkube.wait_for(
            f"sync {k + 1} of 2 of the NetworkPolicy controller",
            60,
            lambda before=before: controller_chains() != before,
            interval=0.1,
        )
