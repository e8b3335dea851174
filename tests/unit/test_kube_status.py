"""Reading pod and Deployment status: pure functions over status objects as the API returns them."""

from __future__ import annotations

from minimaldask import kube


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
