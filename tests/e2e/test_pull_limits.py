"""A registry that limits the rate of pulls: the node's pull is refused (429 Too Many Requests)
for a while. The kubelet tries again; the start waits for it until its deadline.

The registry is the local one behind an HTTP proxy of the test's own on localhost (the node
pulls from localhost over plain HTTP), which refuses the node's requests until told not to.
"""

from __future__ import annotations

import asyncio
import threading
import time

import budgets
import pytest
from distributed import Client

from minimaldask import MinimalCluster
from minimaldask.exceptions import ClusterStartError
from testutil import wait_until

pytestmark = [pytest.mark.kube, pytest.mark.slow]

LIMITED = (
    b'{"errors":[{"code":"TOOMANYREQUESTS","message":"You have reached your pull rate limit"}]}'
)


class RateLimitedRegistry:
    """Refuses the requests of the node's container runtime with a 429 until ``lift()``.

    containerd sends a request again itself after a 429, up to 5 times: a pull fails (the
    kubelet's ErrImagePull, then ImagePullBackOff) once 6 requests in a row are refused.
    """

    def __init__(self, upstream: str) -> None:
        host, _, port = upstream.rpartition(":")
        self.upstream = (host, int(port))
        self.limited = True
        self.refused = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> RateLimitedRegistry:
        self._thread.start()
        self._server = self._run(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc) -> None:
        async def close():
            self._server.close()
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        self._run(close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def lift(self) -> None:
        """Let every request through from now on."""
        self.limited = False

    def _run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(30)

    async def _serve(self, reader, writer) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            if b"user-agent: containerd" in head.lower() and self.limited:
                self.refused += 1
                writer.write(
                    b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\n"
                    b"Retry-After: 10\r\nConnection: close\r\n"
                    + f"Content-Length: {len(LIMITED)}\r\n\r\n".encode()
                    + LIMITED
                )
                await writer.drain()
                return
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            up_writer.write(head)
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # cancelled: the test is over (re-raised, asyncio would log it as an error)
        finally:
            writer.close()

    @staticmethod
    async def _pipe(reader, writer) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()


def through(proxy: RateLimitedRegistry, image: str) -> str:
    """``image`` (on the local registry) as pulled through ``proxy``."""
    return f"localhost:{proxy.port}/{image.split('/', 1)[1]}"


def backing_off(kube, cluster_name) -> bool:
    """Whether a pod of the cluster waits for the kubelet's next try to pull its image."""
    return any(
        (c.get("state") or {}).get("waiting", {}).get("reason") == "ImagePullBackOff"
        for component in ("scheduler", "worker")
        for p in kube.pods(cluster_name, component).values()
        for c in (p.get("status") or {}).get("containerStatuses") or []
    )


def test_a_pull_refused_for_a_while_is_retried_until_it_works(
    namespace, kube, cluster_name, image, localkube_registry, capsys
):
    with RateLimitedRegistry(localkube_registry.push_address) as proxy:
        # The limit is lifted once a pull failed and the kubelet backs off (10 s at first):
        # its next try gets through.
        def lift_when_backing_off():
            if wait_until(lambda: backing_off(kube, cluster_name), 120, interval=1):
                proxy.lift()

        threading.Thread(target=lift_when_backing_off, daemon=True).start()
        t = time.monotonic()
        with MinimalCluster(
            name=cluster_name, workers=1, image=through(proxy, image), image_pull_policy="Always"
        ) as cluster:
            print(f"started in {time.monotonic() - t:.0f}s; {proxy.refused} requests refused")
            with Client(cluster) as client:
                assert client.submit(sum, [1, 2]).result(timeout=60) == 3
    out = capsys.readouterr().out
    print(out)
    assert not proxy.limited, "no pull was refused long enough to fail"
    assert proxy.refused >= 6
    assert "retrying the image pull: " in out
    assert "429 Too Many Requests" in out
    assert kube.objects_of(cluster_name) == []


def test_a_pull_refused_until_the_deadline_fails_the_start_with_the_reason(
    namespace, kube, cluster_name, image, localkube_registry
):
    with RateLimitedRegistry(localkube_registry.push_address) as proxy:
        t = time.monotonic()
        with pytest.raises(ClusterStartError) as info:
            MinimalCluster(
                name=cluster_name,
                workers=1,
                image=through(proxy, image),
                image_pull_policy="Always",
                startup_timeout=30,
            )
    elapsed = time.monotonic() - t
    print(f"failed after {elapsed:.0f}s (startup_timeout 30 s): {info.value}")
    message = str(info.value)
    assert "cannot pull the image within startup_timeout=30s" in message
    assert "429 Too Many Requests" in message
    assert 30 <= elapsed < 30 + budgets.REQUESTS + budgets.delete()
    assert kube.objects_of(cluster_name) == []
