"""The port-forward reaches a pod as soon as its server listens (kubernetes/api.py: Forward).

A connection made while the pod runs but nothing listens yet is refused by the pod's node,
on the API server's real port-forward path (kubelet, containerd, the pod's network
namespace): the forward dials again with the bytes its client sent, so the client's first
flight reaches the server once, when it listens, and not a readiness probe later.
"""

from __future__ import annotations

import asyncio
import json
import textwrap
import time

import pytest

from minimaldask.kubernetes import api
from testutil import wait_until

pytestmark = [pytest.mark.kube, pytest.mark.slow, pytest.mark.timeout(300)]

PORT = 8786

#: A server that listens at port ``sys.argv[2]`` after ``sys.argv[1]`` seconds, answers each connection's first
#: line with what it got, and prints when it listened and what every connection sent.
LATE_SERVER = textwrap.dedent(
    """
    import socket, sys, time
    print("started", time.time(), flush=True)
    time.sleep(float(sys.argv[1]))
    s = socket.socket()
    s.bind(("0.0.0.0", int(sys.argv[2])))
    s.listen()
    print("listening", time.time(), flush=True)
    n = 0
    while True:
        c, _ = s.accept()
        n += 1
        data = b""
        while not data.endswith(b"\\n"):
            chunk = c.recv(4096)
            if not chunk:
                break
            data += chunk
        c.sendall(b"connection %d got %s" % (n, data))
        c.close()
        print("connection", n, repr(data), time.time(), flush=True)
    """
)


def late_pod(name: str, image: str, delay: float) -> dict:
    """A pod whose server listens ``delay`` seconds after it starts; Ready a minute later."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"test-forward": name}},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 0,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 1000,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "server",
                    "image": image,
                    "command": ["python3", "-c", LATE_SERVER, str(delay), str(PORT)],
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                        "readOnlyRootFilesystem": True,
                    },
                    # Not Ready while the test runs: the forward must not wait for Ready.
                    "readinessProbe": {
                        "tcpSocket": {"port": PORT},
                        "initialDelaySeconds": 120,
                        "periodSeconds": 60,
                    },
                }
            ],
        },
    }


def start_pod(kube, namespace: str, pod: dict) -> None:
    kube.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(pod))
    name = pod["metadata"]["name"]

    def running() -> bool:
        got = kube.get("pod", name)
        return got["status"].get("phase") == "Running"

    assert wait_until(running, 120, 0.2), f"pod {name} did not run"


def pod_log(kube, namespace: str, name: str) -> list[list[str]]:
    out = kube.kubectl("logs", name, "-n", namespace).stdout
    return [line.split() for line in out.splitlines()]


async def talk(namespace: str, selector: str, line: bytes) -> tuple[bytes, float, float]:
    """Through a port-forward: send ``line`` at once, read the answer to its end.

    Returns the answer, when the line was sent and when the answer's first line came
    (time.time()).
    """
    kube_api = await api.connect(namespace=namespace)
    forward = await api.port_forward(kube_api, namespace, selector, PORT)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", forward.local_port)
        writer.write(line)
        await writer.drain()
        sent = time.time()
        answer = await asyncio.wait_for(reader.readline(), 60)
        got = time.time()
        answer += await asyncio.wait_for(reader.read(), 60)
        writer.close()
        return answer, sent, got
    finally:
        await forward.stop()


def test_a_connection_made_before_the_pod_listens_reaches_it_once_it_does(
    namespace, kube, image, caplog
):
    caplog.set_level("DEBUG", logger="minimaldask.kubernetes")
    start_pod(kube, namespace, late_pod("late", image, delay=4))
    answer, sent, got = asyncio.run(talk(namespace, "test-forward=late", b"hello\n"))
    log = pod_log(kube, namespace, "late")
    print(f"answer {answer!r}; pod log {log}")
    listening = next(float(words[1]) for words in log if words[0] == "listening")
    print(
        f"sent {listening - sent:.2f}s before the server listened; answered "
        f"{got - listening:.2f}s after it did"
    )
    # Sent before anything listened: refused at least once, then sent again, once.
    assert sent < listening
    assert any("refused" in r.getMessage() for r in caplog.records)
    assert answer == b"connection 1 got hello\n"
    assert [w[:3] for w in log if w[0] == "connection"] == [["connection", "1", "b'hello\\n'"]]
    # The pod was never Ready: the forward did not wait for it.
    conditions = {c["type"]: c["status"] for c in kube.get("pod", "late")["status"]["conditions"]}
    assert conditions["Ready"] == "False"


def test_a_pod_that_never_listens_ends_the_connection_by_its_deadline(
    namespace, kube, image, monkeypatch
):
    monkeypatch.setattr(api, "WAIT_FOR_POD", 3.0)
    start_pod(kube, namespace, late_pod("never", image, delay=600))
    t = time.monotonic()
    answer, _, _ = asyncio.run(talk(namespace, "test-forward=never", b"hello\n"))
    elapsed = time.monotonic() - t
    print(f"ended after {elapsed:.1f}s with {answer!r}")
    assert answer == b""  # closed: the client's own connect fails, it is not left hanging
    assert not [w for w in pod_log(kube, namespace, "never") if w[0] == "connection"]
