"""Make the Open Clip Art sample shipped in examples/openclipart/ (images, items.jsonl, NOTICE.md):
``python scripts/make_openclipart_sample.py [--from DIR] [--out DIR] [--size N] [--seed S] [--force]``."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from pinlift.core.cli import add_debug_flag, add_quiet_flag, run_command
from pinworld.importers import OPENCLIPART, library_root, write_sample


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="make_openclipart_sample", description=__doc__.splitlines()[0])
    ap.add_argument("--from", dest="source", default=str(OPENCLIPART),
                    help="the library's png/ and svg/ (or a folder with usr/share/openclipart)")
    ap.add_argument("--out", default="examples/openclipart")
    ap.add_argument("--size", type=int, default=300, help="items to draw")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--side", type=int, default=96, help="longest side of a downscaled image, in pixels")
    ap.add_argument("--force", action="store_true", help="replace an existing sample")
    add_debug_flag(ap)
    add_quiet_flag(ap)
    a = ap.parse_args(argv)
    return run_command("make_openclipart_sample", lambda: _make(a), a.debug)


def _make(a) -> int:
    root = library_root(Path(a.source))
    if a.force and Path(a.out).is_dir():
        shutil.rmtree(a.out)
    print(json.dumps(write_sample(root, a.out, a.size, a.seed, a.side, progress=not a.quiet), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
