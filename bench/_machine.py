"""What a benchmark's figures were measured on, and its JSON written with them."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any


def machine() -> dict[str, Any]:
    """Cores, memory, CPU model, load average, platform and date."""
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    return {
        "nproc": os.cpu_count(),
        "ram_gib": round(mem_kb / 2**20, 1),
        "cpu": model,
        "load_average": os.getloadavg(),
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d"),
    }


def write_results(out: Path, figures: dict[str, Any]) -> None:
    """Write a benchmark's ``figures`` as JSON to ``out``, with the machine they were measured on."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine(), **figures}, indent=2))
    print(f"JSON written to {out}")
