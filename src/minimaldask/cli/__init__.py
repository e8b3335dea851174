"""The ``minimaldask`` command."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console(highlight=False, soft_wrap=True)


def kubernetes_unreachable() -> str | None:
    """Why no Kubernetes API can be used from here, or None if one answers."""
    import asyncio
    import os

    in_cluster = bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
    kubeconfig = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    if not in_cluster and not any(os.path.exists(p) for p in kubeconfig.split(os.pathsep)):
        return f"no kubeconfig at {kubeconfig} and not running in a pod"
    try:
        from minimaldask.kubernetes import api
    except ImportError as e:
        return f"the Kubernetes client cannot be imported ({e})"
    from minimaldask import runner
    from minimaldask.exceptions import KubernetesError

    async def probe() -> None:
        await api.server_version(await api.connect())

    try:
        runner.run(asyncio.wait_for(probe(), 10))
    except (KubernetesError, asyncio.TimeoutError) as e:
        return f"the API server did not answer: {e or 'no answer within 10s'}".splitlines()[0]
    return None


def article_computation() -> Any:
    """The article's graph: z, a 5000-element mean over a 10000 x 10000 random array."""
    import dask.array as da

    x = da.random.random((10000, 10000), chunks=(1000, 1000))
    y = x + x.T
    return y[::2, 5000:].mean(axis=1)


def demo(args: argparse.Namespace) -> int:
    """Run the article's computation on a fresh cluster, check it, remove the cluster."""
    import numpy as np
    from distributed import Client

    from minimaldask import MinimalCluster, config

    backend = config.get("backend", args.backend)
    if backend == "kubernetes":
        reason = kubernetes_unreachable()
        if reason:
            console.print(f"No Kubernetes reachable ({reason}); using the local backend.")
            backend = "local"
    z = article_computation()
    timings: dict[str, float] = {}
    t = time.perf_counter()
    with MinimalCluster(
        name=args.name, backend=backend, workers=args.workers, quiet=not args.verbose
    ) as cluster:
        timings["start"] = time.perf_counter() - t
        dashboard = cluster.dashboard_link
        with Client(cluster) as client:
            t = time.perf_counter()
            result = client.compute(z).result()
            timings["compute on the cluster"] = time.perf_counter() - t
            workers = len(client.nthreads())  # asked now: scheduler_info() may answer from a cache
        t = time.perf_counter()
    timings["delete"] = time.perf_counter() - t
    t = time.perf_counter()
    expected = z.compute(scheduler="threads")
    timings["compute in-process"] = time.perf_counter() - t
    ok = result.shape == expected.shape and bool(np.allclose(result, expected))

    table = Table(title="minimaldask demo: the article's computation", show_header=False)
    table.add_row("backend", backend)
    table.add_row("workers", str(workers))
    table.add_row("dashboard", dashboard)
    for stage, seconds in timings.items():
        table.add_row(f"{stage} (s)", f"{seconds:.2f}")
    table.add_row("result", f"{result.shape[0]} values, mean {result.mean():.6f}")
    table.add_row("matches in-process", "yes" if ok else "NO")
    console.print(table)
    return 0 if ok else 1


def print_options(args: argparse.Namespace) -> int:
    """Print the options table (Markdown), made from the options' declarations."""
    from minimaldask.spec import options_table

    sys.stdout.write(options_table())
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``minimaldask`` command."""
    from minimaldask import __version__
    from minimaldask.backend import BACKENDS

    parser = argparse.ArgumentParser(
        prog="minimaldask",
        description="A Dask cluster on Kubernetes for exactly as long as you need it.",
    )
    parser.add_argument("--version", action="version", version=f"minimaldask {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "demo",
        help="run the article's computation on a fresh cluster and check the result",
        description=demo.__doc__,
    )
    p.add_argument(
        "--backend",
        choices=list(BACKENDS),
        help="where to run; without a reachable Kubernetes the local backend is used "
        "(default: minimaldask.backend in dask config)",
    )
    p.add_argument(
        "--workers",
        type=int,
        help="number of workers (default: minimaldask.workers in dask config)",
    )
    p.add_argument("--name", default="minimaldask-demo", help="cluster name")
    p.add_argument("-v", "--verbose", action="store_true", help="show start-up progress")
    p.set_defaults(func=demo)

    p = sub.add_parser(
        "options",
        help="print every cluster option: config key, default, flag, meaning",
        description="Print the table of docs/options.md: every option of a cluster.",
    )
    p.set_defaults(func=print_options)

    from minimaldask.cli import kube
    from minimaldask.image import cli as image_cli

    kube.register(sub)
    image_cli.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``minimaldask`` command."""
    args = build_parser().parse_args(argv)
    from minimaldask.exceptions import MinimalDaskError

    try:
        code = args.func(args)
    except (MinimalDaskError, ValueError) as e:
        console.print(f"[red]error:[/red] {e}")
        code = 1
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)
