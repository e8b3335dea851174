"""The janitor: it runs beside the scheduler, in its pod, and ends the cluster nobody uses.

``python -m minimaldask.pod.janitor`` is the second container of the scheduler
pod, and the only one with the cluster's service account token. It keeps the
clocks (:mod:`minimaldask.pod.clocks`) and ends the cluster by deleting its
root object, NAME-cluster, which owns every other object:

- when an idle, no-client or lifetime timeout passes, from what the scheduler's
  plugin reports every second over the pod's loopback;
- when the scheduler stops reporting (a crash loop, a scheduler that never
  starts): :data:`GONE_AFTER` seconds after its last report, or
  :data:`FIRST_REPORT_WITHIN` seconds after the janitor started if it never
  reported.

Its clocks live in this process, which a crashing scheduler does not take
down, and in the root object (saved every few seconds): a new scheduler pod
goes on from them; the lifetime counts from the root object's creation, as the
API server recorded it. A delete that is refused (the janitor's RoleBinding
removed, the API server failing) is retried with back-off, forever; meanwhile
the workers go to zero if the janitor still may scale them, and the plugin
(hence every handle) and the log say what is wrong. It never stops the
scheduler instead: on Kubernetes, the Deployment would only start it again.

Standard library only: it starts in a fraction of a second and needs little memory.
It also serves the plugin (on 127.0.0.1 only): ``POST /report``, ``GET /state``,
``GET /workers`` and ``POST /workers`` (the worker Deployment's replicas).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from minimaldask import contract
from minimaldask.pod.clocks import Clocks, Facts
from minimaldask.pod.kubeapi import APIError, KubernetesAPI, timestamp

logger = logging.getLogger("minimaldask.janitor")

#: Seconds without a report from the scheduler after which the cluster ends.
GONE_AFTER = 120.0
#: Seconds the scheduler has to send its first report (installing packages included).
FIRST_REPORT_WITHIN = 300.0
#: Seconds the plugin has to tell its clients why the cluster ends, before the delete.
FAREWELL = 2.0
#: Seconds between two tries of a refused delete: doubling from the first to the last.
BACKOFF = (2.0, 30.0)
#: Seconds between two saves of the clocks, at least and at most.
SAVE_EVERY = (5.0, contract.STATUS_INTERVAL)


class Janitor:
    """The clocks, the end, and the API calls of one cluster."""

    def __init__(self, settings: contract.JanitorSettings, api: KubernetesAPI) -> None:
        self.settings = settings
        self.api = api
        self.root = contract.root_name(settings.cluster)
        self.workers = contract.worker_name(settings.cluster)
        self.lock = threading.Lock()
        self.started = time.time()
        self.facts: Facts | None = None
        self.last_report: float | None = None
        #: The message the cluster ends with, once it ends.
        self.ending: str | None = None
        #: What the janitor cannot do right now, said to every handle.
        self.error: str | None = None
        self.adapt: dict[str, Any] | None = None
        self.clocks = Clocks(settings, created=self.started, last_client=self.started)
        self.saved: tuple[Any, ...] = ()
        self.saved_at = 0.0

    # -- state -------------------------------------------------------------------------------------

    def load(self) -> None:
        """Anchor the clocks to the root object: its creation, and the state saved in it."""
        deadline = time.monotonic() + 60
        while True:
            try:
                root = self.api.get_config_map(self.root)
                break
            except APIError as e:
                if time.monotonic() > deadline:
                    logger.error("cannot read %s (%s): the clocks start now", self.root, e)
                    return
                time.sleep(2)
        created = timestamp(root["metadata"]["creationTimestamp"])
        data = root.get("data") or {}
        self.clocks = Clocks(self.settings, created=created, last_client=created)
        try:
            if data.get(contract.STATE_STATUS):
                self.clocks.restore(contract.decode_status(data[contract.STATE_STATUS]))
            self.adapt = contract.decode_policy(data.get(contract.STATE_ADAPT))
        except ValueError as e:
            logger.warning("ignoring a malformed state in %s: %s", self.root, e)
        logger.info(
            "cluster %r created %.0fs ago; clocks %s",
            self.settings.cluster,
            time.time() - created,
            self.clocks.to_state(),
        )

    def status(self) -> dict[str, Any]:
        """What ``minimaldask list`` shows, and what a new pod's janitor goes on from."""
        s, c = self.settings, self.clocks
        return {
            **c.to_state(),
            "updated": time.time(),
            "started": c.created,
            "clients": self.facts.clients if self.facts else None,
            "idle_timeout": s.idle_timeout,
            "no_client_timeout": s.no_client_timeout,
            "max_lifetime": s.max_lifetime,
            "ending": self.ending,
            "error": self.error,
        }

    def save(self, now: float) -> None:
        """Save the clocks in the root object when they changed (rate-limited), or now and then."""
        state = (*sorted(self.clocks.to_state().items()), self.ending, self.error)
        due = now - self.saved_at
        if due < SAVE_EVERY[0] or (state == self.saved and due < SAVE_EVERY[1]):
            return
        try:
            self.api.set_config_map_data(
                self.root, {contract.STATE_STATUS: contract.encode_status(self.status())}
            )
        except APIError as e:
            logger.warning("cannot save the clocks in %s: %s", self.root, e)
            return
        self.saved, self.saved_at = state, now

    # -- what the plugin asks ---------------------------------------------------------------------

    def report(self, facts: Facts) -> dict[str, Any]:
        """The plugin's report; the answer says whether the cluster ends, and what is wrong."""
        with self.lock:
            self.facts = facts
            self.last_report = time.time()
            return {"end": self.ending, "error": self.error, "status": self.status()}

    def worker_pods(self) -> dict[str, int]:
        """The worker Deployment's replicas, live pods and Ready pods."""
        deployment = self.api.get_deployment(self.workers)
        status = deployment.get("status") or {}
        return {
            "replicas": int((deployment.get("spec") or {}).get("replicas") or 0),
            "live": int(status.get("replicas") or 0),
            "ready": int(status.get("readyReplicas") or 0),
        }

    # -- the watch --------------------------------------------------------------------------------

    def scheduler_gone(self, now: float) -> tuple[str, str] | None:
        """Whether the scheduler stopped reporting for longer than the bound."""
        if self.last_report is None:
            if now - self.started > FIRST_REPORT_WITHIN:
                return (
                    "scheduler",
                    f"its scheduler sent no report within {FIRST_REPORT_WITHIN:g}s of the "
                    "janitor's start: it cannot start (see its log)",
                )
            return None
        if now - self.last_report > GONE_AFTER:
            return (
                "scheduler",
                f"its scheduler has not answered for {GONE_AFTER:g}s (it crashes or hangs)",
            )
        return None

    def step(self, now: float) -> tuple[str, str] | None:
        """One look: the clocks take the latest facts; the reason to end now, if any."""
        with self.lock:
            fresh = self.last_report is not None and (
                now - self.last_report < 3 * self.settings.interval + 1
            )
            if self.facts is not None and fresh:
                self.clocks.observe(now, self.facts)
            reason = self.clocks.reason(now) or self.scheduler_gone(now)
        self.save(now)
        return reason

    def end(self, reason: str) -> None:
        """Delete the cluster; retry a refused delete forever, with workers at zero meanwhile."""
        message = f"minimaldask ended cluster {self.settings.cluster!r}: {reason}"
        with self.lock:
            self.ending = message
        logger.warning(message)
        time.sleep(FAREWELL)  # the plugin tells its clients (it asks every second)
        delay = BACKOFF[0]
        while True:
            try:
                self.api.delete_config_map(self.root)
                logger.info("deleted %s: every object of the cluster goes with it", self.root)
                with self.lock:
                    self.error = None
                return
            except APIError as e:
                if e.status == 404:
                    return  # deleted already (by its user, or by an earlier try)
                error = f"the janitor cannot delete the cluster ({e}); it tries again"
            try:
                if self.worker_pods()["replicas"]:
                    self.api.set_replicas(self.workers, 0)
                    error += "; its workers are scaled to zero meanwhile"
            except APIError as scale:
                error += f"; it cannot scale its workers to zero either ({scale})"
            with self.lock:
                self.error = error
            logger.error(error)
            self.save(time.time())
            time.sleep(delay)
            delay = min(delay * 2, BACKOFF[1])

    def run(self) -> None:
        """Watch until the cluster ends (or forever, if it has no timeout and never fails)."""
        while True:
            time.sleep(self.settings.interval)
            try:
                reason = self.step(time.time())
            except Exception:  # one bad look must not stop the next
                logger.exception("a look at the cluster failed")
                continue
            if reason:
                self.end(reason[1])
                return


class _Handler(BaseHTTPRequestHandler):
    janitor: Janitor

    def _answer(self, body: Any, status: int = 200) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length) or b"null")

    def do_GET(self) -> None:
        try:
            if self.path == "/state":
                self._answer({"adapt": self.janitor.adapt})
            elif self.path == "/workers":
                self._answer(self.janitor.worker_pods())
            else:
                self._answer({"error": f"no {self.path}"}, 404)
        except APIError as e:
            self._answer({"error": str(e)}, 502)

    def do_POST(self) -> None:
        try:
            body = self._body() or {}
            if self.path == "/report":
                self._answer(self.janitor.report(Facts.from_json(body.get("facts") or {})))
            elif self.path == "/workers":
                self.janitor.api.set_replicas(self.janitor.workers, int(body["replicas"]))
                self._answer({"replicas": int(body["replicas"])})
            else:
                self._answer({"error": f"no {self.path}"}, 404)
        except APIError as e:
            self._answer({"error": str(e)}, 502)
        except (ValueError, KeyError, TypeError) as e:
            self._answer({"error": f"bad request: {e}"}, 400)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the plugin calls every second."""


def main() -> int:
    """Run the janitor of the cluster named in the environment (see the module docstring)."""
    logging.basicConfig(
        stream=sys.stdout,
        level=logging.INFO,
        format="%(asctime)s - minimaldask.janitor - %(levelname)s - %(message)s",
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    settings = contract.JanitorSettings.from_env(os.environ)
    if not settings.namespace or not KubernetesAPI.available():
        logger.error("the janitor runs in a pod with its cluster's service account token only")
        return 2
    janitor = Janitor(settings, KubernetesAPI(settings.namespace))
    janitor.load()
    handler = type("Handler", (_Handler,), {"janitor": janitor})
    server = ThreadingHTTPServer(("127.0.0.1", contract.JANITOR_PORT), handler)
    threading.Thread(target=server.serve_forever, daemon=True, name="plugin").start()
    logger.info(
        "watching cluster %r: idle_timeout=%s no_client_timeout=%s max_lifetime=%s",
        settings.cluster,
        settings.idle_timeout,
        settings.no_client_timeout,
        settings.max_lifetime,
    )
    janitor.run()
    # The cluster is deleted: its pods go; this one answers the plugin until it does.
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
