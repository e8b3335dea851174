"""minimaldask.pod.tlsfix in this test's own Python (the images': tests/image/test_tls_errors.py)."""

import subprocess
import sys

CODE = """
import ssl
from minimaldask.pod import tlsfix
before = {name: getattr(ssl.SSLSocket, name) for name in ("read", "write", "send")}
assert tlsfix.install() and tlsfix.install()  # idempotent
after = {name: getattr(ssl.SSLSocket, name) for name in before}
assert all(after[n] is not before[n] and after[n].__wrapped__ is before[n] for n in before)
assert ssl.SSLObject.read.__wrapped__ and ssl.SSLObject.write.__wrapped__
# Wrapped once, not twice, however often it is installed.
assert not hasattr(ssl.SSLSocket.read.__wrapped__, "__wrapped__")
print("ok")
"""


def test_install_wraps_every_tls_read_and_write_once():
    # A process of its own: the wrapping is process-wide.
    result = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
