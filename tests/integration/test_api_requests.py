"""What the client does when the API server is slow, busy or gone: timeouts, retries, deadlines.

The real API server cannot be made to answer 429 or 503 on demand, so these run the real
client (kr8s, httpx, our retries) against a small HTTP server of the test's own that
answers as scripted. tests/e2e/test_api_faults.py hangs and drops the real one.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import time

import pytest

from minimaldask._version import __version__
from minimaldask.exceptions import ForbiddenError, KubernetesError
from minimaldask.kubernetes import api as kube
from minimaldask.kubernetes.backend import LOOK_EVERY, KubernetesBackend
from minimaldask.kubernetes.objects import CONFIG_MAP, POD
from minimaldask.spec import ClusterSpec

NS = "ns"
ITEM = f"/api/v1/namespaces/{NS}/configmaps/x"
COLLECTION = f"/api/v1/namespaces/{NS}/configmaps"
OBJ = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": NS}}


def status(code, message):
    """A Status object, as the API server answers every error."""
    return {"kind": "Status", "apiVersion": "v1", "code": code, "message": message}


class FakeApiServer:
    """Answers each path from a script: (status, headers, body) in turn, the last one repeated.

    ``"hang"`` never answers; ``"drop"`` closes the connection without an answer.
    """

    def __init__(self, script):
        self.script = {"/version": [(200, {}, {"gitVersion": "v1.33.0"})], **script}
        self.seen: list[tuple[str, str]] = []
        self.user_agents: set[str] = set()

    async def __aenter__(self):
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc):
        self.server.close()

    def requests(self, method, path):
        return sum(1 for m, p in self.seen if (m, p) == (method, path))

    async def serve(self, reader, writer):
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                method, target, _ = line.decode().split(" ", 2)
                headers = {}
                while (h := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = h.decode().partition(":")
                    headers[name.strip().lower()] = value.strip()
                await reader.readexactly(int(headers.get("content-length", 0)))
                path = target.split("?", 1)[0].rstrip("/")
                self.seen.append((method, path))
                self.user_agents.add(headers.get("user-agent", ""))
                answers = self.script.get(path, [(404, {}, status(404, "not found"))])
                answer = answers.pop(0) if len(answers) > 1 else answers[0]
                if answer == "hang":
                    await asyncio.sleep(3600)
                if answer == "drop":
                    return
                code, extra, body = answer
                data = json.dumps(body).encode()
                head = [f"HTTP/1.1 {code} X", f"Content-Length: {len(data)}"]
                head += ["Content-Type: application/json", *(f"{k}: {v}" for k, v in extra.items())]
                writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)
                await writer.drain()
        finally:
            writer.close()


@pytest.fixture
def kubeconfig(tmp_path, monkeypatch):
    def point_at(url):
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": url}}],
            "users": [{"name": "u", "user": {"token": "t"}}],
            "contexts": [{"name": "c", "context": {"cluster": "fake", "user": "u"}}],
            "current-context": "c",
        }
        path = tmp_path / "kubeconfig"
        path.write_text(json.dumps(config))
        monkeypatch.setenv("KUBECONFIG", str(path))

    return point_at


def run(script, kubeconfig, body, cluster=("", "")):
    async def main():
        async with FakeApiServer(script) as server:
            kubeconfig(server.url)
            api = await kube.connect(*cluster)
            t = time.monotonic()
            try:
                return server, await body(api, server), time.monotonic() - t
            except Exception as e:
                return server, e, time.monotonic() - t

    return asyncio.run(main())


def test_a_429_is_retried_after_its_retry_after_and_a_503_with_backoff(kubeconfig):
    script = {
        ITEM: [
            (429, {"Retry-After": "1"}, status(429, "slow down")),
            (503, {}, status(503, "busy")),
            (200, {}, OBJ),
        ]
    }
    server, got, elapsed = run(
        script, kubeconfig, lambda api, _: kube.get(api, CONFIG_MAP, NS, "x")
    )
    assert got == OBJ
    assert server.requests("GET", ITEM) == 3
    assert elapsed >= 1.0  # Retry-After honoured


def test_a_retry_after_date_is_honoured(kubeconfig):
    # A date has whole seconds (time.time() + 2, printed without its fraction, was
    # as little as 0.99 s ahead by the time the client read it): more than 2 s ahead
    # now, at least 1 s once the server is up and the client connected.
    later = email.utils.formatdate(math.floor(time.time()) + 3, usegmt=True)
    script = {ITEM: [(429, {"Retry-After": later}, status(429, "slow down")), (200, {}, OBJ)]}
    _, got, elapsed = run(script, kubeconfig, lambda api, _: kube.get(api, CONFIG_MAP, NS, "x"))
    assert got == OBJ
    assert elapsed >= 1.0  # the date has one-second resolution


def test_a_dropped_connection_is_retried(kubeconfig):
    script = {ITEM: ["drop", "drop", (200, {}, OBJ)]}
    server, got, _ = run(script, kubeconfig, lambda api, _: kube.get(api, CONFIG_MAP, NS, "x"))
    assert got == OBJ
    assert server.requests("GET", ITEM) == 3


def test_a_create_is_not_sent_twice_when_it_may_have_been_done(kubeconfig):
    script = {COLLECTION: [(503, {}, status(503, "busy"))]}
    server, got, elapsed = run(script, kubeconfig, lambda api, _: kube.create(api, CONFIG_MAP, OBJ))
    assert isinstance(got, KubernetesError), got
    assert server.requests("POST", COLLECTION) == 1
    assert elapsed < 1


def test_a_create_refused_by_flow_control_is_sent_again(kubeconfig):
    # A 429 is answered before the API server acts: sending the create again is safe.
    script = {COLLECTION: [(429, {"Retry-After": "0"}, status(429, "slow down")), (201, {}, OBJ)]}
    server, got, _ = run(script, kubeconfig, lambda api, _: kube.create(api, CONFIG_MAP, OBJ))
    assert got == OBJ
    assert server.requests("POST", COLLECTION) == 2


def test_a_refusal_is_not_retried(kubeconfig):
    script = {ITEM: [(403, {}, status(403, "no"))]}
    server, got, elapsed = run(
        script, kubeconfig, lambda api, _: kube.get(api, CONFIG_MAP, NS, "x")
    )
    assert isinstance(got, ForbiddenError), got
    assert "forbidden: no" in str(got)
    # kr8s alone would ask three times more, reading the credentials again each time.
    assert server.requests("GET", ITEM) == 1
    assert elapsed < 2


def test_an_unauthorized_request_is_sent_again_with_the_credentials_read_again(kubeconfig):
    # A 401 may be an expired token: kr8s reads the credentials again and asks again.
    script = {ITEM: [(401, {}, status(401, "Unauthorized")), (200, {}, OBJ)]}
    server, got, _ = run(script, kubeconfig, lambda api, _: kube.get(api, CONFIG_MAP, NS, "x"))
    assert got == OBJ
    assert server.requests("GET", ITEM) == 2


def test_a_server_error_names_what_the_server_said(kubeconfig):
    script = {ITEM: [(500, {}, status(500, "etcd is full"))]}

    async def body(api, server):
        with kube.deadline(time.monotonic() + 0.2, "test_timeout=0.2s"):
            return await kube.get(api, CONFIG_MAP, NS, "x")

    _, got, _ = run(script, kubeconfig, body)
    assert isinstance(got, KubernetesError), got
    assert "kept failing: 500 etcd is full" in str(got)


def test_every_request_names_the_cluster_in_its_user_agent(kubeconfig):
    server, got, _ = run(
        {ITEM: [(200, {}, OBJ)]},
        kubeconfig,
        lambda api, _: kube.get(api, CONFIG_MAP, NS, "x"),
        cluster=("mine", NS),
    )
    assert got == OBJ
    (agent,) = server.user_agents  # /version and the GET
    assert agent.startswith(f"minimaldask/{__version__} (cluster {NS}/mine) kr8s/"), agent


def test_a_hung_server_fails_by_the_deadline_and_is_named(kubeconfig):
    script = {ITEM: ["hang"]}

    async def body(api, server):
        with kube.deadline(time.monotonic() + 3, "test_timeout=3s"):
            return await kube.get(api, CONFIG_MAP, NS, "x")

    server, got, elapsed = run(script, kubeconfig, body)
    assert isinstance(got, KubernetesError), got
    assert f"the Kubernetes API server at {server.url} did not answer within test_timeout=3s" in (
        str(got)
    )
    assert 3 <= elapsed < 3 + 1.5


def test_a_server_error_until_the_deadline_says_what_it_answered(kubeconfig):
    script = {ITEM: [(503, {}, status(503, "etcd is down"))]}

    async def body(api, server):
        with kube.deadline(time.monotonic() + 2, "test_timeout=2s"):
            return await kube.get(api, CONFIG_MAP, NS, "x")

    server, got, elapsed = run(script, kubeconfig, body)
    assert isinstance(got, KubernetesError), got
    assert "kept failing: 503" in str(got)
    assert server.requests("GET", ITEM) > 2  # with backoff, several tries in 2 s
    assert elapsed < 2 + 1


def test_a_delete_waits_on_the_kinds_that_linger_and_confirms_with_every_kind(kubeconfig):
    # Pods take a while to end; the other kinds are gone at once. Polling every kind
    # at every look would cost a request per kind the cluster may have, each 0.5 s.
    pod = {"metadata": {"name": "w-1"}}
    pods = f"/api/v1/namespaces/{NS}/pods"
    config_maps = COLLECTION
    script = {
        f"{config_maps}/x": [(200, {}, OBJ)],
        config_maps: [(200, {}, {"items": []})],
        pods: [(200, {}, {"items": [pod]})] * 3 + [(200, {}, {"items": []})],
    }

    async def body(api, server):
        return await kube.delete_cluster(
            api, NS, "x", [(CONFIG_MAP, "x", False)], [CONFIG_MAP, POD], timeout=30
        )

    server, got, _ = run(script, kubeconfig, body)
    assert got is True
    assert server.requests("DELETE", f"{config_maps}/x") == 1
    assert server.requests("GET", pods) == 5  # 3 with the pod, the empty one, the full pass
    assert server.requests("GET", config_maps) == 2  # the first pass and the full one


def test_waiting_for_workers_asks_the_scheduler_often_and_reads_the_pods_seldom(kubeconfig):
    # Each read lists every worker pod: at 1,000 workers, megabytes. The scheduler's
    # count (no API request) decides when the wait ends.
    pods = f"/api/v1/namespaces/{NS}/pods"
    script = {pods: [(200, {}, {"items": []})]}
    counts = []

    async def body(api, server):
        spec = ClusterSpec.from_options(name="x", namespace=NS, backend="kubernetes")
        backend = KubernetesBackend(spec, lambda line: None)
        backend._api = api

        async def count():
            counts.append(time.monotonic())
            return 3 if len(counts) == 10 else 0

        await backend.wait_for_workers(3, count, timeout=60)

    server, got, elapsed = run(script, kubeconfig, body)
    assert got is None, got
    assert len(counts) == 10  # every 0.5 s until the scheduler counts 3
    # A read is the scheduler pods' and the workers' (and the Deployment, 404 here): at
    # the first look, every LOOK_EVERY seconds, and once more when the count is reached.
    reads = server.requests("GET", pods) / 2
    assert reads <= elapsed / LOOK_EVERY + 2
    assert reads < len(counts) / 2
