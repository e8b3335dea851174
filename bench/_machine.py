"""What a benchmark's figures were measured on, recorded beside them in its JSON."""

from __future__ import annotations

import os
import platform
import time
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
