"""Seconds from the call to 3 workers connected on a node that does not have the image.

The image is pulled from a registry behind a shaped link (localkube's shaped
registry: its own network namespace behind a veth pair, tc-shaped, plus a delay
line), at 100 Mbit/s + 20 ms and at 20 Mbit/s + 20 ms. Our default image is
compared with the conventional one (Debian + ``pip install dask[complete]``, as
``bench/image.py``'s ``conventional()`` builds it with Docker), in alternating
runs (ours, conventional, ours, ...). Before every run both images are removed
from the node's containerd (``localkube.remove_image``), once the kubelet has
removed the last run's containers (layers that a container keeps unpacked are
not pulled again); the bytes that crossed the link are counted on its veth, and a run that pulled less than 90 % of its
image is marked "not cold" in the table and the JSON.

Ours runs as the product runs: ``MinimalCluster(workers=3)`` as the
namespace-only user, in the benchmark's own namespace. minimaldask cannot start
a foreign image: its pods run our entrypoint (arguments in environment
variables), a janitor sidecar and a preStop hook (``python3 -m minimaldask...``)
and TLS with the cluster's own CA, none of which the conventional image has.
So the conventional image runs as plain objects that the benchmark makes, with
the same resources: a scheduler Pod (``dask scheduler``), its Service and a
worker Deployment of 3 (``dask worker tcp://NAME-scheduler:8786``), no TLS.

Both are timed with one yardstick, from the moment of the call (or of the
apply) to the scheduler logging its 3rd "Register worker" (``kubectl logs
--timestamps``; same clock: the node is this machine). For ours, also when
``MinimalCluster(...)`` returned, and how that time splits:
pull (the kubelet's ``Observed pod startup duration`` lines in
/var/lib/localkube/logs/kubelet.log: firstStartedPulling, lastFinishedPulling),
scheduler container running (observedRunningTime), scheduler listening (its
"Scheduler at:" line: the imports are done), workers running, workers connected.

The client cannot resolve the shaped registry's name (only containerd knows it),
so MinimalCluster's image check is skipped (it says so in its log) and the pods
run the tag. Our image is built with its own SOURCE_DATE_EPOCH and repository, so
that its layers differ from the e2e suite's build of the same sources: a layer
that a running pod of someone else keeps unpacked on the node would not be pulled.

On the local Kubernetes, as root (it shapes the link and removes images), from
a fresh checkout:

    python3 tools/localkube/localkube.py up && bash tools/ci/docker-up.sh
    .venv/bin/python bench/cold_start.py      # builds and pushes both images once

Variants of our image (bench/image_variants.py: another compression, another layer
count, made once from the gzip build and pushed beside it) run in turn with
``--variants``, e.g. the comparison in docs/performance.md:

    .venv/bin/python bench/cold_start.py --rates 100mbit --no-conventional \\
        --variants gzip,zstd,gzip-1

The table then splits each pull at the end of its transfer (the link's bytes are
sampled every 50 ms): before, the transfer; after, containerd's unpacking
(decompression and writing the files). An offline table gives each variant's
unpacked size and the CPU seconds to decompress its layers (``--offline-only``
prints just that one).

Prints a table and writes JSON (``--json``, default bench/results/cold_start.json).
The shaped registry is taken down at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import dask
from rich.console import Console
from rich.table import Table

from minimaldask import MinimalCluster, contract, delete_dask_cluster
from minimaldask.image import registry
from minimaldask.spec import default_image_tag

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools" / "localkube"))
sys.path.insert(0, str(ROOT / "tests"))
import localkube  # noqa: E402
from _machine import write_results  # noqa: E402
from _timeline import _rfc3339  # noqa: E402  (the runtime's nanosecond timestamps)
from image import conventional  # noqa: E402  (bench/image.py: the conventional image)
from image_variants import (  # noqa: E402
    Variant,
    decompression,
    go_decompressor,
    make_variant,
    parse_variants,
)
from testutil import source_hash  # noqa: E402  (the e2e image's tag names the same digest)

#: Our image's SOURCE_DATE_EPOCH here: every layer's bytes differ from the e2e build's.
EPOCH = 1700000014
OURS_REPOSITORY = "minimaldask-coldstart"
CONVENTIONAL_REPOSITORY = "minimaldask-coldstart-conventional"
CONVENTIONAL_DOCKER_TAG = "minimaldask-bench:conventional"  # what conventional() builds
LINKS = {"100mbit": "20ms", "20mbit": "20ms"}
WORKERS = 3
#: A run that moved less than this share of its image over the link was not cold.
COLD_SHARE = 0.9
GOAL_S = 15.0  # issue 14: ours at 100 Mbit/s
console = Console(width=170)


def ours_image() -> str:
    """This checkout's image (gzip) under the benchmark's repository, built and pushed unless there.

    Returns the reference to push and read it (127.0.0.1:5000/...); pods name it
    ``pod_name(ref)``.
    """
    tag = f"{default_image_tag()}-{source_hash()}"
    push = f"{localkube.REGISTRY_LISTEN}/{OURS_REPOSITORY}:{tag}"
    try:
        registry.image_digest(push, insecure=True)
    except registry.ImageNotFoundError:
        console.print(f"building {push} (this checkout's image, SOURCE_DATE_EPOCH={EPOCH})")
        subprocess.run(
            [sys.executable, "-m", "minimaldask.image", "build", "--push", push, "--insecure"],
            check=True,
            timeout=1200,
            env={**os.environ, "SOURCE_DATE_EPOCH": str(EPOCH)},
        )
    return push


def pod_name(ref: str) -> str:
    """127.0.0.1:5000/x:1, as the node's containerd knows the local registry: localhost:5000/x:1."""
    return f"{localkube.REGISTRY}/{ref.split('/', 1)[1]}"


def conventional_image(rebuild: bool) -> tuple[str, dict[str, Any] | None]:
    """The conventional image in the local registry; bench/image.py's build when missing."""
    have = subprocess.run(
        ["docker", "image", "inspect", "-f", "{{.Id}}", CONVENTIONAL_DOCKER_TAG],
        capture_output=True,
        text=True,
    )
    built = None
    if rebuild or have.returncode != 0:
        console.print(f"building {CONVENTIONAL_DOCKER_TAG} (bench/image.py's conventional())")
        built = conventional(dask.__version__)
    image_id = subprocess.run(
        ["docker", "image", "inspect", "-f", "{{.Id}}", CONVENTIONAL_DOCKER_TAG],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    tag = f"{dask.__version__}-{image_id.split(':')[-1][:12]}"
    push = f"{localkube.REGISTRY_LISTEN}/{CONVENTIONAL_REPOSITORY}:{tag}"
    subprocess.run(["docker", "tag", CONVENTIONAL_DOCKER_TAG, push], check=True)
    subprocess.run(["docker", "push", "-q", push], check=True, capture_output=True, timeout=900)
    return f"{localkube.REGISTRY}/{CONVENTIONAL_REPOSITORY}:{tag}", built


def pulled_size(ref: str) -> int:
    """Bytes a linux/amd64 node pulls for ``ref``: its manifest's config and layers."""
    repository, _, tag = ref.split("/", 1)[1].rpartition(":")
    accept = ", ".join(
        [
            "application/vnd.oci.image.index.v1+json",
            "application/vnd.docker.distribution.manifest.list.v2+json",
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.docker.distribution.manifest.v2+json",
        ]
    )

    def get(reference: str) -> dict[str, Any]:
        url = f"http://{localkube.REGISTRY_LISTEN}/v2/{repository}/manifests/{reference}"
        request = urllib.request.Request(url, headers={"Accept": accept})
        with localkube.DIRECT.open(request, timeout=30) as r:
            return json.loads(r.read())

    manifest = get(tag)
    if "manifests" in manifest:
        amd64 = [m for m in manifest["manifests"] if m["platform"]["architecture"] == "amd64"]
        manifest = get(amd64[0]["digest"])
    return manifest["config"]["size"] + sum(layer["size"] for layer in manifest["layers"])


def link_bytes() -> int:
    """Bytes the node received over the shaped link so far."""
    path = Path(f"/sys/class/net/{localkube.SHAPED_HOST_IFACE}/statistics/rx_bytes")
    return int(path.read_text())


class LinkSampler(threading.Thread):
    """The link's received bytes every 50 ms, to tell when the transfer of a pull ended.

    The kubelet's pull ends when containerd has fetched and unpacked the layers; the end of
    the transfer splits that time in two: before it the link (and whatever unpacking
    overlapped it), after it the rest of the unpacking.
    """

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[tuple[float, int]] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.samples.append((time.time(), link_bytes()))
            self._stop_event.wait(0.05)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)

    def time_of_share(self, share: float) -> float | None:
        """When ``share`` of the bytes received while sampling had arrived (epoch seconds)."""
        if len(self.samples) < 2:
            return None
        first, last = self.samples[0][1], self.samples[-1][1]
        if last == first:
            return None
        goal = first + share * (last - first)
        return next(t for t, n in self.samples if n >= goal)


def kubectl(*args: str, input: str | None = None, check: bool = True, timeout: float = 60):
    """kubectl as the namespace-only user."""
    return localkube.kubectl(
        *args,
        kubeconfig_path=localkube.USER_KUBECONFIG,
        input=input,
        timeout=timeout,
        check=check,
    )


def pods_of(namespace: str, name: str) -> dict[str, list[str]]:
    """The cluster's pods by role (by name: the namespace is the benchmark's own)."""
    names = kubectl("get", "pods", "-n", namespace, "-o", "name").stdout.split()
    names = [n.split("/", 1)[1] for n in names]
    return {
        role: sorted(n for n in names if n.startswith(f"{name}-{role}"))
        for role in (contract.SCHEDULER, contract.WORKER)
    }


def wait_pods_gone(namespace: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while kubectl("get", "pods", "-n", namespace, "-o", "name").stdout.strip():
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"pods of namespace {namespace} still there after {timeout:.0f}s: "
                f"kubectl get pods -n {namespace}"
            )
        time.sleep(1)


def wait_containers_gone(refs: list[str], timeout: float) -> float:
    """Wait until no container of the node's containerd runs one of ``refs``; the seconds waited.

    The kubelet removes a deleted pod's containers up to a minute later, and the layers
    such a container keeps unpacked are not pulled again: that run would not be cold.
    """
    ctr = ["/usr/bin/ctr", "--address", str(localkube.CONTAINERD_SOCK), "--namespace", "k8s.io"]
    t0 = time.monotonic()
    while True:
        listing = localkube.run([*ctr, "containers", "ls"]).stdout.splitlines()[1:]
        using = [line.split()[0] for line in listing if line.split()[1] in refs]
        if not using:
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(
                f"containers {using} of {refs} still on the node after {timeout:.0f}s "
                "(the kubelet removes a deleted pod's containers within about a minute)"
            )
        time.sleep(2)


def _kubelet_time(value: str) -> float | None:
    """``2026-11-30 07:35:17.517911772 +0000 UTC`` as epoch seconds; None for Go's zero time."""
    if value.startswith("0001-"):
        return None
    day, clock = value.split()[:2]
    whole, _, frac = clock.partition(".")
    stamp = datetime.fromisoformat(f"{day}T{whole}.{(frac or '0')[:6]}+00:00")
    return stamp.timestamp()


STARTUP_LINE = re.compile(
    r'"Observed pod startup duration" pod="(?P<pod>[^"]+)".*?'
    r'firstStartedPulling="(?P<first>[^"]+)" lastFinishedPulling="(?P<last>[^"]+)" '
    r'observedRunningTime="(?P<running>[^"]+)"'
)


def kubelet_startups(namespace: str, pods: list[str], timeout: float = 30) -> dict[str, dict]:
    """Pull start and end, and running time, of each pod, from the kubelet's log."""
    log = localkube.LOGS / "kubelet.log"
    wanted = {f"{namespace}/{p}" for p in pods}
    deadline = time.monotonic() + timeout
    while True:
        found: dict[str, dict] = {}
        for match in STARTUP_LINE.finditer(log.read_text(errors="replace")):
            if match["pod"] in wanted:
                found[match["pod"].split("/", 1)[1]] = {
                    "pull_start": _kubelet_time(match["first"]),
                    "pull_end": _kubelet_time(match["last"]),
                    "running": _kubelet_time(match["running"]),
                }
        if len(found) == len(wanted) or time.monotonic() > deadline:
            return found
        time.sleep(1)


def log_lines(namespace: str, pod: str, container: str) -> list[tuple[float, str]]:
    """The container's log lines with the runtime's timestamps (epoch seconds)."""
    out = kubectl("logs", "-n", namespace, pod, "-c", container, "--timestamps", check=False).stdout
    lines = []
    for line in out.splitlines():
        stamp, _, text = line.partition(" ")
        try:
            lines.append((_rfc3339(stamp), text))
        except ValueError:
            continue
    return lines


def registered(lines: list[tuple[float, str]]) -> list[float]:
    return [t for t, text in lines if "Register worker" in text]


def timeline(namespace: str, name: str, t0: float) -> dict[str, float | None]:
    """Seconds after the call at which each step of the start happened."""
    pods = pods_of(namespace, name)
    scheduler = pods[contract.SCHEDULER][0]
    startups = kubelet_startups(namespace, [scheduler, *pods[contract.WORKER]])
    lines = log_lines(namespace, scheduler, contract.SCHEDULER)

    def rel(t: float | None) -> float | None:
        return None if t is None else round(t - t0, 2)

    pulls = [s for s in startups.values() if s["pull_start"] is not None]
    workers = [startups[p]["running"] for p in pods[contract.WORKER] if p in startups]
    listening = [t for t, text in lines if "Scheduler at:" in text]
    joined = registered(lines)
    return {
        "pull_start": rel(min((s["pull_start"] for s in pulls), default=None)),
        "pull_end": rel(max((s["pull_end"] for s in pulls), default=None)),
        "scheduler_running": rel(startups.get(scheduler, {}).get("running")),
        "scheduler_listening": rel(listening[0] if listening else None),
        "workers_running": rel(max(workers) if len(workers) == WORKERS else None),
        "workers_connected": rel(joined[WORKERS - 1] if len(joined) >= WORKERS else None),
    }


def run_ours(args: argparse.Namespace, namespace: str, ref: str, name: str) -> dict[str, Any]:
    t0 = time.time()
    cluster = MinimalCluster(
        name=name,
        namespace=namespace,
        workers=WORKERS,
        image=ref,
        image_pull_policy="IfNotPresent",
        resources={"cpu": args.cpu, "memory": args.memory},
        scheduler_resources={"cpu": args.scheduler_cpu, "memory": args.memory},
        startup_timeout=args.timeout,
        shutdown_on_close=False,
        quiet=True,
    )
    returned = time.time() - t0
    try:
        connected = len(cluster.scheduler_info["workers"])
        steps = timeline(namespace, name, t0)
    finally:
        cluster.close()
        delete_dask_cluster(namespace=namespace, name=name)
    return {"returned": round(returned, 2), "connected": connected, "timeline": steps, "t0": t0}


def conventional_objects(args: argparse.Namespace, name: str, ref: str) -> dict[str, Any]:
    """A scheduler Pod, its Service and a worker Deployment, with our pods' resources."""

    def container(role: str, cpu: str, arguments: list[str]) -> dict[str, Any]:
        return {
            "name": role,
            "image": ref,
            "imagePullPolicy": "IfNotPresent",
            "args": arguments,
            "resources": {
                "requests": {"cpu": cpu, "memory": args.memory},
                "limits": {"memory": args.memory},
            },
        }

    labels = {"app": name, "role": contract.SCHEDULER}
    scheduler = container(contract.SCHEDULER, args.scheduler_cpu, ["scheduler"])
    worker_args = ["worker", f"tcp://{name}-scheduler:8786", "--nthreads", "1"]
    worker_args += ["--memory-limit", args.memory.replace("Mi", "MiB").replace("Gi", "GiB")]
    worker = container(contract.WORKER, args.cpu, worker_args)
    return {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": f"{name}-scheduler", "labels": labels},
                "spec": {"containers": [scheduler], "terminationGracePeriodSeconds": 0},
            },
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": f"{name}-scheduler"},
                "spec": {"selector": labels, "ports": [{"name": "comm", "port": 8786}]},
            },
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": f"{name}-worker"},
                "spec": {
                    "replicas": WORKERS,
                    "selector": {"matchLabels": {"app": name, "role": contract.WORKER}},
                    "template": {
                        "metadata": {"labels": {"app": name, "role": contract.WORKER}},
                        "spec": {"containers": [worker], "terminationGracePeriodSeconds": 0},
                    },
                },
            },
        ],
    }


def run_conventional(
    args: argparse.Namespace, namespace: str, ref: str, name: str
) -> dict[str, Any]:
    objects = json.dumps(conventional_objects(args, name, ref))
    t0 = time.time()
    kubectl("apply", "-n", namespace, "-f", "-", input=objects)
    try:
        deadline = time.monotonic() + args.timeout
        joined: list[float] = []
        while len(joined) < WORKERS:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{name}: {len(joined)} of {WORKERS} workers registered after "
                    f"{args.timeout:.0f}s: kubectl get pods,events -n {namespace}"
                )
            time.sleep(0.5)
            joined = registered(log_lines(namespace, f"{name}-scheduler", contract.SCHEDULER))
        returned = time.time() - t0
        steps = timeline(namespace, name, t0)
    finally:
        kubectl("delete", "-n", namespace, "-f", "-", "--wait=false", input=objects)
    return {
        "returned": None,
        "apply_to_connected": round(returned, 2),
        "timeline": steps,
        "t0": t0,
    }


def one_run(
    args: argparse.Namespace, namespace: str, label: str, refs: dict[str, str], name: str
) -> dict[str, Any]:
    """Every image off the node, then one start of ``label``; what crossed the link, and when."""
    waited = wait_containers_gone(list(refs.values()), args.timeout)
    if waited > 1:
        console.print(f"  waited {waited:.0f}s for the kubelet to remove the last run's containers")
    for ref in refs.values():
        localkube.remove_image(ref)
    before = link_bytes()
    load = os.getloadavg()[0]  # the machine is shared: a slow run is told apart by this
    sampler = LinkSampler()
    sampler.start()
    try:
        start = run_conventional if label == CONVENTIONAL else run_ours
        run = start(args, namespace, refs[label], name)
        wait_pods_gone(namespace, args.timeout)
    finally:
        sampler.stop()
    run["link_bytes"] = link_bytes() - before
    transfer_end = sampler.time_of_share(0.99)
    run["timeline"]["transfer_end"] = (
        None if transfer_end is None else round(transfer_end - run.pop("t0"), 2)
    )
    return {"image": label, "name": name, "load_average": load, **run}


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 2) if present else None


def _span(run: dict, start: str, end: str) -> float | None:
    a, b = run["timeline"].get(start), run["timeline"].get(end)
    return None if a is None or b is None else b - a


def summarise(runs: list[dict], sizes: dict[str, int]) -> dict[str, Any]:
    """Medians per link and image (cold runs only), and the ratios to our gzip image."""
    out: dict[str, Any] = {}
    for rate in dict.fromkeys(r["rate"] for r in runs):
        row: dict[str, Any] = {}
        for label in dict.fromkeys(r["image"] for r in runs if r["rate"] == rate):
            of_label = [r for r in runs if r["rate"] == rate and r["image"] == label]
            mine = [r for r in of_label if r["cold"]]
            steps = {k: median([r["timeline"].get(k) for r in mine]) for k in TIMELINE}
            row[label] = {
                "runs": len(mine),
                "not_cold": len(of_label) - len(mine),
                "workers_connected_s": steps["workers_connected"],
                "returned_s": median([r["returned"] for r in mine]),
                "pull_s": median([_span(r, "pull_start", "pull_end") for r in mine]),
                "transfer_s": median([_span(r, "pull_start", "transfer_end") for r in mine]),
                "unpack_s": median([_span(r, "transfer_end", "pull_end") for r in mine]),
                "pull_to_running_s": median(
                    [_span(r, "pull_end", "scheduler_running") for r in mine]
                ),
                "link_mb": median([r["link_bytes"] / 1e6 for r in mine]),
                "image_mb": round(sizes[label] / 1e6, 1),
                "timeline": steps,
            }
        base = row.get(GZIP) or row.get("ours")  # "ours": a run before --variants
        for r in row.values():
            for key in ("workers_connected_s", "pull_s", "unpack_s"):
                a, b = r[key], base[key] if base else None
                r[f"{key}_to_gzip"] = round(a / b, 2) if a and b else None
        conv = row.get(CONVENTIONAL, {}).get("workers_connected_s")
        ours = base["workers_connected_s"] if base else None
        row["ratio_conventional_to_ours"] = round(conv / ours, 2) if conv and ours else None
        out[rate] = row
    return out


CONVENTIONAL = "conventional"
GZIP = "ours-gzip"  # the image as the builder makes it: the yardstick of the variants

TIMELINE = {
    "pull_start": "pull started",
    "transfer_end": "link transfer done (99 % of the bytes)",
    "pull_end": "pull finished (unpacked)",
    "scheduler_running": "scheduler container running",
    "scheduler_listening": "scheduler listening (imports done)",
    "workers_running": "3 worker containers running",
    "workers_connected": "3 workers connected (scheduler's log)",
}


def fmt(value: float | None, unit: str = "") -> str:
    return "-" if value is None else f"{value:.1f}{unit}"


def fmt2(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _labels(row: dict[str, Any]) -> list[str]:
    return [k for k in row if isinstance(row[k], dict)]


def print_tables(summary: dict[str, Any], offline: dict[str, Any] | None = None) -> None:
    table = Table(title=f"Cold start to {WORKERS} workers over a shaped link (median, seconds)")
    table.add_column("link", no_wrap=True)
    table.add_column("image", no_wrap=True)
    for col in (
        "image MB",
        "link MB",
        "pull",
        "transfer",
        "unpack",
        "pull end to running",
        "3 connected",
        "returned",
        "pull / gzip",
        "connected / gzip",
        "conv. / ours",
        "cold runs",
    ):
        table.add_column(col, justify="right")
    for rate, row in summary.items():
        for label in _labels(row):
            r = row[label]
            table.add_row(
                f"{rate}+{LINKS[rate]}",
                label,
                fmt(r["image_mb"]),
                fmt(r["link_mb"]),
                fmt(r["pull_s"]),
                fmt(r.get("transfer_s")),
                fmt(r.get("unpack_s")),
                fmt(r.get("pull_to_running_s")),
                fmt(r["workers_connected_s"]),
                fmt(r["returned_s"]),
                "" if label == CONVENTIONAL else fmt2(r.get("pull_s_to_gzip")),
                "" if label == CONVENTIONAL else fmt2(r.get("workers_connected_s_to_gzip")),
                fmt(row["ratio_conventional_to_ours"], "x") if label == CONVENTIONAL else "",
                f"{r['runs']}" + (f" ({r['not_cold']} not cold)" if r["not_cold"] else ""),
            )
    console.print(table)
    split = Table(title="Where a cold start goes: seconds after the call (median)")
    split.add_column("step")
    columns = [(rate, label) for rate in summary for label in _labels(summary[rate])]
    for rate, label in columns:
        split.add_column(f"{label} {rate}", justify="right")
    for key, label in TIMELINE.items():
        split.add_row(label, *(fmt(summary[r][w]["timeline"].get(key)) for r, w in columns))
    split.add_row(
        "MinimalCluster(...) returned", *(fmt(summary[r][w]["returned_s"]) for r, w in columns)
    )
    console.print(split)
    if offline:
        cpu = Table(title="Offline: layers decompressed on this machine (CPU seconds, median)")
        for col in ("image", "layers", "compressed MB", "unpacked MB", "Python", "CLI", "Go"):
            cpu.add_column(col, justify="right")
        for label, o in offline.items():
            cpu.add_row(
                label,
                str(o["layers"]),
                fmt(o["compressed_bytes"] / 1e6),
                fmt(o["unpacked_bytes"] / 1e6),
                f"{o['decompress_cpu_s']:.2f}",
                "-" if o["decompress_cli_cpu_s"] is None else f"{o['decompress_cli_cpu_s']:.2f}",
                "-" if o.get("decompress_go_cpu_s") is None else f"{o['decompress_go_cpu_s']:.2f}",
            )
        console.print(cpu)
    row = summary.get("100mbit", {})
    ours = (row.get(GZIP) or row.get("ours") or {}).get("returned_s")
    if ours is not None:
        verdict = "met" if ours <= GOAL_S else "NOT met"
        console.print(
            f"goal (ours <= {GOAL_S:g} s at 100 Mbit/s): median {ours:.1f} s, {verdict} "
            "(a median of a noisy machine: see each run's time and load average above)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--namespace", default="bench-coldstart", help="made for the run and deleted after it"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per image per link")
    parser.add_argument("--rates", default=",".join(LINKS), help=f"among {', '.join(LINKS)}")
    parser.add_argument(
        "--variants",
        default="gzip",
        help="variants of our image, run in turn: gzip (as built), zstd, and COMPRESSION-N"
        " for N layers of about equal size (e.g. gzip,zstd,zstd-1)",
    )
    parser.add_argument(
        "--no-conventional",
        action="store_true",
        help="skip the conventional image (its runs take most of the time)",
    )
    parser.add_argument("--cpu", default="100m", help="cpu request of each worker")
    parser.add_argument("--scheduler-cpu", default="100m", help="cpu request of the scheduler")
    parser.add_argument("--memory", default="384Mi", help="memory of each pod")
    parser.add_argument("--timeout", type=float, default=600, help="deadline of one start")
    parser.add_argument("--rebuild-conventional", action="store_true")
    parser.add_argument(
        "--offline-repeat", type=int, default=3, help="repeats of the offline decompression"
    )
    parser.add_argument(
        "--offline-only",
        action="store_true",
        help="only make the variants and print the offline decompression table (no pods)",
    )
    parser.add_argument("--json", default="bench/results/cold_start.json")
    parser.add_argument(
        "--show",
        metavar="JSON[,JSON...]",
        help="print the tables of an earlier run; of several, the medians of all their runs",
    )
    args = parser.parse_args()
    if args.show:
        shown = [json.loads(Path(p).read_text()) for p in args.show.split(",")]
        if len(shown) == 1:
            print_tables(shown[0]["summary"], shown[0].get("offline"))
            return
        runs = [run for s in shown for run in s["runs"]]
        sizes = {k: v for s in shown for k, v in s["pulled_bytes"].items()}
        offline = {k: v for s in shown for k, v in (s.get("offline") or {}).items()}
        print_tables(summarise(runs, sizes), offline)
        console.print(f"{len(runs)} runs of {len(shown)} files: {args.show}")
        return
    rates = args.rates.split(",")
    unknown = [r for r in rates if r not in LINKS]
    if unknown:
        sys.exit(f"--rates {args.rates}: unknown {unknown}; give some of {', '.join(LINKS)}")
    try:
        variants: list[Variant] = parse_variants(args.variants)
    except ValueError as e:
        sys.exit(f"--variants: {e}")
    if os.geteuid() != 0:
        sys.exit("run this as root: it shapes a link and removes images from the node")
    if not localkube.is_up():
        sys.exit("the local Kubernetes is not up: python3 tools/localkube/localkube.py up")
    base = ours_image()
    pushed = {}
    for variant in variants:
        if variant.name != "gzip":
            console.print(f"variant {variant.name}: made from {base} (pushed once)")
        pushed[f"ours-{variant.name}"] = make_variant(base, variant)
    console.print("decompressing each variant's layers offline ...")
    go = go_decompressor()
    offline = {label: decompression(ref, args.offline_repeat, go) for label, ref in pushed.items()}
    if args.offline_only:
        print_tables({}, offline)
        write_results(Path(args.json), {"images": pushed, "offline": offline})
        return
    refs = {label: pod_name(ref) for label, ref in pushed.items()}
    built = None
    if args.no_conventional:
        console.print("the conventional image is skipped (--no-conventional)")
    else:
        refs[CONVENTIONAL], built = conventional_image(args.rebuild_conventional)
    sizes = {label: pulled_size(ref) for label, ref in refs.items()}
    console.print(
        "images: "
        + ", ".join(f"{w} {r} ({sizes[w] / 1e6:.1f} MB to pull)" for w, r in refs.items())
    )
    os.environ["KUBECONFIG"] = str(localkube.USER_KUBECONFIG)
    localkube.apply(localkube.namespace_user_objects(args.namespace))
    run_id = secrets.token_hex(3)
    runs: list[dict] = []
    pulled: set[str] = set()
    try:
        for rate in rates:
            shaped = localkube.shaped_registry_up(rate=rate, delay=LINKS[rate])
            shaped_refs = {w: shaped.reference(r) for w, r in refs.items()}
            pulled.update(shaped_refs.values())
            for i in range(args.repeat):
                for n, label in enumerate(refs):
                    name = f"cs-{run_id}-{rate[:-4]}-{n}{i}"
                    run = one_run(args, args.namespace, label, shaped_refs, name)
                    run.update(rate=rate, cold=run["link_bytes"] >= COLD_SHARE * sizes[label])
                    runs.append(run)
                    tl = run["timeline"]
                    console.print(
                        f"{rate} {label} run {i + 1}: 3 connected at "
                        f"{fmt(tl['workers_connected'])} s, returned "
                        f"{fmt(run['returned'])} s, pull {fmt(tl['pull_start'])}"
                        f"..{fmt(tl['pull_end'])} s (transfer done {fmt(tl['transfer_end'])}), "
                        f"{run['link_bytes'] / 1e6:.1f} MB over the link, "
                        f"load average {run['load_average']:.0f}"
                        + ("" if run["cold"] else " (NOT COLD: the image was partly on the node)")
                    )
    finally:
        localkube.shaped_registry_down()
        for ref in pulled:
            localkube.remove_image(ref)
        localkube.kubectl("delete", "namespace", args.namespace, "--timeout=180s", timeout=200)
    summary = summarise(runs, sizes)
    print_tables(summary, offline)
    out = Path(args.json)
    write_results(
        out,
        {
            "images": refs,
            "variants": [v.name for v in variants],
            "pulled_bytes": sizes,
            "offline": offline,
            "conventional_build": built,
            "links": {r: LINKS[r] for r in rates},
            "settings": {k: v for k, v in vars(args).items() if k != "json"},
            "summary": summary,
            "runs": runs,
        },
    )


if __name__ == "__main__":
    main()
