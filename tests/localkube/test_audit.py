"""The API server's audit log (`localkube.py up --audit`, LOCALKUBE_AUDIT=1) and
localkube.audit_events(), with which benchmarks count API requests."""

import subprocess
import sys
import time

import pytest

import localkube

pytestmark = pytest.mark.kube


@pytest.fixture(scope="module")
def audited(localkube_cluster):
    """The cluster with its audit log on: tools/test.sh starts it so; when it runs
    without, this restarts just the API server (what `up --audit` does)."""
    localkube.up(audit=True)
    assert localkube.apiserver_audits()
    return localkube_cluster


def find(timeout=10, **filters) -> list[dict]:
    return localkube.wait_for(
        f"audit events {filters}", timeout, lambda: localkube.audit_events(**filters)
    )


def test_a_kubectl_call_of_the_namespace_user_shows_with_its_verb_resource_and_agent(
    audited, kube_namespace
):
    since = time.time()
    kube_namespace.kubectl("create", "configmap", "audited", "--from-literal=a=b")
    kube_namespace.kubectl("get", "configmap", "audited")
    kube_namespace.kubectl("get", "pods")
    common = {"since": since, "user": audited.user, "namespace": kube_namespace.name}
    created = find(verb="create", resource="configmaps", **common)
    assert len(created) == 1, created
    event = created[0]
    print({k: event[k] for k in ("verb", "requestURI", "userAgent", "stage")})
    assert event["objectRef"]["name"] == "audited"
    assert event["userAgent"].startswith("kubectl/")
    assert event["responseStatus"]["code"] == 201
    assert event["level"] == "Metadata" and "requestObject" not in event
    assert [e["objectRef"]["name"] for e in find(verb="get", resource="configmaps", **common)] == [
        "audited"
    ]
    assert len(find(verb="list", resource="pods", **common)) == 1
    # the filters filter: nothing of this user's in another namespace, nothing by another agent
    assert not localkube.audit_events(since, user=audited.user, namespace="kube-system")
    assert not localkube.audit_events(since, user=audited.user, user_agent="no-such-agent/")
    # an older `since` keeps what came before; the events come oldest first
    everything = localkube.audit_events(since - 3600, user=audited.user)
    assert len(everything) >= 3
    stamps = [e["requestReceivedTimestamp"] for e in everything]
    assert stamps == sorted(stamps)


def test_a_refused_request_is_audited_with_its_code(audited, kube_namespace):
    since = time.time()
    # a name of its own: other tests on the shared cluster act as the same user
    node = f"no-node-{kube_namespace.name}"
    proc = kube_namespace.cluster.kubectl("get", "node", node, as_user=True, check=False)
    assert proc.returncode != 0 and "forbidden" in proc.stderr.lower()
    (event,) = find(since=since, user=audited.user, verb="get", resource="nodes", name=node)
    assert event["responseStatus"]["code"] == 403


def test_audit_command_prints_the_events(audited, kube_namespace):
    since = time.time()
    kube_namespace.kubectl("get", "services")
    find(since=since, user=audited.user, resource="services")
    out = subprocess.run(
        [sys.executable, str(localkube.HERE / "localkube.py"), "audit", "--since", str(since),
         "--user", audited.user, "--resource", "services", "--namespace", kube_namespace.name],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    (line,) = out.splitlines()
    assert f" {audited.user} list services {kube_namespace.name} - 200 'kubectl/" in line


def test_up_with_audit_on_a_cluster_that_audits_restarts_nothing(audited):
    before = localkube.pid_of("kube-apiserver")
    proc = subprocess.run(
        [sys.executable, str(localkube.HERE / "localkube.py"), "up", "--audit"],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "already up" in proc.stdout and "restarting" not in proc.stdout
    assert localkube.pid_of("kube-apiserver") == before


def test_audit_events_without_the_log_says_how_to_turn_it_on(monkeypatch, tmp_path):
    monkeypatch.setattr(localkube, "AUDIT_LOG", tmp_path / "audit.log")
    with pytest.raises(localkube.LocalkubeError, match="up --audit"):
        localkube.audit_events()
