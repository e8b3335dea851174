"""What a fault test measured, for bench/faults.py: written only when it asks for it.

``MINIMALDASK_FAULTS_REPORT=PATH`` makes each fault test append one JSON line:
the fault, its bound, what was observed, and whether the data was kept.
"""

from __future__ import annotations

import json
import os

import filelock


def record(fault: str, bound: str, observed: str, kept: str = "-") -> None:
    """Append one measurement to the report file, if one was asked for."""
    path = os.environ.get("MINIMALDASK_FAULTS_REPORT")
    if not path:
        return
    line = {"fault": fault, "bound": bound, "observed": observed, "kept data": kept}
    with filelock.FileLock(path + ".lock"), open(path, "a") as f:
        f.write(json.dumps(line) + "\n")
