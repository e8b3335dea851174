"""The worker pod's preStop hook: move the worker's data elsewhere before the pod stops.

``python3 -m minimaldask.pod.drain`` asks the worker, over its HTTP port on the
pod's own loopback, to have the scheduler move its data and its running tasks'
results to the other workers, and waits for it within
``MINIMALDASK_DRAIN_TIMEOUT`` seconds (the pod's grace period, less the time the
worker needs to close). Kubernetes sends SIGTERM when the hook returns.

The hook may come while the worker still starts (a pod removed just after it
was created, when a scale-up is followed at once by a scale-down): it then
waits for the worker to answer, and the worker waits to join its scheduler,
so that a worker never joins, takes tasks, and dies with them. Standard library
only: it starts in milliseconds.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from minimaldask import contract

#: Seconds between two tries while the worker does not answer yet.
RETRY = 0.2
#: Seconds a worker that does not answer yet is waited for. Its process starts
#: once its scheduler answers: one that does not start within this is not
#: coming (its cluster is being deleted, say), and the pod stops without it.
ANSWER_WITHIN = 20.0


def request(url: str, timeout: float, answer_within: float = ANSWER_WITHIN) -> dict[str, Any]:
    """POST the drain to ``url`` until the worker answers (within ``answer_within``).

    The drain itself may take until ``timeout``. The answer is the worker's
    (``{"moved": bool}``), or ``{"moved": False, "error": ...}``.
    """
    start = time.monotonic()
    deadline = start + min(timeout, answer_within)
    error = "no try"
    while True:
        left = start + timeout - time.monotonic()
        req = urllib.request.Request(url, data=b"", method="POST")
        try:
            with urllib.request.urlopen(req, timeout=max(left, 0.1) + 5) as response:
                return dict(json.loads(response.read().decode() or "{}"))
        except urllib.error.HTTPError as e:
            # 404: the worker's HTTP server runs, our preload's route is not there yet.
            error = f"HTTP {e.code}"
            if e.code != 404:
                return {"moved": False, "error": f"the worker answered {error}"}
        except (OSError, ValueError) as e:  # refused: the worker's server is not up yet
            error = str(getattr(e, "reason", e))
        if time.monotonic() + RETRY >= deadline:
            return {
                "moved": False,
                "error": f"the worker did not answer within {deadline - start:g}s ({error})",
            }
        time.sleep(RETRY)


def main() -> int:
    """Drain this pod's worker; always exit 0 (a failed drain must not delay the stop further)."""
    timeout = float(os.environ.get("MINIMALDASK_DRAIN_TIMEOUT", "30"))
    url = f"http://127.0.0.1:{contract.WORKER_HTTP_PORT}{contract.DRAIN_PATH}?timeout={timeout:g}"
    answer = request(url, timeout)
    out = sys.stderr if "error" in answer else sys.stdout
    print(f"minimaldask drain: {json.dumps(answer)}", file=out, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
