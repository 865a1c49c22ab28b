"""The machine a benchmark ran on, saved beside its figures."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import numpy as np
import psutil


def machine() -> dict:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "cpu_model": model, "memory_gib": round(psutil.virtual_memory().total / 1024 ** 3, 1),
            "python": platform.python_version(), "numpy": np.__version__, "load_average": list(os.getloadavg())}
