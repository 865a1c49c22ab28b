"""Run one stage of ``make demo`` and add its wall time to the workspace's record:
``python -m pinlift.readouts.timed --out W/demo.json STAGE -- COMMAND [ARG ...]``.

The record (``{"stages": {stage: seconds}, "total_s": ...}``) keeps the last completed run of each stage, so a
demo that was interrupted and resumed reports the time its stages took to complete; a stage that fails is not
recorded and its exit status is passed on.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from pinworld.files import write_text_atomic


def record(path: Path, stage: str, seconds: float) -> dict:
    """Add ``stage``'s wall time to the record at ``path`` (created if absent); returns the record."""
    data = json.loads(path.read_text()) if path.is_file() else {"stages": {}}
    data["stages"][stage] = round(seconds, 1)
    data["total_s"] = round(sum(data["stages"].values()), 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")
    return data


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pinlift.readouts.timed", description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="the record, e.g. pinwork/demo.json")
    ap.add_argument("stage", help="the stage's name in the record")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARG ...]")
    a = ap.parse_args(argv)
    command = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not command:
        ap.error("expected a command after --")
    start = time.perf_counter()
    rc = subprocess.call(command)
    if rc == 0:
        record(Path(a.out), a.stage, time.perf_counter() - start)
    return rc


if __name__ == "__main__":
    sys.exit(main())
