"""The two promises under faults, measured: each fault injected for real on the local Kubernetes.

It runs tests/e2e/test_faults.py (the faults are those tests' own: a scheduler pod
deleted, the janitor's RoleBinding removed, a crash loop, a frozen worker, scaling
down three ways with unique data, a deleted and an evicted worker pod, two
processes starting one name) and collects what each observed:

    tools/localkube/localkube up
    .venv/bin/python bench/faults.py [--workers 4] [--json bench/results/faults.json]

Prints one table (fault, bound, observed, kept data) and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
console = Console()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4, help="tests at once (pytest-xdist)")
    parser.add_argument("--json", default="bench/results/faults.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "faults.jsonl"
        started = time.monotonic()
        result = subprocess.run(
            [
                sys.executable, "-m", "pytest", "-q", "-p", "no:warnings",
                "-n", str(args.workers), "tests/e2e/test_faults.py",
            ],
            cwd=ROOT,
            env={**os.environ, "MINIMALDASK_FAULTS_REPORT": str(report), "LOCALKUBE_NO_UP": "1"},
        )  # fmt: skip
        seconds = time.monotonic() - started
        rows = (
            [json.loads(line) for line in report.read_text().splitlines()]
            if report.exists()
            else []
        )
    table = Table(title=f"faults on the local Kubernetes ({time.strftime('%Y-%m-%d')})")
    for column in ("fault", "bound", "observed", "kept data"):
        table.add_column(column)
    for row in sorted(rows, key=lambda r: r["fault"]):
        table.add_row(row["fault"], row["bound"], row["observed"], row["kept data"])
    console.print(table)
    console.print(
        f"{len(rows)} measurements in {seconds:.0f} s; the tests exited {result.returncode}"
    )
    out = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": platform.node(),
        "tests_exit_code": result.returncode,
        "seconds": round(seconds),
        "faults": rows,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))
    console.print(f"written to {args.json}")
    sys.exit(result.returncode)


if __name__ == "__main__":
    main()
