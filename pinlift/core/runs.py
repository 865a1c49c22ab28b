"""Run directories: a run's resolved config and its hash, the versions it ran with, and the one rule for
resuming. A run continues only when the keys that define what is trained match; keys that only extend a
run (``steps``, checkpoint cadence, ...) may change. Run names are names, never paths."""

from __future__ import annotations

import hashlib
import json
import platform
import re
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator

from pinlift.core.cli import EXPECTED
from pinlift.core.errors import InputError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
RUN_FILE = "run.json"


def _name_problem(name) -> str | None:
    if not isinstance(name, str) or not NAME_RE.match(name) or ".." in name:
        return f"expected a name of letters, digits and -_. (not a path), found {name!r}"
    return None


def check_name(name: str, field: str = "run") -> str:
    """``name`` if it is a run name (letters, digits and ``-_.``, not starting with a dot), else InputError."""
    if problem := _name_problem(name):
        raise InputError(f"{field}: {problem}")
    return name


def _valid_name(name: str) -> str:
    if problem := _name_problem(name):
        raise ValueError(problem)
    return name


RunName = Annotated[str, AfterValidator(_valid_name)]   # a settings field that names a run, checked on load


def config_hash(config: dict, extends: Iterable[str] = ()) -> str:
    """sha256 of the canonical JSON of ``config`` without the keys that only extend a run."""
    defining = {k: v for k, v in config.items() if k not in set(extends)}
    return hashlib.sha256(json.dumps(defining, sort_keys=True, default=str).encode()).hexdigest()


def versions() -> dict:
    """Python and the packages a run's results depend on."""
    out = {"python": platform.python_version()}
    for pkg in ("pinlift", "torch", "torchrec", "timm", "numpy", "polars"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return out


def changed_keys(old: dict, new: dict, extends: Iterable[str] = ()) -> list[str]:
    """Keys whose values differ between two configs, ignoring the extending ones."""
    skip = set(extends)
    return sorted(k for k in set(old) | set(new) if k not in skip and old.get(k, "<absent>") != new.get(k, "<absent>"))


@contextmanager
def removed_on_error(path: Path | str, restart: bool = False) -> Iterator[None]:
    """Remove the run directory ``path`` when the block started it (it was absent, or ``restart`` clears it)
    and then fails on bad input: a refused run leaves nothing half-written. Other failures (an interrupt, a
    crash) keep it to resume from."""
    started = restart or not Path(path).exists()
    try:
        yield
    except EXPECTED:
        if started:
            shutil.rmtree(path, ignore_errors=True)
        raise


class RunDir:
    """``<root>/<name>``: the run file (config, hash, versions) and whatever the stage keeps beside it."""

    def __init__(self, root: Path | str, name: str, prog: str, extends: Iterable[str] = ()):
        self.name, self.prog, self.extends = check_name(name), prog, tuple(extends)
        self.path = Path(root) / self.name

    @property
    def run_file(self) -> Path:
        return self.path / RUN_FILE

    def saved(self) -> dict | None:
        """The run file, or None before the run has started."""
        return json.loads(self.run_file.read_text()) if self.run_file.is_file() else None

    def check_resume(self, config: dict) -> None:
        """Refuse, in one line naming the changed keys, to resume a run that was started with another
        defining config."""
        saved = self.saved()
        if saved is None or saved["hash"] == config_hash(config, self.extends):
            return
        keys = changed_keys(saved["config"], config, self.extends)
        shown = ", ".join(f"{k} {saved['config'].get(k)!r} -> {config.get(k)!r}" for k in keys[:4])
        more = f" and {len(keys) - 4} more" if len(keys) > 4 else ""
        raise InputError(f"{self.prog}: run {self.name!r} was started with other settings ({shown}{more}); "
                         f"pass --restart to start it over, or choose another run name")

    def start(self, config: dict, restart: bool = False, **extra) -> None:
        """Check (or with ``restart``, clear) the directory, then write the run file."""
        if restart and self.path.exists():
            shutil.rmtree(self.path)
        self.check_resume(config)
        self.write(config, **extra)

    def write(self, config: dict, **extra) -> None:
        """Write the run file: the resolved config, its hash and the versions (plus ``extra`` records)."""
        self.path.mkdir(parents=True, exist_ok=True)
        record = {"name": self.name, "config": config, "hash": config_hash(config, self.extends),
                  "extends": list(self.extends), "versions": versions(), **extra}
        tmp = self.run_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=2, default=str))
        tmp.replace(self.run_file)
