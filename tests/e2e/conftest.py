"""E2E fixtures over the localkube plugin: the project's image in the local registry,
and a namespace per test where the client runs as the namespace-only user.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import dask
import filelock
import pytest

from minimaldask.spec import default_image_tag
from testutil import source_hash

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools" / "localkube"))
import pytest_localkube

# Small pods: the test node has 2 cores, and several tests run at once. A request is
# what the scheduler reserves, not what a pod may use.
SMALL = {"cpu": "50m", "memory": "384Mi"}


def pytest_configure(config):
    pytest_localkube.register(config)


@pytest.fixture(scope="session")
def image(localkube_cluster, localkube_registry):
    """The project's image for this client, built once per run and pushed to the local registry.

    ``MINIMALDASK_E2E_IMAGE=localhost:5000/minimaldask:TAG`` uses an image already pushed.
    """
    if os.environ.get("MINIMALDASK_E2E_IMAGE"):
        return os.environ["MINIMALDASK_E2E_IMAGE"]
    # The tag names the sources: other checkouts on this machine push their own, and an
    # image of these sources that the registry has already is not built again.
    tag = f"{default_image_tag()}-{source_hash()}"
    push = f"{localkube_registry.push_address}/minimaldask:{tag}"
    with filelock.FileLock(f"/tmp/minimaldask-e2e-image-{tag}.lock", timeout=1200):
        if not registry_has(localkube_registry.push_address, "minimaldask", tag):
            subprocess.run(
                # For this machine's platform: the local Kubernetes runs here.
                [sys.executable, "-m", "minimaldask.image", "build", "--push", push, "--insecure"],
                check=True,
                timeout=900,
            )  # fmt: skip
    return f"{localkube_registry.pull_name}/minimaldask:{tag}"


def registry_has(registry: str, repository: str, tag: str) -> bool:
    """Whether the local registry has ``repository:tag``."""
    request = urllib.request.Request(
        f"http://{registry}/v2/{repository}/manifests/{tag}",
        method="HEAD",
        headers={"Accept": "application/vnd.oci.image.index.v1+json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10):
            return True
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return False
        raise


@pytest.fixture
def namespace(kube_namespace, image, monkeypatch):
    """A fresh namespace; the client runs as the namespace-only user with the image as default.

    The same settings reach the processes a test starts (``minimaldask`` commands,
    other clients), as DASK_MINIMALDASK__* variables.
    """
    monkeypatch.setenv("KUBECONFIG", str(kube_namespace.user_kubeconfig))
    # Every pod of the suite must pass Pod Security "restricted".
    kube_namespace.kubectl(
        "label", "namespace", kube_namespace.name, "--overwrite",
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/enforce-version=latest",
        as_user=False,
    )  # fmt: skip
    repository = image.rpartition(":")[0]
    settings = {
        "minimaldask.backend": "kubernetes",
        "minimaldask.namespace": kube_namespace.name,
        "minimaldask.image.repository": repository,
        "minimaldask.image.tag": image.rpartition(":")[2],
        # The tag names the sources (see `image`): what a node has is the right build.
        "minimaldask.image.pull-policy": "IfNotPresent",
        "minimaldask.worker.cpu": SMALL["cpu"],
        "minimaldask.worker.memory": SMALL["memory"],
        "minimaldask.scheduler.cpu": "50m",
        "minimaldask.scheduler.memory": "384Mi",
    }
    for key, value in settings.items():
        monkeypatch.setenv("DASK_" + key.upper().replace(".", "__").replace("-", "_"), value)
    with dask.config.set(settings):
        yield kube_namespace.name


class Kube:
    """Checks of a test, with kubectl as the namespace-only user or as admin."""

    def __init__(self, cluster, namespace: str) -> None:
        self.cluster = cluster
        self.namespace = namespace

    def kubectl(
        self,
        *args: str,
        admin: bool = False,
        input: str | None = None,
        check: bool = True,
        timeout: float = 120,
    ):
        return self.cluster.kubectl(
            *args, as_user=not admin, input=input, check=check, timeout=timeout
        )

    def get(self, kind: str, name: str) -> dict:
        return json.loads(
            self.kubectl("get", kind, name, "-n", self.namespace, "-o", "json").stdout
        )

    def pods(self, name: str, component: str, live: bool = True) -> dict[str, dict]:
        """Pods of one component of cluster ``name`` (without those being deleted if ``live``)."""
        out = self.kubectl(
            "get", "pods", "-n", self.namespace, "-o", "json",
            "-l", f"app.kubernetes.io/instance={name},app.kubernetes.io/component={component}",
        ).stdout  # fmt: skip
        items = json.loads(out)["items"]
        return {
            p["metadata"]["name"]: p
            for p in items
            if not (live and p["metadata"].get("deletionTimestamp"))
        }

    def namespaced_kinds(self) -> list[str]:
        """Every namespaced kind the API serves that can be listed (not events: they outlive pods)."""
        out = self.kubectl(
            "api-resources", "--namespaced=true", "--verbs=list", "-o", "name", admin=True
        )
        return [k for k in out.stdout.split() if not k.startswith("events")]

    def objects_of(self, name: str) -> list[str]:
        """Every object of any kind labelled as part of cluster ``name`` (checked as admin)."""
        out = self.kubectl(
            "get", ",".join(self.namespaced_kinds()), "-n", self.namespace,
            "-l", f"app.kubernetes.io/instance={name}", "-o", "name", admin=True,
        ).stdout  # fmt: skip
        return out.split()


@pytest.fixture
def kube(localkube_cluster, namespace) -> Kube:
    """kubectl and checks in the test's namespace."""
    return Kube(localkube_cluster, namespace)


def registry_json(registry: str, path: str, accept: str = "") -> tuple[bytes, str]:
    """GET from the local registry: (body, content type)."""
    headers = {"Accept": accept} if accept else {}
    req = urllib.request.Request(f"http://{registry}{path}", headers=headers)
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.read(), r.headers.get("Content-Type", "")


def registry_put(registry: str, path: str, data: bytes, content_type: str) -> None:
    """PUT (or POST-then-PUT for blobs) to the local registry."""
    req = urllib.request.Request(
        f"http://{registry}{path}", data=data, method="PUT", headers={"Content-Type": content_type}
    )
    urllib.request.urlopen(req, timeout=30).close()


def json_dumps(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()
