"""Atomic outputs: a command writes into a hidden temporary directory and renames it into place only
when everything succeeded, so a failed or interrupted run leaves nothing half-written."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``target``; on success it replaces ``target`` (any previous
    content is removed), on any error it is deleted and ``target`` is left as it was."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".tmp-{target.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = target.parent / f".old-{target.name}-{os.getpid()}"
    if target.exists():
        os.rename(target, old)
    os.rename(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_files(directory: Path, names: list[str]) -> Iterator[Path]:
    """Yield a temporary directory in which to write ``names``; on success each is moved into
    ``directory`` with an atomic rename (os.replace), on error nothing in ``directory`` changes."""
    directory = Path(directory)
    tmp = directory / f".tmp-write-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        missing = [n for n in names if not (tmp / n).exists()]
        if missing:
            raise RuntimeError(f"abtest: internal error: {missing[0]} was not written")
        for n in names:
            dest = directory / n
            if (tmp / n).is_dir():
                shutil.rmtree(dest, ignore_errors=True)
            os.replace(tmp / n, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
