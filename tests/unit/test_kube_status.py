"""Reading pod and Deployment status: pure functions over status objects as the API returns them."""

from __future__ import annotations

from minimaldask.kubernetes import status as kube


def pod(status, containers=(("worker", "img:1"),), name="p-1"):
    return {
        "metadata": {"name": name},
        "spec": {"containers": [{"name": n, "image": i} for n, i in containers]},
        "status": status,
    }


def test_a_healthy_pod_has_no_problem():
    p = pod(
        {"phase": "Running", "containerStatuses": [{"name": "worker", "state": {"running": {}}}]}
    )
    assert kube.pod_problem(p) is None


def test_image_pull_backoff():
    p = pod(
        {
            "containerStatuses": [
                {
                    "name": "worker",
                    "state": {
                        "waiting": {
                            "reason": "ImagePullBackOff",
                            "message": "Back-off pulling image",
                        }
                    },
                }
            ]
        },
        containers=[("worker", "reg/none:1")],
    )
    problem = kube.pod_problem(p)
    assert problem.kind == "pull"
    assert "ImagePullBackOff" in problem.message and "reg/none:1" in problem.message


def test_a_crash_loop():
    status = {
        "name": "worker",
        "restartCount": 1,
        "state": {"running": {}},
        "lastState": {"terminated": {"exitCode": 2, "reason": "Error"}},
    }
    p = pod({"containerStatuses": [status]})
    assert kube.pod_problem(p) is None  # one crash, running again: maybe a race
    status["restartCount"] = 2
    status["state"] = {"waiting": {"reason": "CrashLoopBackOff"}}
    problem = kube.pod_problem(p)
    assert problem.kind == "crash"
    assert "exited with code 2 (Error), restarted 2 time(s)" in problem.message


def test_unschedulable_carries_the_schedulers_message():
    message = "0/1 nodes are available: 1 Insufficient cpu."
    p = pod(
        {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": message,
                }
            ],
        }
    )
    problem = kube.pod_problem(p)
    assert problem.kind == "unschedulable" and problem.message == message


def test_replica_failure_of_a_deployment():
    dep = {
        "status": {
            "conditions": [
                {
                    "type": "ReplicaFailure",
                    "status": "True",
                    "reason": "FailedCreate",
                    "message": 'pods "x" is forbidden: exceeded quota: q',
                }
            ]
        }
    }
    assert "exceeded quota" in kube.replica_failure(dep)
    assert kube.replica_failure({"status": {}}) is None


def test_pod_phase_prefers_the_waiting_reason():
    p = pod(
        {
            "phase": "Pending",
            "containerStatuses": [{"state": {"waiting": {"reason": "ContainerCreating"}}}],
        }
    )
    assert kube.pod_phase(p) == "ContainerCreating"
    p["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert kube.pod_phase(p) == "Terminating"
    assert not kube.pod_ready(p)


def crash_loop(finished_at, started_at=None):
    terminated = {"exitCode": 1, "reason": "Error", "finishedAt": finished_at}
    if started_at:
        terminated["startedAt"] = started_at
    return pod(
        {
            "containerStatuses": [
                {
                    "name": "worker",
                    "restartCount": 2,
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {"terminated": terminated},
                }
            ]
        }
    )


def test_a_worker_crash_before_its_scheduler_was_ready_is_forgiven():
    ready = kube._time("2026-11-29T10:00:30Z")
    assert kube.pod_problem(crash_loop("2026-11-29T10:00:20Z"), ready) is None
    # Within the clock skew allowed between two nodes: still forgiven.
    assert kube.pod_problem(crash_loop("2026-11-29T10:00:31Z"), ready) is None
    assert kube.pod_problem(crash_loop("2026-11-29T10:00:40Z"), ready).kind == "crash"
    # The scheduler is not ready yet: every worker crash is forgiven.
    assert kube.pod_problem(crash_loop("2026-11-29T10:00:40Z"), float("inf")) is None
    # Started before the scheduler was ready, gave up after (its death timeout, while the
    # Service's endpoint was not programmed yet): forgiven; started after it: counts.
    assert (
        kube.pod_problem(crash_loop("2026-11-29T10:00:45Z", "2026-11-29T10:00:25Z"), ready) is None
    )
    late = crash_loop("2026-11-29T10:00:45Z", "2026-11-29T10:00:35Z")
    assert kube.pod_problem(late, ready).kind == "crash"
    # A scheduler's own crash always counts.
    assert kube.pod_problem(crash_loop("2026-11-29T10:00:20Z")).kind == "crash"


def test_ready_since_reads_the_ready_condition():
    p = pod(
        {
            "conditions": [
                {"type": "Ready", "status": "True", "lastTransitionTime": "2026-11-29T10:00:30Z"}
            ]
        }
    )
    assert kube.ready_since(p) == kube._time("2026-11-29T10:00:30Z")
    p["status"]["conditions"][0]["status"] = "False"
    assert kube.ready_since(p) is None


NANNY_LOG = (
    """\
2026-11-29 10:00:00,000 - distributed.nanny - INFO - Start Nanny at: 'tcp://10.244.0.5:34567'
Traceback (most recent call last):
  File "distributed/comm/tcp.py", line 360, in read_bytes_rw
    buf = host_array(n)
numpy._core._exceptions._ArrayMemoryError: Unable to allocate 3.07 EiB for an array
"""
    + "2026-11-29 10:00:01,000 - distributed.worker - INFO - noise\n" * 30
    + """\
Traceback (most recent call last):
  File "distributed/core.py", line 517, in start
RuntimeError: Nanny failed to start.
"""
)


def test_the_first_error_is_the_first_traceback_whole():
    first = kube.first_error(NANNY_LOG)
    assert first.startswith("Traceback (most recent call last):")
    assert first.endswith("Unable to allocate 3.07 EiB for an array")
    assert "Nanny failed to start" not in first


def test_the_first_error_of_a_one_line_failure():
    assert kube.first_error("starting\nminimaldask-entrypoint: PORT='x' is not a port\n") == (
        "minimaldask-entrypoint: PORT='x' is not a port"
    )
    assert kube.first_error("Usage: dask worker\nError: No such option: --x\n") == (
        "Error: No such option: --x"
    )
    assert kube.first_error("all went well\n") is None


def pulling(reason, message):
    return pod(
        {
            "containerStatuses": [
                {"name": "worker", "state": {"waiting": {"reason": reason, "message": message}}}
            ]
        }
    )


def test_a_pull_that_a_later_try_may_cure_is_transient():
    rate_limited = (
        'failed to pull and unpack image "docker.example/x:1": failed to copy: httpReadSeeker: '
        "failed open: unexpected status code https://docker.example/v2/x/manifests/sha256:ab: "
        "429 Too Many Requests - Server message: toomanyrequests: You have reached your pull rate limit"
    )
    for reason in ("ErrImagePull", "ImagePullBackOff"):
        problem = kube.pod_problem(pulling(reason, rate_limited))
        assert problem.kind == "pull" and problem.transient, reason
    overloaded = (
        "unexpected status from HEAD request to https://r/v2/x/manifests/1: 503 Service Unavailable"
    )
    assert kube.pod_problem(pulling("ErrImagePull", overloaded)).transient


def test_a_pull_that_cannot_succeed_is_not_transient():
    for reason, message in [
        ("ErrImagePull", 'failed to resolve reference "r/x:1": r/x:1: not found'),
        (
            "ErrImagePull",
            "pull access denied, repository does not exist or may require authorization",
        ),
        ("ErrImagePull", "dial tcp 127.0.0.1:5999: connect: connection refused"),
        ("InvalidImageName", "couldn't parse image name"),
        ("ErrImageNeverPull", "image is not present with pull policy of Never"),
    ]:
        problem = kube.pod_problem(pulling(reason, message))
        assert problem.kind == "pull" and not problem.transient, message


def unschedulable(name, message, node=""):
    p = pod(
        {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": message,
                }
            ],
        },
        name=name,
    )
    if node:
        p["spec"]["nodeName"] = node
        p["status"] = {"phase": "Running"}
    return p


def test_unschedulable_is_transient_and_its_reason_is_short():
    message = (
        "0/3 nodes are available: 3 Insufficient cpu. preemption: 0/3 nodes are available: "
        "3 No preemption victims found for incoming pod."
    )
    assert kube.pod_problem(unschedulable("w-1", message)).transient
    assert kube.unschedulable_reason(message) == "Insufficient cpu"
    taint = "0/1 nodes are available: 1 node(s) had untolerated taint {pool: gpu}. preemption: x"
    assert kube.unschedulable_reason(taint) == "node(s) had untolerated taint {pool: gpu}"
    assert kube.unschedulable_reason("something else.") == "something else"


def test_waiting_for_says_how_many_pods_have_a_node_and_why_not_the_others():
    message = "0/3 nodes are available: 1 Insufficient cpu, 2 Insufficient memory."
    pods = [
        unschedulable("w-1", message),
        unschedulable("w-2", message),
        unschedulable("w-3", "", node="n-1"),
    ]
    assert kube.waiting_for(pods, "workers") == (
        "waiting for a node: 1/3 workers scheduled: Insufficient cpu, Insufficient memory"
    )
    assert kube.waiting_for(pods[2:], "workers") == ""
    slow = pulling("ErrImagePull", "429 Too Many Requests")
    assert kube.waiting_for([slow], "workers").startswith("retrying the image pull: ErrImagePull")
    assert [p.pod for p in kube.transient_problems(pods)] == ["w-1", "w-2"]


def serving(name, created, ready=True, phase="Running", deleting=False):
    p = pod({"phase": phase, "conditions": [{"type": "Ready", "status": str(ready)}]}, name=name)
    p["metadata"]["creationTimestamp"] = created
    if deleting:
        p["metadata"]["deletionTimestamp"] = "2026-11-29T10:05:00Z"
    return p


def test_the_serving_pod_is_the_newest_ready_else_running_one_never_one_being_deleted():
    old = serving("s-old", "2026-11-29T10:00:00Z", deleting=True)
    assert kube.serving_pod([old]) is None
    pending = serving("s-pending", "2026-11-29T10:04:30Z", ready=False, phase="Pending")
    assert kube.serving_pod([old, pending]) is None  # no container runs: nothing to dial
    starting = serving("s-new", "2026-11-29T10:04:00Z", ready=False)
    # Running, not Ready yet: reached (its forward dials again while it refuses)...
    assert kube.serving_pod([old, pending, starting]) == "s-new"
    # ...unless a Ready one serves: newer or not, it answers now.
    ready = serving("s-ready", "2026-11-29T10:03:00Z")
    newer = serving("s-newer", "2026-11-29T10:05:00Z")
    assert kube.serving_pod([old, starting, ready]) == "s-ready"
    assert kube.serving_pod([ready, newer, starting]) == "s-newer"
    leaving = serving("s-leaving", "2026-11-29T10:06:00Z", ready=False, deleting=True)
    assert kube.serving_pod([starting, leaving]) == "s-new"
