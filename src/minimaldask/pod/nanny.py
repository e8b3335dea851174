"""The worker's nanny preload: it registers with its scheduler as soon as the scheduler answers.

Loaded with ``--preload-nanny minimaldask.pod.nanny``. A nanny runs its preloads
just before it registers with its scheduler (distributed's ``Nanny.start``);
this one waits until the scheduler answers, trying every RETRY seconds, within
``distributed.comm.timeouts.connect`` (then the nanny tries on its own, as
without it). A worker without a nanny waits the same way, in its own preload
(:mod:`minimaldask.pod.worker`).

Why: a worker pod starts beside its scheduler's, which does not listen yet, and
the scheduler's Service routes to it only once the node has reported the
scheduler pod's address and the node's proxy has programmed it. distributed
retries a refused connection after a random wait of up to 0.02 s, doubled at
each try ("full jitter"): after half a second of refusals the next try may be
1.3 s away. Measured in a pod: the scheduler listened at 24.28 s, the nanny
tried again at 24.81 s (its last wait drawn: 0.60 s).

Each try is a whole connection: TCP, TLS, and dask's handshake, as
``distributed.comm.connect`` makes it (a connection closed before the handshake
is logged by the scheduler), then closed. Standard distributed only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import dask.config
from dask.utils import parse_timedelta
from distributed.comm.addressing import parse_address
from distributed.comm.registry import get_backend

from minimaldask.pod import tlsfix

logger = logging.getLogger("distributed.minimaldask.nanny")

# Before this process opens any connection: one TLS connection's error must not end another.
tlsfix.install()

#: Seconds between two tries while the scheduler does not answer.
RETRY = 0.05
#: Seconds one try may take (a TLS handshake on a busy node).
ATTEMPT = 5.0


async def scheduler_answers(address: str, connection_args: dict[str, Any]) -> bool:
    """One try: whether a dask server answers at ``address`` (connected, then closed)."""
    scheme, loc = parse_address(address)
    connector = get_backend(scheme).get_connector()
    try:
        comm = await asyncio.wait_for(
            connector.connect(loc, deserialize=False, **connection_args), ATTEMPT
        )
    except (OSError, asyncio.TimeoutError):
        return False
    try:
        await asyncio.wait_for(comm.write(comm.handshake_info()), ATTEMPT)
        await asyncio.wait_for(comm.read(), ATTEMPT)
        return True
    except (OSError, asyncio.TimeoutError):
        return False
    finally:
        with contextlib.suppress(Exception):
            await comm.close()


async def wait_for_scheduler(address: str, connection_args: dict[str, Any], within: float) -> bool:
    """Try every RETRY until the scheduler answers; False if it did not within ``within``."""
    start = time.monotonic()
    tries = 0
    while True:
        tries += 1
        if await scheduler_answers(address, connection_args):
            if tries > 1:
                logger.info(
                    "minimaldask: the scheduler answered after %.2fs (%d tries)",
                    time.monotonic() - start,
                    tries,
                )
            return True
        if time.monotonic() - start + RETRY >= within:
            logger.warning(
                "minimaldask: the scheduler at %s did not answer within %gs (%d tries)",
                address,
                within,
                tries,
            )
            return False
        await asyncio.sleep(RETRY)


def connect_timeout() -> float:
    """``distributed.comm.timeouts.connect`` in seconds."""
    value = parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"), "s")
    return float(value or 30)


async def dask_setup(nanny: Any) -> None:
    """Entry point of ``--preload-nanny minimaldask.pod.nanny``."""
    await wait_for_scheduler(
        nanny.scheduler.addr, nanny.security.get_connection_args("worker"), connect_timeout()
    )
