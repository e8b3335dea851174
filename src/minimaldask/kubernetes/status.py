"""Reading the state of pods and Deployments: pure functions over objects as the API returns them.

Why a pod will not run (a pull error, a crash loop, no node for it) and
whether waiting may cure it, when it became ready, which pod serves, a short
phase for progress lines, and the first error in a log.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

_PULL_ERRORS = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull")
#: Pull errors that the kubelet's next try may not meet: the registry limits the rate,
#: is overloaded or slow (lower case, as found in the node's message). Any other pull
#: error (no such image, no access, no such host, nothing listening) fails at once.
_TRANSIENT_PULL = (
    "429 too many requests",
    "toomanyrequests",
    "rate limit",
    "500 internal server error",
    "502 bad gateway",
    "503 service unavailable",
    "504 gateway timeout",
    "i/o timeout",
    "tls handshake timeout",
    "context deadline exceeded",
    "connection reset by peer",
)
_CONFIG_ERRORS = ("CreateContainerConfigError", "CreateContainerError", "RunContainerError")


@dataclass(frozen=True)
class PodProblem:
    """Why a pod cannot run: ``kind`` is one of pull, crash, config, unschedulable."""

    kind: str
    pod: str
    container: str
    message: str
    #: Whether time may cure it: no node fits the pod yet (a node pool may add one),
    #: or the registry refused a pull for now (a rate limit). Worth waiting for, until
    #: the deadline; any other problem fails at once.
    transient: bool = False


def _time(value: str | None) -> float | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


#: Seconds by which two nodes' clocks may disagree when a worker's crash is compared
#: with the moment its scheduler became ready.
CLOCK_SKEW = 2.0


def pod_problem(
    pod: Mapping[str, Any], crashes_count_after: float | None = None
) -> PodProblem | None:
    """The reason a pod will not become ready by itself, read from its status; else None.

    ``crashes_count_after`` (a time, seconds since the epoch) forgives a crash of a
    container that started before it: a worker that began waiting for a scheduler
    that was not yet listening, and gave up (its death timeout may end after the
    scheduler became ready, while the Service's endpoint was not yet programmed).
    Kubernetes restarts it, and the next try finds the scheduler; a container that
    started after it and crashed counts.
    """
    name = pod.get("metadata", {}).get("name", "?")
    status = pod.get("status") or {}
    for cond in status.get("conditions") or []:
        if (
            cond.get("type") == "PodScheduled"
            and cond.get("status") == "False"
            and cond.get("reason") == "Unschedulable"
        ):
            return PodProblem("unschedulable", name, "", cond.get("message", ""), transient=True)
    images = {c["name"]: c.get("image", "") for c in pod.get("spec", {}).get("containers", [])}
    for cs in status.get("containerStatuses") or []:
        container = cs.get("name", "")
        waiting = (cs.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason", "")
        if reason in _PULL_ERRORS:
            image = images.get(container) or cs.get("image", "")
            message = waiting.get("message", "")
            return PodProblem(
                "pull",
                name,
                container,
                f"{reason}: image {image!r}: {message}",
                transient=reason in ("ErrImagePull", "ImagePullBackOff")
                and any(t in message.lower() for t in _TRANSIENT_PULL),
            )
        if reason in _CONFIG_ERRORS:
            return PodProblem("config", name, container, f"{reason}: {waiting.get('message', '')}")
        # One crash can be a race (a scheduler being replaced); a crash loop is not.
        if reason == "CrashLoopBackOff":
            detail = (cs.get("lastState") or {}).get("terminated") or {}
            began = _time(detail.get("startedAt") or detail.get("finishedAt"))
            if crashes_count_after is not None and (
                began is None or began <= crashes_count_after + CLOCK_SKEW
            ):
                continue
            return PodProblem(
                "crash",
                name,
                container,
                f"exited with code {detail.get('exitCode', '?')}"
                + (f" ({detail['reason']})" if detail.get("reason") else "")
                + f", restarted {cs.get('restartCount', 0)} time(s)",
            )
    return None


def unschedulable_reason(message: str) -> str:
    """The scheduler's reason without its counts and its preemption report.

    ``0/3 nodes are available: 3 Insufficient cpu. preemption: ...`` becomes
    ``Insufficient cpu``.
    """
    text = message.split(". preemption:", 1)[0].strip().rstrip(".")
    _, found, reasons = text.partition("nodes are available: ")
    if not found:
        return text
    return ", ".join(re.sub(r"^\d+ ", "", r.strip()) for r in reasons.split(", "))


def waiting_for(pods: Sequence[Mapping[str, Any]], what: str) -> str:
    """What the live ``pods`` (of ``what``: "workers") wait for that time may bring; "" if nothing.

    ``waiting for a node: 0/3 workers scheduled: Insufficient cpu``, or
    ``retrying the image pull: ErrImagePull: ...``.
    """
    live = [p for p in pods if not p.get("metadata", {}).get("deletionTimestamp")]
    problems = [p for p in map(pod_problem, live) if p is not None and p.transient]
    unschedulable = [p for p in problems if p.kind == "unschedulable"]
    if unschedulable:
        scheduled = sum(1 for p in live if (p.get("spec") or {}).get("nodeName"))
        return (
            f"waiting for a node: {scheduled}/{len(live)} {what} scheduled: "
            f"{unschedulable_reason(unschedulable[0].message)}"
        )
    if problems:
        return f"retrying the image pull: {problems[0].message}"
    return ""


def transient_problems(pods: Sequence[Mapping[str, Any]]) -> list[PodProblem]:
    """The problems of the live ``pods`` that time may cure (see :attr:`PodProblem.transient`)."""
    live = [p for p in pods if not p.get("metadata", {}).get("deletionTimestamp")]
    return [p for p in map(pod_problem, live) if p is not None and p.transient]


def serving_pod(pods: Sequence[Mapping[str, Any]]) -> str | None:
    """The pod a new connection to the scheduler should reach now: None if none runs.

    Of the pods not being deleted, the newest Ready one: after a scheduler pod is
    replaced, the new one once it listens. While none is Ready, the newest Running
    one: a start reaches its scheduler as soon as it listens, not a readiness
    probe later. Its port-forward sends the connection's first bytes again while
    that pod refuses it (:class:`~minimaldask.kubernetes.api.Forward`).
    """
    live = [p for p in pods if not p.get("metadata", {}).get("deletionTimestamp")]
    ready = [p for p in live if pod_ready(p)]
    running = [p for p in live if (p.get("status") or {}).get("phase") == "Running"]
    candidates = ready or running
    if not candidates:
        return None
    newest = max(candidates, key=lambda p: p["metadata"].get("creationTimestamp") or "")
    return str(newest["metadata"]["name"])


def replica_failure(deployment: Mapping[str, Any] | None) -> str | None:
    """Why a Deployment cannot create its pods (a quota, an admission policy), if it says so."""
    for cond in ((deployment or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == "ReplicaFailure" and cond.get("status") == "True":
            return str(cond.get("message", cond.get("reason", "")))
    return None


_ERROR_LINE = re.compile(r"^(minimaldask-entrypoint: |Error: |[A-Za-z_][\w.]*(Error|Exception)\b)")


def first_error(log: str) -> str | None:
    """The first error in a log: a whole Python traceback, or one line that names an error.

    The last lines of a crash often show only the consequence (``Nanny failed to
    start``); the first error shows the cause.
    """
    lines = log.splitlines()
    for i, line in enumerate(lines):
        text = _strip_log_prefix(line)
        if text.startswith("Traceback (most recent call last):"):
            block = [line]
            for following in lines[i + 1 :]:
                block.append(following)
                if following and not following[0].isspace():  # the exception line ends it
                    break
            return "\n".join(block)
        if _ERROR_LINE.match(text):
            return line
    return None


def _strip_log_prefix(line: str) -> str:
    # dask's own log lines start with a timestamp and a logger name: "2026-... - distributed.x - ERROR - ..."
    parts = line.split(" - ", 3)
    return parts[3] if len(parts) == 4 and parts[2].strip().isupper() else line


def ready_since(pod: Mapping[str, Any]) -> float | None:
    """When the pod last became Ready (seconds since the epoch), or None if it is not Ready."""
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready" and cond.get("status") == "True":
            return _time(cond.get("lastTransitionTime"))
    return None


def pod_ready(pod: Mapping[str, Any]) -> bool:
    """Whether the pod's Ready condition is True and it is not being deleted."""
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return False
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (pod.get("status") or {}).get("conditions") or []
    )


def pod_phase(pod: Mapping[str, Any]) -> str:
    """A short state of the pod for progress displays: Pending, ContainerCreating, Running..."""
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return "Terminating"
    status = pod.get("status") or {}
    for cs in status.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting")
        if waiting:
            return str(waiting.get("reason", "Waiting"))
    return str(status.get("phase", "Pending"))
