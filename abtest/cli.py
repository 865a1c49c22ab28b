"""``abtest simulate | analyze | validate exp.yaml``: parse arguments, call the library, print one line
per error (``abtest: <file>:<line>: <field>: expected ..., found ...``) and exit 2 on bad input."""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from abtest.errors import AbtestError


def run_guarded(fn: Callable[[], int]) -> int:
    """Run a command; input errors become one line on stderr and exit status 2."""
    try:
        return fn()
    except (AbtestError, FileNotFoundError, ValueError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"abtest: {msg.removeprefix('abtest: ')}", file=sys.stderr)
        return 2


def _simulate(a) -> int:
    from abtest.config import load_config
    from abtest.simulate import simulate
    from pinworld.catalog import build_catalog

    cfg = load_config(a.config, workdir=a.workdir)
    out = simulate(cfg, progress=not a.quiet)
    build_catalog(cfg.workdir)   # the experiment's tables become catalog views
    print(f"abtest simulate: wrote {out} (exposures/, events/, simulation.json)")
    if a.analyze:
        return _analyze(a)
    return 0


def _analyze(a) -> int:
    from abtest.analyze import analyze
    from abtest.config import load_config

    cfg = load_config(a.config, workdir=a.workdir)
    result = analyze(cfg)
    srm = result["srm"]
    sig = [r["key"] for r in result["results"] if r["significant"]]
    print(f"abtest analyze: {cfg.name}: users control {result['users']['control']:,} / treatment "
          f"{result['users']['treatment']:,}; SRM {'MISMATCH' if srm['mismatch'] else 'ok'} (p = {srm['p_value']:.3g}); "
          f"significant after {cfg.multiple_testing}: {', '.join(sig) if sig else 'none'}")
    print(f"abtest analyze: report: {cfg.experiment_dir / 'report.html'} (also report.md, analysis.json)")
    return 0


def _validate(a) -> int:
    from abtest.validation import run_from_args

    return run_from_args(a)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="abtest", description="Simulated A/B experiments and their analysis.")
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("simulate", help="simulate an experiment on pinworld's users")
    s.add_argument("config", help="experiment YAML")
    s.add_argument("--workdir", default=None, help="override the file's workdir")
    s.add_argument("--analyze", action="store_true", help="analyse right after simulating")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_simulate)
    z = sub.add_parser("analyze", help="analyse an experiment's exposures and events")
    z.add_argument("config", help="experiment YAML")
    z.add_argument("--workdir", default=None, help="override the file's workdir")
    z.set_defaults(func=_analyze)
    v = sub.add_parser("validate", help="A/A and injected-lift validation study by re-salting the assignment")
    from abtest.validation import add_arguments

    add_arguments(v)
    v.set_defaults(func=_validate)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_guarded(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
