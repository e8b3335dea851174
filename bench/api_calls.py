"""API requests that a cluster's client and janitor make, per phase, for 1, 3, 6 and 12 workers.

The control plane should stay O(1) in the number of workers: this counts, in
the API server's audit log, the requests of each phase of a cluster's life:

- start: ``MinimalCluster(workers=N)`` until it returns (N workers connected);
- scale down: ``cluster.scale(0)``, every worker retired first;
- scale up: ``cluster.scale(N)`` until N workers are connected again;
- delete: ``cluster.close()``, until no object of the cluster is left.

The client runs as the namespace-only user of the local Kubernetes, in a
namespace of the benchmark's own (made at the start, deleted at the end).
Other engineers' tests run as that user too, so a request is the client's when
its user is that user and its User-Agent names this run's cluster
(``minimaldask/VERSION (cluster NS/NAME)``: every request of the client says
so), and the janitor's when it comes from the cluster's ServiceAccount
(``system:serviceaccount:NS:NAME-scheduler``). Each run has its own cluster
name. A request counts in the phase during which the API server received it;
the janitor's requests between phases (the client's are none) are shown apart.
The sizes run in rounds (1, 3, 6, 12, then again), so that a busy minute of the
shared machine does not fall on one size only.

Small pods (50m CPU each, as the e2e tests'), so that 12 workers fit on a 2-core
node. On the local Kubernetes, with its audit log (LOCALKUBE_AUDIT=1, or
``localkube.py up --audit``), as root (it reads the audit log):

    python bench/api_calls.py                 # builds and pushes this checkout's image once

Prints a table per phase and writes JSON (``--json``, default
bench/results/api_calls.json); ``--show JSON`` prints the tables of an earlier run.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import secrets
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from minimaldask import MinimalCluster, contract, delete_dask_cluster
from minimaldask.kubernetes.api import user_agent
from minimaldask.spec import default_image_tag

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools" / "localkube"))
sys.path.insert(0, str(ROOT / "tests"))
import localkube  # noqa: E402
from _machine import write_results  # noqa: E402
from testutil import source_hash  # noqa: E402  (the e2e image's tag names the same digest)

PHASES = ("start", "scale down", "scale up", "delete")
console = Console(width=130)


def checkout_image() -> str:
    """This checkout's image in the local registry, built and pushed unless it is there."""
    tag = f"{default_image_tag()}-{source_hash()}"
    push = f"{localkube.REGISTRY_LISTEN}/minimaldask:{tag}"
    request = urllib.request.Request(
        f"http://{localkube.REGISTRY_LISTEN}/v2/minimaldask/manifests/{tag}",
        method="HEAD",
        headers={"Accept": "application/vnd.oci.image.index.v1+json"},
    )
    try:
        urllib.request.urlopen(request, timeout=10).close()
    except urllib.error.HTTPError as e:
        if e.code != 404:
            raise
        console.print(f"building {push} (this checkout's image)")
        subprocess.run(
            [sys.executable, "-m", "minimaldask.image", "build", "--push", push, "--insecure"],
            check=True,
            timeout=1200,
        )
    return f"{localkube.REGISTRY}/minimaldask:{tag}"


def kind(event: dict[str, Any]) -> str:
    """``verb resource[/subresource]``, and the status code when it is not a success."""
    ref = event.get("objectRef") or {}
    resource = ref.get("resource") or event["requestURI"].split("?")[0]
    if ref.get("subresource"):
        resource += "/" + ref["subresource"]
    code = (event.get("responseStatus") or {}).get("code", 0)
    return f"{event['verb']} {resource}" + ("" if code < 400 else f" ({code})")


def count(events: list[dict[str, Any]], marks: list[tuple[str, float, float]]) -> dict[str, Any]:
    """Requests per phase (by when the API server received them), total and by kind."""
    out: dict[str, Any] = {p: collections.Counter() for p, _, _ in marks}
    out["between phases"] = collections.Counter()
    for event in events:
        t = localkube._timestamp(event["requestReceivedTimestamp"])
        phase = next((p for p, a, b in marks if a <= t < b), "between phases")
        out[phase][kind(event)] += 1
    return {p: dict(c) for p, c in out.items()}


def one_run(args: argparse.Namespace, namespace: str, image: str, n: int, name: str) -> dict:
    """A cluster of ``n`` workers through its four phases; the requests of each."""
    marks: list[tuple[str, float, float]] = []
    errors: list[str] = []

    def phase(label: str, action: Any) -> Any:
        t0 = time.time()
        result = action()
        marks.append((label, t0, time.time()))
        console.print(f"  N={n} {label}: {marks[-1][2] - t0:.1f}s")
        return result

    first = time.time()
    cluster = phase(
        "start",
        lambda: MinimalCluster(
            name=name,
            namespace=namespace,
            workers=n,
            image=image,
            image_pull_policy="IfNotPresent",
            resources={"cpu": args.cpu, "memory": args.memory},
            scheduler_resources={"cpu": "100m", "memory": "384Mi"},
            startup_timeout=args.timeout,
            quiet=True,
        ),
    )
    try:
        phase("scale down", lambda: cluster.scale(0))

        def up() -> None:
            cluster.scale(n)
            cluster.wait_for_workers(n, timeout=args.timeout)

        phase("scale up", up)

        def delete() -> None:
            try:
                cluster.close()
            except Exception as e:
                # Said, kept in the JSON, and the cluster deleted by name (those requests count).
                errors.append(f"close: {type(e).__name__}: {e}")
                console.print(f"  N={n} close raised {errors[-1]}; deleting the cluster by name")
                delete_dask_cluster(namespace=namespace, name=name)

        phase("delete", delete)
    except BaseException:
        cluster.close()
        delete_dask_cluster(namespace=namespace, name=name)
        raise
    time.sleep(1)  # the last port-forward's event is written when its connection ends
    client = [
        e
        for e in localkube.audit_events(first - 1, user=localkube.USER_NAME)
        if e.get("userAgent", "").startswith(user_agent(name, namespace) + " ")
    ]
    janitor = localkube.audit_events(
        first - 1, user=f"system:serviceaccount:{namespace}:{contract.scheduler_name(name)}"
    )
    # This user's requests in the namespace that do not name the cluster: a path of the
    # client that bypasses kube.connect() would show here (none should).
    unnamed = [
        e
        for e in localkube.audit_events(first - 1, user=localkube.USER_NAME, namespace=namespace)
        if not e.get("userAgent", "").startswith("minimaldask/")
    ]
    return {
        "workers": n,
        "name": name,
        "seconds": {p: b - a for p, a, b in marks},
        "client": count(client, marks),
        "janitor": count(janitor, marks),
        "unnamed": count(unnamed, marks),
        "errors": errors,
    }


def summarise(runs: list[dict]) -> dict[str, Any]:
    """Median over the repeats of each size: per phase, totals and kinds, client and janitor."""
    sizes = sorted({r["workers"] for r in runs})
    out: dict[str, Any] = {}
    for phase in (*PHASES, "between phases"):
        out[phase] = {}
        for who in ("client", "janitor", "unnamed"):
            kinds = sorted({k for r in runs for k in r[who][phase]})
            table = {}
            for k in kinds:
                table[k] = {
                    n: statistics.median(r[who][phase].get(k, 0) for r in runs if r["workers"] == n)
                    for n in sizes
                }
            table["total"] = {
                n: statistics.median(sum(r[who][phase].values()) for r in runs if r["workers"] == n)
                for n in sizes
            }
            out[phase][who] = table
        if phase in PHASES:
            out[phase]["seconds"] = {
                n: statistics.median(r["seconds"][phase] for r in runs if r["workers"] == n)
                for n in sizes
            }
    return out


def print_tables(summary: dict[str, Any], sizes: list[int]) -> None:
    totals = Table(
        title="API requests per phase (median of the runs): client + janitor "
        "(seconds of the phase, client requests per second)"
    )
    totals.add_column("phase")
    for n in sizes:
        totals.add_column(f"N={n}", justify="right")
    for phase in PHASES:
        row = summary[phase]
        totals.add_row(
            phase,
            *(
                f"{row['client']['total'][n]:g} + {row['janitor']['total'][n]:g}"
                f" ({row['seconds'][n]:.0f}s,"
                f" {row['client']['total'][n] / max(row['seconds'][n], 0.1):.1f}/s)"
                for n in sizes
            ),
        )
    console.print(totals)
    for phase in (*PHASES, "between phases"):
        table = Table(title=f"{phase}: requests by verb and resource (median)")
        table.add_column("who")
        table.add_column("request")
        for n in sizes:
            table.add_column(f"N={n}", justify="right")
        for who in ("client", "janitor", "unnamed"):
            for k, by_n in summary[phase][who].items():
                if k != "total":
                    table.add_row(who, k, *(f"{by_n[n]:g}" for n in sizes))
        if table.row_count:
            console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--namespace", default="bench-apicalls", help="made for the run and deleted after it"
    )
    parser.add_argument("--image", help="default: this checkout's, built and pushed if needed")
    parser.add_argument("--workers", default="1,3,6,12")
    parser.add_argument("--repeat", type=int, default=2, help="rounds over the sizes")
    parser.add_argument("--cpu", default="50m", help="cpu request of each worker")
    parser.add_argument("--memory", default="384Mi", help="memory of each worker")
    parser.add_argument("--timeout", type=float, default=300, help="startup_timeout")
    parser.add_argument("--json", default="bench/results/api_calls.json")
    parser.add_argument("--show", metavar="JSON", help="print the tables of an earlier run")
    args = parser.parse_args()
    if args.show:
        runs = json.loads(Path(args.show).read_text())["runs"]
        print_tables(summarise(runs), sorted({r["workers"] for r in runs}))
        return
    if not localkube.is_up():
        sys.exit("the local Kubernetes is not up: python3 tools/localkube/localkube.py up --audit")
    if not localkube.apiserver_audits():
        sys.exit(
            "the API server writes no audit log: run `python3 tools/localkube/localkube.py up "
            "--audit` (restarts only the API server) or start it with LOCALKUBE_AUDIT=1"
        )
    if not os.access(localkube.AUDIT_LOG, os.R_OK):
        sys.exit(f"cannot read {localkube.AUDIT_LOG}: run this as root")
    # The client runs as the namespace-only user, as a user of a shared cluster would.
    os.environ["KUBECONFIG"] = str(localkube.USER_KUBECONFIG)
    image = args.image or checkout_image()
    sizes = [int(x) for x in args.workers.split(",")]
    run_id = secrets.token_hex(3)
    runs = []
    localkube.apply(localkube.namespace_user_objects(args.namespace))
    try:
        for i in range(args.repeat):
            for n in sizes:
                name = f"api-{run_id}-{n}-{i}"
                console.print(f"round {i + 1}/{args.repeat}: {name}")
                runs.append(one_run(args, args.namespace, image, n, name))
    finally:
        localkube.kubectl("delete", "namespace", args.namespace, "--timeout=180s", timeout=200)
    summary = summarise(runs)
    print_tables(summary, sizes)
    out = Path(args.json)
    write_results(
        out,
        {
            "image": image,
            "namespace": args.namespace,
            "settings": {k: v for k, v in vars(args).items() if k != "json"},
            "summary": summary,
            "runs": runs,
        },
    )


if __name__ == "__main__":
    main()
