"""The cluster itself: components, node, DNS, the commands' output."""

import json
import subprocess
import sys

import pytest

import localkube

pytestmark = pytest.mark.kube
LOCALKUBE = [sys.executable, str(localkube.HERE / "localkube.py")]


def test_status_reports_every_component_running_and_healthy(localkube_cluster):
    proc = subprocess.run([*LOCALKUBE, "status"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in localkube.COMPONENTS:
        assert f"{name}" in proc.stdout


def test_node_is_ready_and_runs_the_pinned_versions(localkube_cluster):
    node = localkube_cluster.kubectl(
        "get", "node", localkube_cluster.node_name, "-o", "json"
    ).stdout
    node = json.loads(node)
    ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
    assert ready == "True"
    info = node["status"]["nodeInfo"]
    assert info["kubeletVersion"] == localkube.K8S_VERSION
    assert info["containerRuntimeVersion"].startswith("containerd://1.6")
    version = localkube_cluster.kubectl("version", "-o", "json").stdout
    assert json.loads(version)["serverVersion"]["gitVersion"] == localkube.K8S_VERSION


def test_coredns_answers_for_services_from_this_machine(localkube_cluster):
    assert localkube.dns_query("kubernetes.default.svc.cluster.local") == [
        localkube.KUBERNETES_SERVICE_IP
    ]
    assert localkube.dns_query("kube-dns.kube-system.svc.cluster.local") == [
        localkube.DNS_SERVICE_IP
    ]
    with pytest.raises(localkube.LocalkubeError, match="rcode 3"):
        localkube.dns_query("no-such-service.default.svc.cluster.local")


def test_apiserver_requires_a_client_certificate_signed_by_the_cluster_ca(localkube_cluster):
    url = f"https://{localkube.NODE_IP}:{localkube.APISERVER_PORT}/api/v1/namespaces"
    status, body = localkube.https_get(url, cert=None)
    assert status == 401 or status == 403, body  # anonymous: not allowed to list namespaces
    status, _ = localkube.https_get(url, cert="admin")
    assert status == 200


def test_env_prints_shell_lines_for_both_kubeconfigs_and_the_registry(localkube_cluster):
    proc = subprocess.run(
        [*LOCALKUBE, "env"], capture_output=True, text=True, timeout=60, check=True
    )
    lines = dict(line.removeprefix("export ").split("=", 1) for line in proc.stdout.splitlines())
    assert lines["KUBECONFIG"] == str(localkube_cluster.kubeconfig)
    assert lines["LOCALKUBE_USER_KUBECONFIG"] == str(localkube_cluster.user_kubeconfig)
    assert lines["LOCALKUBE_USER_NAMESPACE"] == localkube_cluster.user_namespace
    assert lines["LOCALKUBE_REGISTRY"] == "localhost:5000"
    # the lines work in a shell
    out = subprocess.run(
        ["bash", "-c", proc.stdout + "\nkubectl get --raw /readyz"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.stdout.strip() == "ok", out.stderr


def test_up_when_already_up_is_a_no_op(localkube_cluster):
    before = localkube.pid_of("kube-apiserver")
    proc = subprocess.run([*LOCALKUBE, "up"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "already up" in proc.stdout
    assert localkube.pid_of("kube-apiserver") == before


def test_up_was_ready_within_90_seconds_plus_the_first_build(localkube_cluster):
    """The cluster's own `up`: at most 90 s beyond the one-time build and package
    installation, and at most 30 minutes with them."""
    timings = json.loads((localkube.STATE / "up-timings.json").read_text())
    one_time = timings["packages"] + timings["build (cached after the first time)"]
    assert timings["total"] - one_time <= 90, timings
    assert timings["total"] <= 30 * 60, timings
