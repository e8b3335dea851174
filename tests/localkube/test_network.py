"""Traffic for the Service and pod CIDRs never leaves the node (issue 9).

The leak counters' own proof runs in network namespaces made here (a "node" whose
default route goes to a "gateway"), so that no packet for those CIDRs goes anywhere
but into a namespace of this test.
"""

import json
import re
import socket
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

import localkube

pytestmark = pytest.mark.kube


def service(name: str, selector: dict) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"selector": selector, "ports": [{"port": 80, "targetPort": 8080}]},
    }


def probe_pod(name: str, image: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "containers": [{"name": "probe", "image": image, "args": ["serve", ":8080"]}],
            "terminationGracePeriodSeconds": 0,
        },
    }


def connect_from(ns, pod: str, address: str) -> tuple[str, float]:
    """(result, seconds) of the probe's TCP connect from inside `pod`."""
    out = ns.kubectl("exec", pod, "--", "/probe", "connect", address, check=False).stdout
    match = re.fullmatch(r"connect \S+: (.+) after ([\d.]+) s\n", out)
    assert match, out
    return match.group(1), float(match.group(2))


def test_the_service_cidr_routes_to_the_node_and_other_pod_ips_are_unreachable(
    localkube_cluster,
):
    route = localkube.run(["ip", "route", "get", "10.96.123.45"]).stdout
    print(route.strip())
    assert f"dev {localkube.NODE_IFACE}" in route
    for iface in localkube.default_interfaces():
        assert f"dev {iface}" not in route
    # this node's pods are 10.244.0.0/24; the rest of the pod CIDR exists nowhere
    beyond = localkube.run(["ip", "route", "get", "10.244.200.1"], check=False)
    print(beyond.stdout + beyond.stderr)
    assert beyond.returncode != 0 and "no route to host" in beyond.stderr.lower()


def test_a_pod_connecting_to_a_service_without_endpoints_is_refused_at_once(
    kube_namespace, probe_image
):
    kube_namespace.apply(
        service("nobody", {"app": "no-such-pod"}), probe_pod("client", probe_image)
    )
    kube_namespace.kubectl(
        "wait", "--for=condition=Ready", "pod/client", "--timeout=60s", timeout=90
    )
    cluster_ip = kube_namespace.kubectl(
        "get", "service", "nobody", "-o", "jsonpath={.spec.clusterIP}"
    ).stdout
    # the Service's port (kube-proxy's REJECT, if reached first) and a port it does not
    # have (no kube-proxy rule: localkube's own), by name and by address
    for address in (
        f"nobody.{kube_namespace.name}.svc.cluster.local:80",
        f"{cluster_ip}:80",
        f"{cluster_ip}:9999",
    ):
        result, seconds = connect_from(kube_namespace, "client", address)
        print(f"pod -> {address}: {result} after {seconds * 1000:.1f} ms")
        assert result == "refused", (address, result, seconds)
        assert seconds < 1.0, (address, seconds)
    # from the node itself too
    for port in (80, 9999):
        start = time.monotonic()
        with pytest.raises(ConnectionRefusedError), socket.socket() as s:
            s.settimeout(3)
            s.connect((cluster_ip, port))
        took = time.monotonic() - start
        print(f"node -> {cluster_ip}:{port}: refused after {took * 1000:.1f} ms")
        assert took < 1.0


def test_a_service_with_an_endpoint_still_answers(kube_namespace, probe_image):
    """The rules refuse only what kube-proxy did not send to a pod."""
    kube_namespace.apply(service("web", {"app": "web"}), probe_pod("web", probe_image))
    kube_namespace.kubectl("wait", "--for=condition=Ready", "pod/web", "--timeout=60s", timeout=90)
    cluster_ip = kube_namespace.kubectl(
        "get", "service", "web", "-o", "jsonpath={.spec.clusterIP}"
    ).stdout
    body = localkube.wait_for(
        "the Service to answer from the node",
        30,
        lambda: localkube.DIRECT.open(f"http://{cluster_ip}/", timeout=3).read().decode(),
    )
    assert body.startswith("hello from web")
    result, _ = connect_from(kube_namespace, "web", f"web.{kube_namespace.name}:80")
    assert result == "connected"


@pytest.fixture
def node_and_gateway():
    """Two network namespaces: a "node" whose default route (via its veth) leads to a
    "gateway" namespace. Removed afterwards."""
    tag = uuid.uuid4().hex[:6]
    node, gateway = f"lkt-node-{tag}", f"lkt-gw-{tag}"
    node_if, gw_if = f"lktn{tag}", f"lktg{tag}"
    sh = lambda *a: localkube.run(a)  # noqa: E731
    sh("ip", "netns", "add", node)
    sh("ip", "netns", "add", gateway)
    try:
        sh("ip", "link", "add", node_if, "netns", node, "type", "veth", "peer", "name", gw_if, "netns", gateway)  # fmt: skip
        sh("ip", "-n", node, "addr", "add", "192.168.251.2/24", "dev", node_if)
        sh("ip", "-n", gateway, "addr", "add", "192.168.251.1/24", "dev", gw_if)
        for ns, iface in ((node, node_if), (gateway, gw_if)):
            sh("ip", "-n", ns, "link", "set", iface, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", node, "route", "add", "default", "via", "192.168.251.1")
        yield node, node_if
    finally:
        sh("ip", "netns", "del", node)
        sh("ip", "netns", "del", gateway)


CONNECT = textwrap.dedent(
    """\
    import socket, sys, time
    start = time.monotonic()
    try:
        socket.create_connection((sys.argv[1], 80), timeout=0.5)
        result = "connected"
    except OSError as e:
        result = type(e).__name__
    print(f"{result} {time.monotonic() - start:.3f}")
    """
)


def in_netns(ns: str, *cmd: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, timeout=30, check=True
    ).stdout


def counters_in(ns: str) -> dict[str, int]:
    out = in_netns(ns, "nft", "-j", "list", "counters", "table", "ip", localkube.NFT_TABLE)
    return {
        c["counter"]["name"]: c["counter"]["packets"]
        for c in json.loads(out)["nftables"]
        if "counter" in c
    }


def test_the_leak_counters_count_what_leaves_the_default_interface_and_the_rules_stop_it(
    node_and_gateway,
):
    node, iface = node_and_gateway
    # Counters alone: a connection to a Service address goes out of the default
    # interface (to the gateway namespace, which does not forward it) and is counted.
    ruleset = localkube.nft_ruleset([iface], reject=False)
    subprocess.run(
        ["ip", "netns", "exec", node, "nft", "-f", "-"], input=ruleset, text=True, check=True
    )
    out = in_netns(node, sys.executable, "-c", CONNECT, "10.96.7.7")
    print("counters only:", out.strip(), counters_in(node))
    assert not out.startswith("connected")
    assert counters_in(node)["leak-service-cidr"] >= 1
    # The full ruleset, as up installs it: refused at once, nothing counted.
    in_netns(node, "nft", "delete", "table", "ip", localkube.NFT_TABLE)
    subprocess.run(
        ["ip", "netns", "exec", node, "nft", "-f", "-"],
        input=localkube.nft_ruleset([iface]),
        text=True,
        check=True,
    )
    for address, error in (("10.96.7.7", "ConnectionRefusedError"), ("10.244.7.7", "OSError")):
        out = in_netns(node, sys.executable, "-c", CONNECT, address)
        print(f"full rules, {address}:", out.strip())
        result, seconds = out.split()
        assert result == error and float(seconds) < 0.4, out
    assert counters_in(node) == {"leak-service-cidr": 0, "leak-pod-cidr": 0}


def test_up_reads_the_default_interface_from_the_routing_table(localkube_cluster):
    expected = sorted(
        set(
            re.findall(
                r"^default .*?\bdev (\S+)",
                localkube.run(["ip", "-4", "route", "show", "default"]).stdout,
                re.M,
            )
        )
    )
    assert expected, "this machine has no default route"
    assert sorted(localkube.default_interfaces()) == expected
    ruleset = localkube.run(["nft", "list", "table", "ip", localkube.NFT_TABLE]).stdout
    for iface in expected:
        assert f'oifname "{iface}" ip daddr {localkube.SERVICE_CIDR}' in ruleset
