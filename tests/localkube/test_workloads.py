"""Workloads as the namespace-only user: Deployments from the local registry,
Service DNS and routing, NodePort, port-forward, logs and exec."""

import re
import subprocess

import pytest

import localkube

pytestmark = pytest.mark.kube


def deployment(name: str, image: str, replicas: int = 1) -> dict:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {
                            "name": "probe",
                            "image": image,
                            "args": ["serve", ":8080"],
                            "ports": [{"containerPort": 8080}],
                            "readinessProbe": {
                                "httpGet": {"path": "/ready", "port": 8080},
                                "periodSeconds": 1,
                            },
                        }
                    ]
                },
            },
        },
    }


def service(name: str, type: str = "ClusterIP") -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {
            "type": type,
            "selector": {"app": name},
            "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}],
        },
    }


def rollout(ns, name: str) -> None:
    ns.kubectl("rollout", "status", f"deployment/{name}", "--timeout=120s", timeout=150)


def first_pod(ns, app: str) -> str:
    return ns.kubectl(
        "get", "pods", "-l", f"app={app}", "-o", "jsonpath={.items[0].metadata.name}"
    ).stdout


def http_get(url: str) -> str:
    with localkube.DIRECT.open(url, timeout=5) as resp:
        return resp.read().decode()


def test_deployment_of_two_replicas_from_the_local_registry_becomes_ready(
    kube_namespace, probe_image
):
    assert probe_image.startswith("localhost:5000/")
    kube_namespace.apply(deployment("web", probe_image, replicas=2))
    rollout(kube_namespace, "web")
    ready = kube_namespace.kubectl(
        "get", "deployment", "web", "-o", "jsonpath={.status.readyReplicas}"
    ).stdout
    assert ready == "2"
    ips = kube_namespace.kubectl(
        "get", "pods", "-l", "app=web", "-o", "jsonpath={.items[*].status.podIP}"
    ).stdout
    assert len(set(ips.split())) == 2


def test_pod_resolves_and_reaches_another_through_its_service_name(kube_namespace, probe_image):
    kube_namespace.apply(
        deployment("web", probe_image), service("web"), deployment("client", probe_image)
    )
    rollout(kube_namespace, "web")
    rollout(kube_namespace, "client")
    cluster_ip = kube_namespace.kubectl(
        "get", "service", "web", "-o", "jsonpath={.spec.clusterIP}"
    ).stdout
    client = first_pod(kube_namespace, "client")
    fqdn = f"web.{kube_namespace.name}.svc.cluster.local"
    looked_up = kube_namespace.kubectl(
        "exec", client, "--", "/probe", "lookup", fqdn
    ).stdout.split()
    assert looked_up == [cluster_ip]
    body = localkube.wait_for(
        "GET through the Service",
        30,
        lambda: (
            kube_namespace.kubectl(
                "exec", client, "--", "/probe", "get", f"http://{fqdn}/through-service"
            ).stdout
        ),
    )
    assert re.fullmatch(r"hello from web-\S+ path=/through-service\n", body)
    # the short name, through the pod's DNS search path
    assert (
        "hello from web-"
        in kube_namespace.kubectl("exec", client, "--", "/probe", "get", "http://web/").stdout
    )


def test_nodeport_answers_from_this_machine(kube_namespace, probe_image):
    kube_namespace.apply(deployment("web", probe_image), service("web", type="NodePort"))
    rollout(kube_namespace, "web")
    port = kube_namespace.kubectl(
        "get", "service", "web", "-o", "jsonpath={.spec.ports[0].nodePort}"
    ).stdout
    assert 30000 <= int(port) <= 32767
    for host in (localkube.NODE_IP, "127.0.0.1"):
        body = localkube.wait_for(
            f"NodePort {host}:{port}", 30, lambda host=host: http_get(f"http://{host}:{port}/np")
        )
        assert body.startswith("hello from web-") and "path=/np" in body


def test_kubectl_port_forward_through_the_api_server(kube_namespace, probe_image):
    kube_namespace.apply(deployment("web", probe_image), service("web"))
    rollout(kube_namespace, "web")
    cluster = kube_namespace.cluster
    forward = subprocess.Popen(
        [
            str(cluster.bin_dir / "kubectl"),
            f"--kubeconfig={cluster.user_kubeconfig}",
            "-n",
            kube_namespace.name,
            "port-forward",
            "--address=127.0.0.1",
            "service/web",
            ":80",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = localkube.wait_for("port-forward to print its port", 30, forward.stdout.readline)
        match = re.match(r"Forwarding from 127\.0\.0\.1:(\d+) -> 8080", line)
        assert match, line
        body = http_get(f"http://127.0.0.1:{match.group(1)}/forwarded")
        assert body.startswith("hello from web-") and "path=/forwarded" in body
    finally:
        forward.terminate()
        forward.wait(timeout=10)


def test_kubectl_logs_and_exec(kube_namespace, probe_image):
    kube_namespace.apply(deployment("web", probe_image))
    rollout(kube_namespace, "web")
    pod = first_pod(kube_namespace, "web")
    assert (
        "hello from"
        in kube_namespace.kubectl(
            "exec", pod, "--", "/probe", "get", "http://127.0.0.1:8080/marker-for-logs"
        ).stdout
    )
    logs = localkube.wait_for(
        "the request in the pod's log",
        20,
        lambda: (
            "GET /marker-for-logs" in (kube_namespace.kubectl("logs", pod).stdout)
            and kube_namespace.kubectl("logs", pod).stdout
        ),
    )
    assert "probe serving on :8080" in logs
    failed = kube_namespace.kubectl(
        "exec", pod, "--", "/probe", "get", "http://127.0.0.1:1/", check=False
    )
    assert failed.returncode == 1 and "connection refused" in failed.stderr
