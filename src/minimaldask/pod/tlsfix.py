"""Keep one TLS connection's error from ending another: empty OpenSSL's error queue first.

OpenSSL keeps its errors in a queue per thread, and ``SSL_get_error`` reads that
queue before the connection's own state: "the current thread's error queue must
be empty before the TLS/SSL I/O operation is attempted". CPython's ssl module does
not empty it before a read or a write (python/cpython#148594, bpo-37710), and with
OpenSSL 3.5 a failed socket call leaves an entry there. So in one thread, a
write to a peer that went away (a nanny that closed its registration connection:
``ConnectionResetError``, ``BrokenPipeError``) leaves that error behind, and the
next read of any *other* connection that has nothing to read yet raises it instead
of ``SSLWantReadError``. tornado takes it for a reset and closes a healthy
connection: a scheduler dropped its clients' and workers' connections just after
a worker registered, and a client's call in flight failed with
``CommClosedError`` (tests/e2e/test_mixed_arch.py: 3 of 23 runs failed, and healthy
connections were dropped in at least 6 of the 12 runs whose scheduler log was read).

Python 3.13 with OpenSSL 3.5 (Debian trixie: the images for Python 3.13, the only
ones for armv7) has it; Python 3.11 with OpenSSL 3.0 (Debian bookworm) does not
(tests/image/test_tls_errors.py shows both). :func:`install` empties the queue
before every read and write of this process' TLS sockets and objects; where it
cannot find the ``ERR_clear_error`` of the OpenSSL loaded in this process, it
changes nothing and says so.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import ssl
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("minimaldask.tls")

#: The methods that call SSL_read/SSL_write: tornado's streams call ``recv_into`` (which
#: calls ``read``) and ``send``; asyncio's SSL transports call SSLObject's ``read``/``write``.
_METHODS = {ssl.SSLSocket: ("read", "write", "send"), ssl.SSLObject: ("read", "write")}
_MARK = "_minimaldask_clears_errors"
#: Whether install() found no ERR_clear_error already (it says so once).
_missing = False


def _libcrypto() -> Any:
    """The libcrypto that this process' ssl module uses (already loaded), or None.

    Only the one loaded: another libcrypto's queue is not the one that matters
    (and loading the system's is fatal on macOS).
    """
    paths: list[str] = []
    try:
        with open("/proc/self/maps") as maps:
            paths = [line.split()[-1] for line in maps if "libcrypto" in line.split()[-1]]
    except OSError:  # not Linux
        pass
    names: list[str | None] = [*dict.fromkeys(paths), None]
    for name in names:
        try:
            lib = ctypes.CDLL(name)  # None: this process' own symbols (a static OpenSSL)
            lib.ERR_clear_error  # noqa: B018 (raises AttributeError when absent)
            return lib
        except (OSError, AttributeError):
            continue
    return None


def _clearing(method: Callable[..., Any], clear: Callable[[], None]) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        clear()
        return method(self, *args, **kwargs)

    return call


def install(say: Callable[..., None] = logger.warning) -> bool:
    """Empty OpenSSL's error queue before every TLS read and write of this process.

    Idempotent. Returns False, and tells ``say`` once per process, when the loaded
    OpenSSL's ``ERR_clear_error`` cannot be found (nothing is changed then).
    """
    global _missing
    if getattr(ssl.SSLSocket, _MARK, False):
        return True
    if _missing:
        return False
    lib = _libcrypto()
    if lib is None:
        _missing = True
        say(
            "minimaldask: OpenSSL's ERR_clear_error was not found (%s): one TLS connection's "
            "error may end another, as CPython's ssl module allows",
            ssl.OPENSSL_VERSION,
        )
        return False
    clear = lib.ERR_clear_error
    clear.argtypes, clear.restype = [], None
    for cls, names in _METHODS.items():
        for name in names:
            setattr(cls, name, _clearing(getattr(cls, name), clear))
        setattr(cls, _MARK, True)
    return True
