"""A hung or flaky API server, for real: a TCP proxy of our own between the client and the
local API server (the client's kubeconfig points at it) black-holes or drops connections.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from urllib.parse import urlsplit

import pytest
import yaml
from distributed import Client

from minimaldask import MinimalCluster, contract, delete_dask_cluster
from minimaldask.exceptions import KubernetesError
from minimaldask.kubernetes import api
from testutil import wait_until

pytestmark = [pytest.mark.kube, pytest.mark.slow]

#: What a start or a delete may take beyond its deadline to give up: the last
#: request's hard stop (1 s), a busy machine.
MARGIN = 5.0


class ApiProxy:
    """A TCP proxy to ``upstream``, in a thread with its own event loop.

    ``blackhole()``: every connection, open or new, is accepted and never
    answered. ``drop(seconds)``: open connections are reset, and new ones for
    ``seconds``. ``cut_answers(window, then_drop)``: a connection is reset when an
    answer comes on it, then ``drop``. ``passthrough()``: back to normal.
    """

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.mode = "pass"
        self.port = 0
        #: Connections reset by drop() and refused while dropping; accepted while black-holed.
        self.dropped = 0
        self.held = 0
        self._open: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> ApiProxy:
        self._thread.start()
        self._server = self._run(asyncio.start_server(self._accept, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc) -> None:
        self._run(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(30)

    async def _close(self) -> None:
        self._server.close()
        for writer in list(self._open):
            writer.transport.abort()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    def blackhole(self) -> None:
        self.mode = "blackhole"

    def passthrough(self) -> None:
        self.mode = "pass"

    def drop(self, seconds: float) -> None:
        async def reset() -> None:
            self.mode = "drop"
            for writer in list(self._open):
                writer.transport.abort()
                self.dropped += 1
            await asyncio.sleep(seconds)
            self.mode = "pass"

        self._run(reset())

    def cut_answers(self, window: float, then_drop: float) -> None:
        """For ``window`` seconds, reset each connection when an answer comes on it (a
        request in flight fails: a port-forwarded call, say); then ``drop(then_drop)``."""

        async def cut() -> None:
            self.mode = "cut"
            await asyncio.sleep(window)

        self._run(cut())
        self.drop(then_drop)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "drop":
            self.dropped += 1
            writer.transport.abort()
            return
        self._open.add(writer)
        try:
            if self.mode == "blackhole":
                self.held += 1
                while await reader.read(65536):  # swallow, never answer
                    pass
                return
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            self._open.add(up_writer)
            try:
                await asyncio.gather(
                    self._pipe(reader, up_writer), self._pipe(up_reader, writer, answers=True)
                )
            finally:
                self._open.discard(up_writer)
                up_writer.transport.abort()
        except (OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # cancelled: the test is over (re-raised, asyncio would log it as an error)
        finally:
            self._open.discard(writer)
            writer.transport.abort()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, answers: bool = False
    ) -> None:
        while data := await reader.read(65536):
            if self.mode == "blackhole":  # an open connection goes silent too
                continue
            if self.mode == "cut" and answers:
                self.dropped += 1
                break
            writer.write(data)
            await writer.drain()
        writer.transport.abort()


@pytest.fixture
def proxy(namespace, kube, localkube_cluster, tmp_path, monkeypatch):
    """The API server behind our proxy: the client's kubeconfig (KUBECONFIG) points at it."""
    config = yaml.safe_load(localkube_cluster.user_kubeconfig.read_text())
    server = urlsplit(config["clusters"][0]["cluster"]["server"])
    with ApiProxy((server.hostname, server.port or 443)) as p:
        # The API server's certificate names 127.0.0.1.
        config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{p.port}"
        path = tmp_path / "kubeconfig"
        path.write_text(json.dumps(config))
        monkeypatch.setenv("KUBECONFIG", str(path))
        yield p


def test_a_start_against_a_black_holed_api_server_fails_by_its_deadline(proxy, cluster_name):
    proxy.blackhole()
    t = time.monotonic()
    with pytest.raises(KubernetesError) as info:
        MinimalCluster(name=cluster_name, workers=1, startup_timeout=20)
    elapsed = time.monotonic() - t
    print(f"failed after {elapsed:.1f}s (startup_timeout 20 s): {info.value}")
    assert elapsed < 20 + MARGIN
    assert f"API server at https://127.0.0.1:{proxy.port}" in str(info.value)
    assert "startup_timeout=20s" in str(info.value)
    assert proxy.held > 0


def test_a_delete_against_a_black_holed_api_server_fails_by_its_deadline(
    proxy, namespace, cluster_name
):
    proxy.blackhole()
    t = time.monotonic()
    with pytest.raises(KubernetesError) as info:
        delete_dask_cluster(namespace=namespace, name=cluster_name, timeout=20)
    elapsed = time.monotonic() - t
    print(f"failed after {elapsed:.1f}s (timeout 20 s): {info.value}")
    # The timeout is for the objects to go; the requests get API_GRACE (15 s) more.
    assert 20 < elapsed < 35 + MARGIN
    assert f"API server at https://127.0.0.1:{proxy.port}" in str(info.value)


def test_a_start_survives_connections_dropped_for_five_seconds(
    proxy, namespace, kube, cluster_name
):
    scheduler = f"{cluster_name}-scheduler"
    dropped_at = []

    def drop_when_the_scheduler_is_applied():
        ok = wait_until(
            lambda: (
                kube.kubectl(
                    "get", "deployment", scheduler, "-n", namespace, check=False
                ).returncode
                == 0
            ),
            120,
            interval=0.2,
        )
        if ok:
            dropped_at.append(time.monotonic())
            proxy.drop(5)

    dropper = threading.Thread(target=drop_when_the_scheduler_is_applied, daemon=True)
    dropper.start()
    t = time.monotonic()
    with MinimalCluster(name=cluster_name, workers=1, startup_timeout=180) as cluster:
        print(
            f"started in {time.monotonic() - t:.0f}s; connections dropped "
            f"{dropped_at[0] - t if dropped_at else float('nan'):.0f}s into the start, "
            f"{proxy.dropped} reset or refused"
        )
        dropper.join(10)
        assert dropped_at, "the scheduler Deployment never appeared: no fault was injected"
        assert proxy.dropped > 0
        with Client(cluster) as client:
            assert client.submit(sum, [1, 2]).result(timeout=60) == 3
    assert kube.objects_of(cluster_name) == []


def test_a_cleanup_that_fails_after_a_failed_start_is_shown_when_quiet(
    proxy, namespace, kube, cluster_name
):
    def blackhole_when_the_scheduler_is_applied():
        if wait_until(
            lambda: (
                kube.objects_of(cluster_name) != [] and bool(kube.pods(cluster_name, "scheduler"))
            ),
            120,
            interval=0.2,
        ):
            proxy.blackhole()

    threading.Thread(target=blackhole_when_the_scheduler_is_applied, daemon=True).start()
    t = time.monotonic()
    with pytest.warns(RuntimeWarning, match="after the failed start failed too") as warned:
        with pytest.raises(KubernetesError, match="did not answer within startup_timeout=20s"):
            # quiet, as the command line runs it: nothing is printed but what must be.
            MinimalCluster(name=cluster_name, workers=1, startup_timeout=20, quiet=True)
    print(f"failed after {time.monotonic() - t:.0f}s")
    (warning,) = [w for w in warned if "after the failed start" in str(w.message)]
    print(warning.message)
    assert f"delete_dask_cluster(namespace={namespace!r}, name={cluster_name!r}" in str(
        warning.message
    )
    assert kube.objects_of(cluster_name), "nothing was left: the cleanup did not fail"
    proxy.passthrough()
    assert delete_dask_cluster(namespace=namespace, name=cluster_name)
    assert kube.objects_of(cluster_name) == []


def logs(cluster) -> str:
    return "\n".join(line for _, line in cluster._cluster_manager_logs)


def test_a_handle_says_when_its_scheduler_stops_answering(proxy, namespace, kube, cluster_name):
    # The port-forward goes through the API server: black-holed, the scheduler is silent.
    with MinimalCluster(name=cluster_name, workers=1) as cluster:
        proxy.blackhole()
        t = time.monotonic()
        assert wait_until(lambda: "has not answered for" in logs(cluster), 60), logs(cluster)
        print(f"said after {time.monotonic() - t:.0f}s of silence")
        proxy.passthrough()
        t = time.monotonic()
        assert wait_until(lambda: "answers again after" in logs(cluster), 120), logs(cluster)
        print(f"answering again {time.monotonic() - t:.0f}s after the API server came back")
        assert "a new one" not in logs(cluster)  # the same scheduler: nothing was lost
        with Client(cluster) as client:
            assert client.submit(sum, [1, 2]).result(timeout=60) == 3
    assert kube.objects_of(cluster_name) == []


def test_a_start_asks_again_when_its_scheduler_connection_drops_while_it_counts_workers(
    proxy, namespace, kube, cluster_name, monkeypatch
):
    """The start counts the workers by asking the scheduler through the port-forward,
    which goes through the API server. One dropped connection there failed the start at
    once (a CPU-starved node showed it: CommClosedError from ncores_running). A
    NetworkPolicy holds the workers back (no egress) while the start counts them; then
    for 1 s each connection is reset as an answer comes on it (the counts' among them),
    and for 5 s more every connection is refused; the workers are let go after."""
    said: list[str] = []
    log = MinimalCluster._log
    monkeypatch.setattr(MinimalCluster, "_log", lambda self, m: (said.append(m), log(self, m))[1])
    hold = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "hold-the-workers"},
        "spec": {
            "podSelector": {"matchLabels": contract.selector(cluster_name, contract.WORKER)},
            "policyTypes": ["Egress"],
        },
    }
    kube.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(hold))
    faults: list[str] = []

    def drop_while_counting():
        if not wait_until(
            lambda: any(m.startswith("Waiting for 1 worker") for m in said), 180, 0.1
        ):
            return
        time.sleep(1)  # a count or more answered: the connection is there
        faults.append(f"cut {time.monotonic() - t:.1f}s into the start")
        proxy.cut_answers(1, then_drop=5)
        time.sleep(3)  # a few counts unanswered after the API server is back
        kube.kubectl("delete", "networkpolicy", "hold-the-workers", "-n", namespace)
        faults.append(f"workers let go {time.monotonic() - t:.1f}s into the start")

    dropper = threading.Thread(target=drop_while_counting, daemon=True)
    t = time.monotonic()
    dropper.start()
    with MinimalCluster(name=cluster_name, workers=1, startup_timeout=180) as cluster:
        print(f"started in {time.monotonic() - t:.0f}s; {'; '.join(faults)}")
        dropper.join(10)
        assert len(faults) == 2, f"no fault was injected: {said}"
        unanswered = [m for m in said if "the scheduler did not answer" in m]
        assert unanswered, f"the drop did not reach the count: {said}"
        print(unanswered[0])
        with Client(cluster) as client:
            assert client.submit(sum, [1, 2]).result(timeout=60) == 3
    assert kube.objects_of(cluster_name) == []


def read_responses(sock: socket.socket, count: int, deadline: float) -> list[int]:
    """Read ``count`` HTTP/1.1 responses from ``sock``; their status codes (the bodies are
    read whole, by their Content-Length). A connection that ends early ends the list."""
    buffer, codes = b"", []
    while len(codes) < count and time.monotonic() < deadline:
        head_end = buffer.find(b"\r\n\r\n")
        if head_end >= 0:
            head = buffer[:head_end].decode("latin-1").split("\r\n")
            length = next(
                int(line.split(":", 1)[1])
                for line in head
                if line.lower().startswith("content-length:")
            )
            if len(buffer) >= head_end + 4 + length:
                codes.append(int(head[0].split()[1]))
                buffer = buffer[head_end + 4 + length :]
                continue
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        buffer += chunk
    return codes


def test_a_port_forwarded_reader_that_pauses_keeps_its_connection(
    namespace, kube, cluster_name, monkeypatch
):
    # A dask client on a busy machine (or one taking a large result) reads slower than the
    # pod sends: the forward's websocket queues the frames, and a pong waits behind them.
    # That is no reason to end the connection (httpx-ws' own keepalive did).
    monkeypatch.setattr(api, "WS_PING", 3.0)
    with MinimalCluster(name=cluster_name, workers=0) as cluster:
        dashboard = urlsplit(cluster.dashboard_link)
        request = b"GET /static/js/bokeh.min.js HTTP/1.1\r\nHost: localhost\r\n\r\n"
        with socket.create_connection((dashboard.hostname, dashboard.port), timeout=30) as s:
            s.sendall(request)
            assert read_responses(s, 1, time.monotonic() + 60) == [200]
            # 48 of them at once (about 60 MB), and nothing read for 4 pings' time.
            s.sendall(request * 48)
            time.sleep(4 * api.WS_PING)
            t = time.monotonic()
            codes = read_responses(s, 48, time.monotonic() + 120)
            print(f"48 responses after the pause: {len(codes)} read in {time.monotonic() - t:.1f}s")
            assert codes == [200] * 48
    assert kube.objects_of(cluster_name) == []
