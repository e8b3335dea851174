"""E2E fixtures: the local Kubernetes (tools/localkube), a fresh namespace per test in
which only the namespace-only user works, and the project's image in the local registry.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import dask
import pytest

from minimaldask.spec import default_image_tag

STATE = Path(os.environ.get("LOCALKUBE_STATE", "/var/lib/localkube"))
ADMIN_KUBECONFIG = STATE / "admin.kubeconfig"
USER_KUBECONFIG = STATE / "user.kubeconfig"
USER = "minimaldask-e2e"
REGISTRY = "localhost:5000"
REPOSITORY = f"{REGISTRY}/minimaldask"
# Small pods: the test node has 2 cores.
SMALL = {"cpu": "200m", "memory": "384Mi"}


def kubectl_binary() -> str:
    found = shutil.which("kubectl") or next(
        (str(p) for p in Path("/var/cache/localkube").glob("*/bin/kubectl")), None
    )
    if not found:
        pytest.skip("no kubectl: the local Kubernetes is not built (tools/localkube)")
    return found


def kubectl(*args: str, admin: bool = False, input: str | None = None, check: bool = True):
    """Run kubectl as the namespace-only user (or as admin, for the test's own set-up)."""
    env = {**os.environ, "KUBECONFIG": str(ADMIN_KUBECONFIG if admin else USER_KUBECONFIG)}
    return subprocess.run(
        [kubectl_binary(), *args],
        env=env,
        input=input,
        capture_output=True,
        text=True,
        check=check,
        timeout=120,
    )


@pytest.fixture(scope="session")
def localkube():
    """The running local Kubernetes, or a skip saying why there is none."""
    if not ADMIN_KUBECONFIG.exists() or not USER_KUBECONFIG.exists():
        pytest.skip(
            f"the local Kubernetes is not up (no {ADMIN_KUBECONFIG}); run tools/localkube up"
        )
    r = kubectl("get", "--raw", "/readyz", admin=True, check=False)
    if r.returncode != 0 or r.stdout.strip() != "ok":
        pytest.skip(f"the local Kubernetes does not answer: {r.stderr.strip() or r.stdout.strip()}")
    return STATE


@pytest.fixture(scope="session")
def image(localkube):
    """The project's image for this client, built once per run and pushed to the local registry."""
    ref = os.environ.get("MINIMALDASK_E2E_IMAGE") or f"{REPOSITORY}:{default_image_tag()}"
    if not os.environ.get("MINIMALDASK_E2E_IMAGE"):
        subprocess.run(
            [sys.executable, "-m", "minimaldask.image", "build", "--platform", "linux/amd64",
             "--push", ref, "--insecure"],
            check=True,
            timeout=900,
        )  # fmt: skip
    return ref


@pytest.fixture
def namespace(localkube, image, monkeypatch):
    """A fresh namespace where the namespace-only user has the `admin` role; KUBECONFIG is that user's."""
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    objects = {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": f"{USER}-admin", "namespace": name},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": "admin",
                },
                "subjects": [
                    {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": USER}
                ],
            },
        ],
    }
    kubectl("apply", "-f", "-", admin=True, input=json.dumps(objects))
    monkeypatch.setenv("KUBECONFIG", str(USER_KUBECONFIG))
    repository, _, _ = image.rpartition(":")
    with dask.config.set(
        {
            "minimaldask.backend": "kubernetes",
            "minimaldask.namespace": name,
            "minimaldask.image.repository": repository,
            "minimaldask.worker.cpu": SMALL["cpu"],
            "minimaldask.worker.memory": SMALL["memory"],
            "minimaldask.scheduler.cpu": "100m",
            "minimaldask.scheduler.memory": "384Mi",
        }
    ):
        yield name
    kubectl("delete", "namespace", name, "--wait=false", admin=True, check=False)


def namespaced_kinds() -> list[str]:
    """Every namespaced kind the API serves that can be listed."""
    out = kubectl(
        "api-resources", "--namespaced=true", "--verbs=list", "-o", "name", admin=True
    ).stdout
    return [k for k in out.split() if k not in ("events", "events.events.k8s.io")]


def objects_of(namespace: str, name: str) -> list[str]:
    """Every object of any kind labelled as part of cluster ``name`` (checked as admin)."""
    out = kubectl(
        "get", ",".join(namespaced_kinds()), "-n", namespace,
        "-l", f"app.kubernetes.io/instance={name}", "-o", "name", admin=True,
    ).stdout  # fmt: skip
    return out.split()


def registry_json(path: str, accept: str = "") -> tuple[dict, str]:
    req = urllib.request.Request(
        f"http://{REGISTRY}{path}", headers={"Accept": accept} if accept else {}
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read()), r.headers.get("Content-Type", "")
