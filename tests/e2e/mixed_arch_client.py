"""The client of test_mixed_arch.py, run by a Python 3.13 interpreter: the article's example on
a cluster with amd64, arm64 and armv7 workers.

    python mixed_arch_client.py NAMESPACE NAME ARM64_IMAGE ARMV7_IMAGE

The cluster is started as configured (DASK_MINIMALDASK__* variables: an amd64 image) with one
worker; then one worker Deployment per foreign platform is added, a copy of the cluster's
worker Deployment with the platform's single-manifest image, owned by the cluster's root so
that deleting the cluster deletes it. Prints one JSON line: what ran where, and the timings.
"""

from __future__ import annotations

import json
import logging
import platform
import runpy
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from distributed import Client, get_task_stream

from minimaldask import contract, delete_dask_cluster, start_dask_cluster

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "image"))
from dockerutil import QEMU_ARM64_CPU  # noqa: E402  (the image tests' qemu CPU, and why)

#: What `platform.machine()` says on a worker of each platform.
MACHINES = {"amd64": "x86_64", "arm64": "aarch64", "armv7": "armv7l"}
#: Seconds an emulated worker may take to start. Under qemu-user the nanny and its worker
#: process each import distributed for over a minute (70 s for arm64 measured with the machine's
#: load at 15), and the product's startup probe (300 s) restarted an arm64 worker twice at that
#: load: the foreign workers get STARTUP_BUDGET, and the client waits as long for them.
STARTUP_BUDGET = 900
CONNECT_DEADLINE = STARTUP_BUDGET + 60
#: The CPU request of an emulated worker: a weight when the node's CPUs are busy. Its imports
#: take 20 s of CPU (arm64; 10 s armv7), and with the suite's 50m, at a load of 30, the arm64
#: nanny got 8% of a CPU and had not finished them after 4 minutes.
EMULATED_CPU = "200m"
#: Seconds the article's example may take on the three workers (about 20 s measured).
COMPUTE_DEADLINE = 300


def kubectl(*args: str, input: str | None = None) -> str:
    """kubectl in the namespace as the user of KUBECONFIG; stdout."""
    run = subprocess.run(
        ["kubectl", *args], input=input, capture_output=True, text=True, timeout=60
    )
    if run.returncode:
        raise RuntimeError(f"kubectl {' '.join(args)}: {run.stderr.strip()}")
    return run.stdout


def foreign_worker(worker: dict, root: dict, arch: str, image: str) -> dict:
    """A copy of the cluster's worker Deployment that runs ``image`` (one platform's manifest).

    Its component label is ``worker-ARCH``, so that the cluster's own worker Deployment,
    whose selector names ``worker``, neither counts nor scales its pods; the instance label
    stays: the NetworkPolicy lets it reach the scheduler and the delete waits for it.
    """
    component = f"{contract.WORKER}-{arch}"
    meta = worker["metadata"]
    labels = {**meta["labels"], contract.LABEL_COMPONENT: component}
    template = json.loads(json.dumps(worker["spec"]["template"]))
    template["metadata"]["labels"][contract.LABEL_COMPONENT] = component
    (container,) = [c for c in template["spec"]["containers"] if c["name"] == contract.WORKER]
    container["image"] = image
    probe = container["startupProbe"]
    probe["failureThreshold"] = STARTUP_BUDGET // probe["periodSeconds"]
    container["resources"]["requests"]["cpu"] = EMULATED_CPU
    if arch == "arm64":  # qemu reads it from the emulated process's environment
        container["env"].append({"name": "QEMU_CPU", "value": QEMU_ARM64_CPU})
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": f"{meta['name']}-{arch}",
            "namespace": meta["namespace"],
            "labels": labels,
            "ownerReferences": [
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "name": root["metadata"]["name"],
                    "uid": root["metadata"]["uid"],
                }
            ],
        },
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": template["metadata"]["labels"]},
            "template": template,
        },
    }


def package_versions() -> dict[str, str]:
    """Versions of the packages a task depends on, where this runs."""
    from importlib.metadata import version

    return {p: version(p) for p in ("dask", "distributed", "numpy", "cloudpickle", "msgpack")}


def started_at(namespace: str, name: str, arch: str) -> float:
    """When the container of the ``arch`` worker pod started (epoch seconds, whole seconds)."""
    selector = contract.label_selector(name, f"{contract.WORKER}-{arch}")
    listed = kubectl("get", "pods", "-n", namespace, "-o", "json", "-l", selector)
    (pod,) = json.loads(listed)["items"]
    stamp = pod["status"]["containerStatuses"][0]["state"]["running"]["startedAt"]
    return time.mktime(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone


def print_logs(namespace: str, name: str) -> None:
    """The logs of every container of the cluster, on stderr: why a run failed."""
    pods = kubectl(
        "get", "pods", "-n", namespace, "-o", "name", "-l", contract.label_selector(name)
    )
    for pod in pods.split():
        logs = subprocess.run(
            ["kubectl", "logs", "-n", namespace, pod, "--all-containers", "--timestamps"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        print(f"---- {pod}\n{logs.stdout}{logs.stderr}", file=sys.stderr)


def main(namespace: str, name: str, images: dict[str, str], out: dict) -> None:
    """Run the example on three platforms; fill ``out`` with what ran where and the timings."""
    article = runpy.run_path(str(ROOT / "examples" / "article.py"))
    out.update(python=sys.version.split()[0], connect={}, container_to_connect={})
    start = time.monotonic()
    cluster = start_dask_cluster(namespace=namespace, name=name, workers=1)
    out["cluster_start"] = round(time.monotonic() - start, 1)
    try:
        with Client(cluster) as client:
            worker = json.loads(
                kubectl(
                    "get", "deployment", contract.worker_name(name), "-n", namespace, "-o", "json"
                )
            )
            root = json.loads(
                kubectl("get", "configmap", contract.root_name(name), "-n", namespace, "-o", "json")
            )
            made = {}
            for arch, image in images.items():
                kubectl(
                    "create", "-f", "-", input=json.dumps(foreign_worker(worker, root, arch, image))
                )
                made[arch] = time.monotonic()
            # Connected: registered with the scheduler, under its pod's name. (Asking the
            # workers with client.run meanwhile would race a registration in progress.)
            deadline = time.monotonic() + CONNECT_DEADLINE
            while len(out["connect"]) < len(made):
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"workers {sorted(set(made) - set(out['connect']))} not connected after"
                        f" {CONNECT_DEADLINE}s (the CONNECT_DEADLINE)"
                    )
                names = [w["name"] for w in client.scheduler_info(n_workers=-1)["workers"].values()]
                for arch, made_at in made.items():
                    prefix = f"{contract.worker_name(name)}-{arch}-"
                    if arch not in out["connect"] and any(n.startswith(prefix) for n in names):
                        out["connect"][arch] = round(time.monotonic() - made_at, 1)
                        out["container_to_connect"][arch] = round(
                            time.time() - started_at(namespace, name, arch), 1
                        )
                time.sleep(0.5)
            machines = client.run(platform.machine)
            out["machines"] = machines
            out["pythons"] = client.run(lambda: sys.version.split()[0])
            out["versions"] = client.run(package_versions)

            z = article["computation"]()
            start = time.monotonic()
            with get_task_stream(client) as stream:
                result = client.compute(z).result(timeout=COMPUTE_DEADLINE)
            out["compute"] = round(time.monotonic() - start, 1)
            tasks: dict[str, int] = {}
            for task in stream.data:
                machine = machines[task["worker"]]
                tasks[machine] = tasks.get(machine, 0) + 1
            out["tasks"] = tasks
            expected = z.compute(scheduler="threads")
            out["shape"] = list(result.shape)
            out["max_abs_error"] = float(np.max(np.abs(result - expected)))
            out["mean"] = float(result.mean())
    except BaseException:
        print_logs(namespace, name)
        raise
    finally:
        start = time.monotonic()
        delete_dask_cluster(namespace=namespace, name=name)
        out["delete"] = round(time.monotonic() - start, 1)
        cluster.close()


if __name__ == "__main__":
    # The port-forward says on stderr why each forwarded connection ended (shown when the
    # test fails: a connection cut mid-call was once this test's failure).
    logging.basicConfig(stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("minimaldask.kubernetes").setLevel(logging.DEBUG)
    namespace, name, arm64, armv7 = sys.argv[1:]
    measured: dict = {}
    try:
        main(namespace, name, {"arm64": arm64, "armv7": armv7}, measured)
    finally:  # what was measured before a failure, too
        print(json.dumps(measured))
