"""The cluster subcommands of ``minimaldask``: up, down, list, status, scale, logs, dashboard, manifests.

:mod:`minimaldask.cli` adds them with :func:`register`. The flags that shape a
cluster come from the options' declarations (:mod:`minimaldask.options`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from minimaldask import config, contract, runner

console = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _cluster_options(p: argparse.ArgumentParser) -> None:
    """Options that shape a cluster (those of ``up`` and ``manifests``)."""
    from minimaldask.options import add_flags
    from minimaldask.spec import OPTIONS

    add_flags(p, [o for o in OPTIONS if o.name not in ("name", "namespace")])
    p.add_argument("--cpu", help="cpu of each worker, e.g. 1 or 500m (sets resources)")
    p.add_argument("--memory", help="memory of each worker, e.g. 2Gi (sets resources)")


def _name_options(p: argparse.ArgumentParser, positional: bool = True) -> None:
    """The cluster's name (positional) and namespace, as their options declare them."""
    from minimaldask.options import add_flags
    from minimaldask.spec import OPTIONS

    wanted = ("name", "namespace") if positional else ("namespace",)
    add_flags(p, [o for o in OPTIONS if o.name in wanted])


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """MinimalCluster options from the command line; unset ones take the configured default."""
    from minimaldask.options import from_flags
    from minimaldask.spec import OPTIONS

    options: dict[str, Any] = {"backend": "kubernetes", **from_flags(args, OPTIONS)}
    if getattr(args, "cpu", None) or getattr(args, "memory", None):
        options["resources"] = {
            "cpu": args.cpu or config.get("worker.cpu"),
            "memory": args.memory or config.get("worker.memory"),
        }
    return options


async def _with_progress(start: Any, progress: Callable[[], str]) -> Any:
    """Await ``start`` while a live line shows ``progress()``."""
    task = asyncio.ensure_future(start)
    started = time.monotonic()
    with console.status("Starting") as status:
        while not task.done():
            status.update(
                f"{progress() or 'Starting'}  [dim]{time.monotonic() - started:.0f}s[/dim]"
            )
            await asyncio.wait({task}, timeout=0.2)
    return task.result()


def up(args: argparse.Namespace) -> int:
    """Start a cluster (or update the running one) and leave it running."""
    from minimaldask.cluster import MinimalCluster

    async def run() -> int:
        cluster = MinimalCluster(
            asynchronous=True, quiet=True, shutdown_on_close=False, **_options(args)
        )
        backend = cluster._backend
        await _with_progress(cluster._start(), lambda: getattr(backend, "progress", ""))
        spec = cluster.spec
        console.print(f"Cluster [bold]{spec.name}[/bold] is running in namespace {spec.namespace}")
        console.print(f"  workers:   {len(cluster.scheduler_info['workers'])}")
        console.print(
            f"  in-cluster address: tcp://{contract.scheduler_name(spec.name)}.{spec.namespace}"
            f".svc:{spec.port}"
        )
        console.print(
            f"  connect:   MinimalCluster.from_name({spec.name!r}, namespace={spec.namespace!r})"
        )
        console.print(f"  delete:    minimaldask down {spec.name} -n {spec.namespace}")
        await cluster._close()
        return 0

    return runner.run(run())


def down(args: argparse.Namespace) -> int:
    """Delete a cluster and wait until every object of it is gone."""
    from minimaldask.api import delete_dask_cluster

    name = args.name or config.get("name")
    namespace = args.namespace or config.get("namespace")
    with console.status(f"Deleting {name} in {namespace}"):
        existed = delete_dask_cluster(
            namespace=namespace, name=name, backend="kubernetes", timeout=args.timeout
        )
    console.print(
        f"Deleted cluster {name} in {namespace}"
        if existed
        else f"No cluster {name} in {namespace}: nothing to delete"
    )
    return 0


def list_(args: argparse.Namespace) -> int:
    """List the clusters of a namespace."""
    from minimaldask.api import list_clusters

    namespace = args.namespace or config.get("namespace")
    clusters = list_clusters(namespace=namespace, backend="kubernetes")
    if args.json:
        console.print_json(json.dumps([c.__dict__ for c in clusters]))
        return 0
    table = Table(title=f"minimaldask clusters in {namespace}")
    for column in ("name", "workers (ready/asked)", "scheduler", "age", "idle", "ends"):
        table.add_column(column)
    for c in clusters:
        age = _duration(time.time() - c.created) if c.created else "?"
        ready = "ready" if c.details.get("scheduler_ready") else "not ready"
        table.add_row(
            c.name,
            f"{c.workers}/{c.requested_workers}",
            f"{c.scheduler_address} ({ready})",
            age,
            _idle(c.details),
            _ends(c.details),
        )
    console.print(table)
    return 0


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _idle(details: dict[str, Any]) -> str:
    """How long the cluster has had nothing to do, as its janitor last reported."""
    report = details.get("janitor") or {}
    if not report:
        return "?"
    if not report.get("idle_since"):
        return "busy"
    return _duration(time.time() - report["idle_since"])


def _ends(details: dict[str, Any]) -> str:
    """The timeouts that will end the cluster; adaptive bounds too."""
    parts = [
        f"{label} {_duration(details[key])}"
        for key, label in (
            ("idle_timeout", "idle"),
            ("no_client_timeout", "no client"),
            ("max_lifetime", "age"),
        )
        if details.get(key)
    ]
    if "adapt" in details:
        parts.append("adapt {}-{}".format(*details["adapt"]))
    return ", ".join(parts) or "never (no timeout)"


def status(args: argparse.Namespace) -> int:
    """Show a cluster's pods and what its scheduler reports."""
    from minimaldask.exceptions import ClusterNotFoundError
    from minimaldask.kubernetes import api, status
    from minimaldask.kubernetes.objects import POD

    name = args.name or config.get("name")
    namespace = args.namespace or config.get("namespace")

    async def pods() -> list[dict[str, Any]]:
        client = await api.connect(name, namespace)
        return await api.list_objects(client, POD, namespace, contract.label_selector(name))

    found = runner.run(pods())
    if not found:
        raise ClusterNotFoundError(f"no cluster named {name!r} in namespace {namespace!r}")
    table = Table(title=f"cluster {name} in {namespace}")
    for column in ("pod", "component", "state", "ready", "restarts", "node"):
        table.add_column(column)
    for p in sorted(found, key=lambda p: p["metadata"]["name"]):
        restarts = sum(
            c.get("restartCount", 0) for c in (p.get("status") or {}).get("containerStatuses") or []
        )
        table.add_row(
            p["metadata"]["name"],
            p["metadata"]["labels"].get(contract.LABEL_COMPONENT, "?"),
            status.pod_phase(p),
            "yes" if status.pod_ready(p) else "no",
            str(restarts),
            p.get("spec", {}).get("nodeName", ""),
        )
    console.print(table)
    return 0


def scale(args: argparse.Namespace) -> int:
    """Scale a running cluster; scaling down retires workers first (their data moves)."""
    from minimaldask.cluster import MinimalCluster

    with MinimalCluster.from_name(args.name, namespace=args.namespace, quiet=True) as cluster:
        with console.status(f"Scaling {args.name} to {args.workers} workers"):
            cluster.scale(args.workers)
            cluster.sync(cluster._await_workers, args.workers, args.timeout)
        console.print(f"Cluster {args.name} has {args.workers} workers")
    return 0


def logs(args: argparse.Namespace) -> int:
    """Print the logs of every pod of a cluster."""
    from minimaldask.kubernetes.backend import KubernetesBackend
    from minimaldask.spec import ClusterSpec

    spec = ClusterSpec.from_options(name=args.name, namespace=args.namespace, backend="kubernetes")
    backend = KubernetesBackend(spec, log=lambda _: None)
    for title, text in runner.run(backend.logs()).items():
        console.rule(title)
        console.out(text.rstrip(), highlight=False)
    return 0


def dashboard(args: argparse.Namespace) -> int:
    """Forward the dashboard to this machine and print its link, until Ctrl-C."""
    from minimaldask.cluster import MinimalCluster

    with MinimalCluster.from_name(args.name, namespace=args.namespace, quiet=True) as cluster:
        console.print(f"Dashboard of {cluster.spec.name}: {cluster.dashboard_link}")
        console.print("Press Ctrl-C to stop forwarding.")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


def manifests(args: argparse.Namespace) -> int:
    """Print the YAML that ``up`` applies; ``| kubectl apply -f -`` makes the same cluster."""
    from minimaldask.kubernetes.manifests import (
        apply_order,
        check_patch,
        cluster_objects,
        scheduler_hosts,
    )
    from minimaldask.spec import ClusterSpec
    from minimaldask.tls import Credentials

    spec = ClusterSpec.from_options(**_options(args))
    check_patch(spec)
    credentials = None
    if spec.uses_tls:
        credentials = Credentials.make(spec.name, scheduler_hosts(spec))
        err.print(
            "The output holds a new CA and keys for this cluster (Secret "
            f"{spec.name}-tls): keep it private (--no-tls turns TLS off)"
        )
    objects = cluster_objects(spec, credentials=credentials)
    sys.stdout.write(render_yaml(apply_order(objects, spec)))
    return 0


def render_yaml(objects: list[dict[str, Any]]) -> str:
    """Objects as one multi-document YAML stream."""
    return yaml.safe_dump_all(objects, sort_keys=False, default_flow_style=False)


def default_manifests() -> str:
    """deploy/kubernetes/dask.yaml: the default cluster, with a header saying how to use it."""
    from minimaldask.kubernetes.manifests import cluster_objects, without_namespace
    from minimaldask.spec import ClusterSpec

    # No TLS here: a file in a repository must not hold a CA's keys.
    spec = ClusterSpec.from_options(backend="kubernetes", tls=False)
    header = (
        "# A minimaldask cluster named 'dask' with the default options but TLS, generated by\n"
        "# `minimaldask manifests --no-tls` (regenerate: python -m minimaldask.cli.kube).\n"
        "# Its NetworkPolicy lets only the cluster's own pods reach it; `minimaldask\n"
        "# manifests` prints the same with TLS and a fresh CA of its own (keep that private).\n"
        "# kubectl apply -n NAMESPACE -f dask.yaml; remove it with\n"
        "# kubectl delete configmap,deployment,service,networkpolicy -n NAMESPACE \\\n"
        "#   -l app.kubernetes.io/instance=dask\n"
        "# or `minimaldask down dask -n NAMESPACE`.\n"
        "# Without the janitor's ServiceAccount and Role: whoever applies this file owns\n"
        "# the cluster's lifetime (a janitor deleting what GitOps re-creates would fight it).\n"
        "# `minimaldask manifests -n NAMESPACE` prints them too, for self-deletion.\n"
    )
    objects = cluster_objects(spec, janitor=False)
    return header + render_yaml([without_namespace(o) for o in objects])


def register(subparsers: Any) -> None:
    """Add the Kubernetes subcommands to the ``minimaldask`` parser."""
    p = subparsers.add_parser(
        "up", help="start a cluster and leave it running", description=up.__doc__
    )
    _name_options(p)
    _cluster_options(p)
    p.set_defaults(func=up)

    p = subparsers.add_parser("down", help="delete a cluster", description=down.__doc__)
    _name_options(p)
    p.add_argument("--timeout", type=float, default=120, help="seconds to wait (default: 120)")
    p.set_defaults(func=down)

    p = subparsers.add_parser(
        "list", help="list the clusters of a namespace", description=list_.__doc__
    )
    _name_options(p, positional=False)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=list_)

    p = subparsers.add_parser("status", help="show a cluster's pods", description=status.__doc__)
    _name_options(p)
    p.set_defaults(func=status)

    p = subparsers.add_parser(
        "scale", help="change the number of workers", description=scale.__doc__
    )
    p.add_argument("name", help="cluster name")
    p.add_argument("workers", type=int, help="number of workers")
    _name_options(p, positional=False)
    p.add_argument("--timeout", type=float, default=120, help="seconds to wait for new workers")
    p.set_defaults(func=scale)

    p = subparsers.add_parser(
        "logs", help="print the logs of a cluster's pods", description=logs.__doc__
    )
    _name_options(p)
    p.set_defaults(func=logs)

    p = subparsers.add_parser(
        "dashboard",
        help="forward the dashboard here and print its link",
        description=dashboard.__doc__,
    )
    _name_options(p)
    p.set_defaults(func=dashboard)

    p = subparsers.add_parser(
        "manifests", help="print the YAML that `up` would apply", description=manifests.__doc__
    )
    _name_options(p)
    _cluster_options(p)
    p.set_defaults(func=manifests)


if __name__ == "__main__":
    sys.stdout.write(default_manifests())
