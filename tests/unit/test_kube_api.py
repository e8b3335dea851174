import sys

import pytest

from minimaldask.kubernetes import api as kube
from minimaldask.kubernetes.api import _describe


def test_an_error_is_described_by_its_type_and_message():
    assert _describe(ConnectionError("reset")) == "ConnectionError: reset"
    assert _describe(TimeoutError()) == "TimeoutError"


@pytest.mark.skipif(sys.version_info < (3, 11), reason="ExceptionGroup is built in from 3.11")
def test_a_group_is_described_by_what_is_in_it():
    # httpx-ws ends a websocket through a task group: its message says nothing of why.
    group = ExceptionGroup(  # noqa: F821  (3.11+)
        "unhandled errors in a TaskGroup", [ConnectionError("no answer"), ValueError("bad")]
    )
    assert _describe(group) == "ConnectionError: no answer; ValueError: bad"


def test_a_rule_grants_as_rbac_matches():
    from minimaldask.kubernetes.objects import DEPLOYMENT, POD, ROLE, Access

    portforward = Access("create", POD, "portforward")
    create_pods = Access("create", POD)
    patch_deployments = Access("patch", DEPLOYMENT)
    patch_roles = Access("patch", ROLE)

    def grants(rule, access):
        return kube.granted([rule], access)

    everything = {"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}
    assert all(grants(everything, a) for a in (portforward, create_pods, patch_roles))
    pods = {"apiGroups": [""], "resources": ["pods"], "verbs": ["*"]}
    assert grants(pods, create_pods)
    assert not grants(pods, portforward)  # a subresource is a resource of its own
    assert grants({**pods, "resources": ["pods/portforward"], "verbs": ["create"]}, portforward)
    assert grants({**pods, "resources": ["*/portforward"], "verbs": ["create"]}, portforward)
    assert not grants({**pods, "verbs": ["get", "list"]}, create_pods)
    assert not grants({**pods, "apiGroups": ["apps"]}, create_pods)  # pods are in the core group
    apps = {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["patch"]}
    assert grants(apps, patch_deployments)
    assert not grants({**apps, "apiGroups": [""]}, patch_deployments)
    # Named objects only: creating or listing names none.
    assert not grants({**apps, "resourceNames": ["x-worker"]}, patch_deployments)
    rbac = {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles"], "verbs": ["*"]}
    assert grants(rbac, patch_roles)
    assert not kube.granted([], create_pods)
    assert kube.granted([apps, pods], create_pods)
