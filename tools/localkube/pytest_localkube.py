"""pytest plugin: one localkube cluster for the test run, a fresh namespace per test.

Load it from a conftest.py (see tests/localkube/conftest.py):

    sys.path.insert(0, str(REPO / "tools" / "localkube"))
    import pytest_localkube

    def pytest_configure(config):
        pytest_localkube.register(config)

Fixtures:
    localkube_cluster   (session) Cluster: kubeconfig paths, registry, kubectl().
                        Starts the cluster unless it is up; takes it down at the
                        end only if it started it and LOCALKUBE_KEEP is not set.
    localkube_registry  (session) Registry: .push_address ("127.0.0.1:5000", where
                        the host pushes), .pull_name ("localhost:5000", what pods
                        reference), .push_image(...) -> "localhost:5000/repo:tag".
    probe_image         (session) reference of the small test image (recipe/images/probe).
    kube_namespace      (function) Namespace: a fresh namespace in which the
                        namespace-only user has the built-in `admin` role; yields
                        .name, .user_kubeconfig, .kubectl(..., as_user=True); deleted after.

Environment:
    LOCALKUBE_KEEP=1        never take the cluster down at the end of the run
    LOCALKUBE_NO_UP=1       fail instead of starting a cluster that is not up
    LOCALKUBE_ARTIFACTS     where logs go when a test fails (default out/localkube-logs)

When a test using these fixtures fails, the logs of every component and the
events, pods and pod logs of its namespace are written to
$LOCALKUBE_ARTIFACTS/<test name>/.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import localkube

__all__ = ["Cluster", "Namespace", "Registry", "register"]

ARTIFACTS = Path(os.environ.get("LOCALKUBE_ARTIFACTS", "out/localkube-logs"))


def register(config) -> None:
    """Register this plugin once, from any conftest's pytest_configure."""
    module = sys.modules[__name__]
    if not config.pluginmanager.is_registered(module):
        config.pluginmanager.register(module, "pytest_localkube")


def pytest_configure(config):
    config.addinivalue_line("markers", "kube: needs the localkube cluster (started if not running)")
    config.addinivalue_line(
        "markers",
        "localkube_down: takes the localkube cluster down and up; runs only with "
        "LOCALKUBE_RUN_DOWN_TEST=1, after every other kube test",
    )
    config.addinivalue_line(
        "markers",
        "localkube_leaks: reads the leak counters of the whole run; runs only with "
        "LOCALKUBE_RUN_LEAK_CHECK=1, after every other test",
    )


@dataclass(frozen=True)
class Cluster:
    kubeconfig: Path
    user_kubeconfig: Path
    user: str
    user_namespace: str
    node_name: str
    node_ip: str
    bin_dir: Path

    def kubectl(
        self,
        *args,
        as_user: bool = False,
        check: bool = True,
        timeout: float = 60,
        input: str | None = None,
    ) -> subprocess.CompletedProcess:
        """Run kubectl as the admin (or as the namespace-only user); raise on failure if check."""
        config = self.user_kubeconfig if as_user else self.kubeconfig
        cmd = [str(self.bin_dir / "kubectl"), f"--kubeconfig={config}", *map(str, args)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(map(str, args))} failed ({proc.returncode}):\n"
                f"{proc.stdout}{proc.stderr}"
            )
        return proc


@dataclass(frozen=True)
class Registry:
    push_address: str
    pull_name: str

    def push_image(
        self,
        repo: str,
        tag: str,
        files: dict[str, tuple[bytes, int]],
        entrypoint: list[str],
        cmd: list[str] | None = None,
    ) -> str:
        """Push a one-layer image of `files` ({path: (bytes, mode)}); return the reference pods use."""
        return localkube.push_image(repo, tag, files, entrypoint, cmd, registry=self.push_address)


@dataclass(frozen=True)
class Namespace:
    name: str
    cluster: Cluster

    @property
    def user_kubeconfig(self) -> Path:
        return self.cluster.user_kubeconfig

    def kubectl(self, *args, as_user: bool = True, **kwargs) -> subprocess.CompletedProcess:
        """kubectl in this namespace, as the namespace-only user unless as_user=False."""
        return self.cluster.kubectl("-n", self.name, *args, as_user=as_user, **kwargs)

    def apply(self, *objects: dict, as_user: bool = True) -> None:
        self.kubectl(
            "apply",
            "-f",
            "-",
            as_user=as_user,
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}),
        )


@pytest.fixture(scope="session")
def localkube_cluster():
    running = all(localkube.pid_of(name) for name in localkube.COMPONENTS)
    if not running and os.environ.get("LOCALKUBE_NO_UP"):
        pytest.fail(
            "localkube is not up and LOCALKUBE_NO_UP is set; run `tools/localkube/localkube.py up`"
        )
    try:
        localkube.up()  # when running: waits until healthy (restarts it if it does not get there)
    except localkube.LocalkubeError as e:
        pytest.fail(f"localkube up failed: {e}")
    started = not running
    yield Cluster(
        kubeconfig=localkube.ADMIN_KUBECONFIG,
        user_kubeconfig=localkube.USER_KUBECONFIG,
        user=localkube.USER_NAME,
        user_namespace=localkube.USER_NAMESPACE,
        node_name=localkube.NODE_NAME,
        node_ip=localkube.NODE_IP,
        bin_dir=localkube.build_dir() / "bin",
    )
    if started and os.environ.get("LOCALKUBE_KEEP", "") in ("", "0"):
        localkube.down()


@pytest.fixture(scope="session")
def localkube_registry(localkube_cluster) -> Registry:
    return Registry(push_address=localkube.REGISTRY_LISTEN, pull_name=localkube.REGISTRY)


@pytest.fixture(scope="session")
def probe_image(localkube_registry) -> str:
    return localkube.push_probe_image()


def _namespace_name(nodeid: str) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", nodeid.split("::")[-1].lower()).strip("-")[:40].strip("-")
    return f"lk-{base}-{secrets.token_hex(3)}"


@pytest.fixture
def kube_namespace(localkube_cluster, request):
    ns = Namespace(name=_namespace_name(request.node.nodeid), cluster=localkube_cluster)
    localkube_cluster.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps(localkube.namespace_user_objects(ns.name, localkube_cluster.user)),
    )
    # Pods are refused until the service account controller made "default".
    localkube.wait_for(
        f"service account default in {ns.name}",
        30,
        lambda: (
            localkube_cluster.kubectl(
                "-n", ns.name, "get", "serviceaccount", "default", check=False
            ).returncode
            == 0
        ),
    )
    request.node.localkube_namespace = ns.name
    yield ns
    localkube_cluster.kubectl("delete", "namespace", ns.name, "--wait=false", check=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and "localkube_cluster" in getattr(item, "fixturenames", ()):
        try:
            path = dump_artifacts(item.nodeid, getattr(item, "localkube_namespace", None))
            report.sections.append(
                ("localkube", f"cluster logs and namespace events written to {path}")
            )
        except Exception as e:  # a failed dump must not hide the test's own failure
            report.sections.append(("localkube", f"could not write cluster logs: {e}"))


def dump_artifacts(nodeid: str, namespace: str | None, root: Path | None = None) -> Path:
    """Write component logs, and the namespace's events, objects and pod logs; return the directory."""
    out = (root or ARTIFACTS) / re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid)[-150:]
    out.mkdir(parents=True, exist_ok=True)
    for log in sorted(localkube.LOGS.glob("*.log")):
        lines = log.read_text(errors="replace").splitlines()[-3000:]
        (out / log.name).write_text("\n".join(lines) + "\n")

    def kubectl(*args):
        proc = subprocess.run(
            [
                str(localkube.build_dir() / "bin" / "kubectl"),
                f"--kubeconfig={localkube.ADMIN_KUBECONFIG}",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        return proc.stdout + proc.stderr

    (out / "cluster.txt").write_text(
        kubectl("get", "nodes,pods", "-A", "-o", "wide")
        + kubectl("describe", "node", localkube.NODE_NAME)
    )
    if namespace:
        (out / "events.txt").write_text(
            kubectl("-n", namespace, "get", "events", "-o", "wide", "--sort-by=.lastTimestamp")
        )
        (out / "describe.txt").write_text(kubectl("-n", namespace, "describe", "all"))
        pods = kubectl("-n", namespace, "get", "pods", "-o", "name").split()
        for pod in pods:
            if pod.startswith("pod/"):
                (out / f"{pod[4:]}.log").write_text(
                    kubectl(
                        "-n", namespace, "logs", pod, "--all-containers", "--prefix", "--tail=2000"
                    )
                )
    (out / "written-at.txt").write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ\n", time.gmtime()))
    return out
