"""The one error wrapper of every command: an expected failure is one line on stderr and exit 2;
``--debug`` shows the traceback instead."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

# failures a person can act on (bad input, a missing or existing file); anything else is a bug
EXPECTED = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")


def add_quiet_flag(parser: argparse.ArgumentParser) -> None:
    """``--quiet``, which every command takes: no progress bars or notes on stderr (errors still show)."""
    parser.add_argument("--quiet", action="store_true", help="no progress bars or notes on stderr")


def run_command(prog: str, fn: Callable[[], int | None], debug: bool = False) -> int:
    """Run ``fn``; an expected failure becomes ``<prog>: <first line>`` on stderr and exit status 2.
    ``prog`` is the command as typed (``pinworld``, ``ranking.train``)."""
    try:
        return fn() or 0
    except EXPECTED as exc:
        if debug:
            raise
        msg = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if isinstance(exc, OSError) and exc.filename is not None and str(exc.filename) not in msg:
            msg = f"{exc.filename}: {msg}"
        # messages raised by a stage often name it already ("pinclip train: ..."): no second prefix then
        package = prog.split()[0].split(".")[0]
        print(msg if msg.startswith(package) else f"{prog}: {msg}", file=sys.stderr)
        return 2
