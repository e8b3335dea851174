"""The port-forward's relay (kubernetes/api.py: _relay, _Keepalive, _Flight) against a real
websocket server in a process of its own, speaking Kubernetes' port-forward framing: a local
reader slower than the server keeps its connection; a server that goes silent ends it; a
refused dial is told from an error after the pod answered.

The same with the real API server: tests/e2e/test_kubernetes.py (a slow reader of the
scheduler's dashboard through the port-forward).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import httpx
import pytest
from httpx_ws import aconnect_ws

from minimaldask.kubernetes import api

#: The server: at each connection it names the port on both channels, as Kubernetes does,
#: then sends 32 KiB data frames as fast as the client takes them (or nothing: "idle").
SERVER = textwrap.dedent(
    """
    import asyncio, sys
    import tornado.web, tornado.websocket

    MODE = sys.argv[2]
    FLOOD = MODE == "flood"
    REFUSED = (
        b"\\x01error forwarding port 80 to pod p, uid : failed to connect to localhost:80 inside"
        b" namespace n: dial tcp 127.0.0.1:80: connect: connection refused"
    )

    class Forward(tornado.websocket.WebSocketHandler):
        def open(self):
            if MODE not in ("refuse", "answer-then-fail"):
                asyncio.ensure_future(self.pump())

        async def on_message(self, message):
            # The client's first bytes: refused as a node refuses a dial nothing listens
            # to, or answered first (a server that took the connection) and then failed.
            await self.write_message(b"\\x00\\x50\\x00", binary=True)
            await self.write_message(b"\\x01\\x50\\x00", binary=True)
            if MODE == "answer-then-fail":
                await self.write_message(b"\\x00got " + message[1:], binary=True)
            await self.write_message(REFUSED, binary=True)
            self.close()

        async def pump(self):
            try:
                await self.write_message(b"\\x00\\x50\\x00", binary=True)
                await self.write_message(b"\\x01\\x50\\x00", binary=True)
                while FLOOD:
                    await self.write_message(b"\\x00" + b"x" * 32768, binary=True)
            except tornado.websocket.WebSocketClosedError:
                pass

    async def main():
        tornado.web.Application([(r"/ws", Forward)]).listen(int(sys.argv[1]), "127.0.0.1")
        print("listening", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())
    """
)


@pytest.fixture
def server(request):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(port), request.param],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "listening"
        yield proc, f"http://127.0.0.1:{port}/ws"
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        proc.kill()
        proc.wait()


@contextlib.asynccontextmanager
async def forwarded(url: str, local_side):
    """A websocket to ``url``, and a local connection whose other end ``local_side`` serves.

    Yields what ``api._relay`` takes: the websocket, and the connection's reader and writer.
    """
    local = await asyncio.start_server(local_side, "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection(*local.sockets[0].getsockname())
    try:
        async with (
            httpx.AsyncClient() as http,
            aconnect_ws(url, http, keepalive_ping_interval_seconds=None) as ws,
        ):
            yield ws, reader, writer
    finally:
        writer.close()
        local.close()


async def relay(url: str, seconds: float, read_every: float, on_start=None) -> tuple[str, int]:
    """Relay ``url`` to a local reader that takes 32 KiB per ``read_every`` seconds.

    Returns how the relay ended within ``seconds`` ("running" if it did not) and the bytes
    the reader got.
    """
    got = 0

    async def slow_reader(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal got
        with contextlib.suppress(asyncio.CancelledError):  # the test is over
            while chunk := await reader.read(32768):
                got += len(chunk)
                await asyncio.sleep(read_every)

    async with forwarded(url, slow_reader) as (ws, reader, writer):
        if on_start:
            on_start()
        try:
            await asyncio.wait_for(api._relay(ws, reader, writer), seconds)
            return "ended", got
        except asyncio.TimeoutError:
            return "running", got
        except ConnectionError as e:
            return f"ConnectionError: {e}", got


@pytest.mark.parametrize("server", ["flood"], indirect=True)
def test_a_reader_slower_than_the_server_keeps_its_connection(server, monkeypatch):
    # Pings every second: the frames queued for the slow reader hold the pongs back
    # for longer than that. httpx-ws' own keepalive (1 s) ended this connection
    # after 2.1 s; the relay must still run after 8 s.
    monkeypatch.setattr(api, "WS_PING", 1.0)
    _, url = server
    outcome, got = asyncio.run(relay(url, seconds=8, read_every=0.01))
    print(f"after 8 s: {outcome}, {got / 2**20:.1f} MiB read")
    assert outcome == "running", outcome
    assert got > 2**20  # the reader was slow, not stopped


@pytest.mark.parametrize("server", ["idle"], indirect=True)
def test_a_server_that_goes_silent_ends_the_connection(server, monkeypatch):
    monkeypatch.setattr(api, "WS_PING", 1.0)
    proc, url = server
    t = time.monotonic()
    # Stopped: its socket stays open and takes the pings, and nothing answers them.
    outcome, _ = asyncio.run(
        relay(url, seconds=20, read_every=0, on_start=lambda: os.kill(proc.pid, signal.SIGSTOP))
    )
    elapsed = time.monotonic() - t
    print(f"{outcome} after {elapsed:.1f}s")
    assert outcome.startswith("ConnectionError: no answer to a ping"), outcome
    assert elapsed < 2 * 1.0 + 3  # a ping after WS_PING, unanswered for WS_PING, a margin


async def send_and_relay(url: str, first: bytes, flight: api._Flight) -> tuple[str, bytes]:
    """A client that sends ``first`` through a relay to ``url``: how the relay ended, what it got."""
    got = b""

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal got
        writer.write(first)
        await writer.drain()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            while chunk := await reader.read(1024):
                got += chunk

    async with forwarded(url, client) as (ws, reader, writer):
        try:
            await asyncio.wait_for(api._relay(ws, reader, writer, flight), 20)
            outcome = "ended"
        except api._Refused as e:
            outcome = f"refused: {e}"
        except ConnectionError as e:
            outcome = f"ConnectionError: {e}"
        await writer.drain()
        await asyncio.sleep(0.2)  # what the relay wrote last reaches the client
        return outcome, got


@pytest.mark.parametrize("server", ["refuse"], indirect=True)
def test_a_refused_dial_keeps_what_the_client_sent_to_send_it_again(server):
    _, url = server
    flight = api._Flight()
    outcome, got = asyncio.run(send_and_relay(url, b"hello", flight))
    print(outcome)
    assert outcome.startswith("refused: ") and outcome.endswith("connect: connection refused")
    assert flight.data == b"hello" and got == b""
    # Dialled again, it goes first (and the client's next bytes after it).
    again = api._Flight()
    again.sent(b"hello")
    outcome, _ = asyncio.run(send_and_relay(url, b" again", again))
    assert outcome.startswith("refused: ")
    assert again.data == b"hello again"


@pytest.mark.parametrize("server", ["answer-then-fail"], indirect=True)
def test_an_error_after_the_pod_answered_is_never_a_refusal_to_replay(server):
    _, url = server
    flight = api._Flight()
    outcome, got = asyncio.run(send_and_relay(url, b"hello", flight))
    print(outcome)
    assert outcome.startswith("ConnectionError: ") and "connection refused" in outcome
    assert got == b"got hello"
    assert flight.data is None  # answered: nothing of it may go twice


def test_a_flight_longer_than_the_limit_is_not_replayed(monkeypatch):
    monkeypatch.setattr(api, "REPLAY_LIMIT", 8)
    flight = api._Flight()
    flight.sent(b"12345678")
    assert flight.data == b"12345678"
    flight.sent(b"9")
    assert flight.data is None
