"""One TLS connection's error must not end another, in the images' own Python and OpenSSL.

Found as tests/e2e/test_mixed_arch.py's failure (3 of 23 runs): a scheduler dropped its
clients' and workers' healthy connections just after a worker registered. Cause: in one
thread, a failed write to a peer that went away leaves its error in OpenSSL's error
queue, and the next read of another connection raises it (see minimaldask.pod.tlsfix).
Shown here with plain ssl sockets in the image's Python, with and without the fix.
"""

import json

import pytest
from dockerutil import docker

from minimaldask.tls import Credentials

pytestmark = [pytest.mark.docker, pytest.mark.slow]

SCRIPT = r"""
import json, os, socket, ssl, sys, tempfile, threading, time

if sys.argv[1] == "fix":
    from minimaldask.pod import tlsfix
    assert tlsfix.install(), "tlsfix.install() found no ERR_clear_error"

server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
with tempfile.NamedTemporaryFile("w", suffix=".pem") as pem:
    pem.write(os.environ["CERT"] + os.environ["KEY"])
    pem.flush()
    server.load_cert_chain(pem.name)
client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
client.check_hostname, client.verify_mode = False, ssl.CERT_NONE
listener = socket.create_server(("127.0.0.1", 0))

def connection():
    # A server side (non-blocking, as tornado's) and its client, handshakes done.
    ends = {}
    dial = threading.Thread(target=lambda: ends.setdefault("client", client.wrap_socket(
        socket.create_connection(listener.getsockname()), server_hostname="x")))
    dial.start()
    accepted, _ = listener.accept()
    ends["server"] = server.wrap_socket(accepted, server_side=True)
    dial.join()
    ends["server"].setblocking(False)
    return ends["server"], ends["client"]

gone, gone_client = connection()
healthy, healthy_client = connection()
gone_client.close()  # its peer goes away: the server's next writes fail
time.sleep(0.2)
failed = []
for _ in range(3):
    try:
        gone.send(b"x" * 100)
    except OSError as e:
        failed.append(type(e).__name__)
    time.sleep(0.05)
try:
    healthy.recv(1024)  # nothing sent: it must say "nothing to read yet"
    read = "data"
except ssl.SSLWantReadError:
    read = "SSLWantReadError"
except OSError as e:
    read = type(e).__name__
healthy_client.sendall(b"ping")
time.sleep(0.2)
answer = healthy.recv(1024).decode()
print(json.dumps({"python": sys.version.split()[0], "openssl": ssl.OPENSSL_VERSION,
                  "gone": failed, "healthy_read": read, "healthy_then": answer}))
"""


@pytest.fixture(scope="module")
def certs():
    credentials = Credentials.make("tls-errors", ["x"])
    return {"CERT": credentials.cert, "KEY": credentials.key}


def run(image: str, certs: dict, mode: str) -> dict:
    env = [f"--env={name}={value}" for name, value in certs.items()]
    result = docker(
        "run", "--rm", *env, "--entrypoint", "/usr/bin/python3", image, "-c", SCRIPT, mode
    )
    print(mode, result.stdout.strip())
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("python", ["3.11", "3.13"])
def test_a_failed_write_to_one_peer_does_not_end_another_connection(images, load, certs, python):
    image = load(images("linux/amd64", python=python))
    fixed = run(image, certs, "fix")
    assert fixed["gone"], fixed  # the departed peer's writes did fail
    assert fixed["healthy_read"] == "SSLWantReadError", fixed
    assert fixed["healthy_then"] == "ping", fixed
    plain = run(image, certs, "plain")
    if python == "3.13":
        # What the fix is for: without it the healthy connection gets the other's error.
        assert plain["healthy_read"] in ("BrokenPipeError", "ConnectionResetError"), (
            f"this image no longer has the bug that minimaldask.pod.tlsfix works around: {plain}"
        )
    else:
        assert plain["healthy_read"] == "SSLWantReadError", plain
