"""The worker pod's preStop hook: move the worker's data elsewhere before the pod stops.

``python3 -m minimaldask.pod.drain`` asks the worker, over its HTTP port on the
pod's own loopback, to have the scheduler move its data to the other workers,
and waits for it within ``MINIMALDASK_DRAIN_TIMEOUT`` seconds (the pod's grace
period, less the time the worker needs to close). Kubernetes sends SIGTERM
when the hook returns. Standard library only: it starts in milliseconds.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

from minimaldask import contract


def main() -> int:
    """Drain this pod's worker; always exit 0 (a failed drain must not delay the stop)."""
    timeout = float(os.environ.get("MINIMALDASK_DRAIN_TIMEOUT", "30"))
    url = f"http://127.0.0.1:{contract.WORKER_HTTP_PORT}{contract.DRAIN_PATH}?timeout={timeout:g}"
    request = urllib.request.Request(url, data=b"", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout + 5) as response:
            print(f"minimaldask drain: {response.read().decode()}", flush=True)
    except (OSError, urllib.error.URLError) as e:
        print(f"minimaldask drain: the worker did not answer: {e}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
