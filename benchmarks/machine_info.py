"""The machine a benchmark ran on, and writing a benchmark's figures (JSON) beside it."""

from __future__ import annotations

import json
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


def save(result: dict, path: str | Path) -> Path:
    """Write a benchmark's figures as JSON (creating the folder) and say where."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return out
