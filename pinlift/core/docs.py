"""Generated blocks of the docs. The column tables, from the schema: ``python -m pinlift.core.docs FILE.md ...``
rewrites every block between ``<!-- schema: TABLE -->`` and ``<!-- /schema -->``; ``--check`` only says
which files differ (exit 1). And the sections a command writes into a shared page (``replace_section``:
``<!-- NAME:begin -->`` ... ``<!-- NAME:end -->``, e.g. docs/results.md's)."""

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


def section_markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def replace_section(text: str, name: str, body: str, heading: str | None = None) -> str:
    """``text`` with its ``name`` section holding ``body``: replaced in place, or appended (under ``heading``)
    when absent; a section marked twice, or with one marker, is a ValueError."""
    begin, end = section_markers(name)
    block = f"{begin}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    found = len(pattern.findall(text))
    if found > 1 or text.count(begin) != found or text.count(end) != found:
        raise ValueError(f"expected one {begin} ... {end} section, found a broken or repeated one")
    if found:
        return pattern.sub(lambda _: block, text)
    lead = f"{heading}\n\n" if heading else ""
    return text.rstrip("\n") + ("\n\n" if text.strip() else "") + f"{lead}{block}\n"


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
