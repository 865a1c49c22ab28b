"""The column tables of the docs, generated from the schema: ``python -m pinlift.core.docs FILE.md ...``
rewrites every block between ``<!-- schema: TABLE -->`` and ``<!-- /schema -->``; ``--check`` only says
which files differ (exit 1)."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from pinlift.core.schema import markdown_table

BLOCK = re.compile(r"(<!-- schema: (\w+) -->\n)(.*?)(<!-- /schema -->)", re.S)


def render(text: str) -> str:
    """``text`` with every schema block holding its table's current column table."""
    return BLOCK.sub(lambda m: f"{m.group(1)}{markdown_table(m.group(2))}\n{m.group(4)}", text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pinlift.core.docs", description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 when a file differs")
    a = ap.parse_args(argv)
    stale = []
    for f in map(Path, a.files):
        text = f.read_text()
        if render(text) != text:
            stale.append(f)
            if not a.check:
                f.write_text(render(text))
    for f in stale:
        print(f"{f}: {'differs from the schema' if a.check else 'tables regenerated'}")
    return 1 if stale and a.check else 0


if __name__ == "__main__":
    sys.exit(main())
