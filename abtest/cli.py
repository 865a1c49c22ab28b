"""``abtest simulate | analyze | validate exp.yaml``: parse arguments, call the library, print one line
per error (``abtest: <file>:<line>: <field>: expected ..., found ...``) and exit 2 on bad input."""

from __future__ import annotations

import argparse
import sys

from abtest.analyze import analyze
from abtest.config import AnnCandidates, Arm, Days, ExperimentConfig, MetricSpec, Traffic, UserSample, load_config
from abtest.engines import ENGINES
from abtest.logs import excluded_text
from abtest.simulate import simulate
from abtest.validation import render_markdown, run_validation
from pinlift.core.cli import add_debug_flag, run_command
from pinlift.core.config import fields_help
from pinworld.catalog import build_catalog


def _simulate(a) -> int:
    cfg = load_config(a.config, workdir=a.workdir)
    out = simulate(cfg, progress=not a.quiet)
    build_catalog(cfg.workdir)   # the experiment's tables become catalog views
    print(f"abtest simulate: wrote {out} (exposures/, events/, simulation.json)")
    if a.analyze:
        return _analyze(a)
    return 0


def _analyze(a) -> int:
    cfg = load_config(a.config, workdir=a.workdir)
    if a.engine is not None:
        cfg = cfg.model_copy(update={"engine": a.engine})
    result = analyze(cfg)
    srm = result["srm"]
    sig = [r["key"] for r in result["results"] if r["significant"]]
    empty = [r["key"] for r in result["results"] if r["excluded"] == "no data"]
    ev = result["events"]
    print(f"abtest analyze: {cfg.name}: users control {result['users']['control']:,} / treatment "
          f"{result['users']['treatment']:,}; SRM {'MISMATCH' if srm['mismatch'] else 'ok'} (p = {srm['p_value']:.3g}); "
          f"significant after {cfg.multiple_testing}: {', '.join(sig) if sig else 'none'}"
          + (f"; no data: {', '.join(empty)}" if empty else ""))
    print(f"abtest analyze: events: {ev['rows']:,} rows, {ev['counted']:,} counted; {excluded_text(ev)}")
    print(f"abtest analyze: report: {cfg.experiment_dir / 'report.html'} (also report.md, analysis.json)")
    return 0


def _validate(a) -> int:
    cfg = load_config(a.config, workdir=a.workdir)
    report = run_validation(cfg, resalts=a.resalts, lift=a.lift, out_dir=a.out, progress=not a.quiet, reuse=a.reuse)
    print(render_markdown(report))
    print(f"abtest validate: wrote {report['out_dir']}/validation.json and validation.md")
    failed = [c for c in report["checks"] if not c["ok"]]
    if failed:
        print(f"abtest validate: {len(failed)} of {len(report['checks'])} checks outside their bands", file=sys.stderr)
    return 0


# every command reads exp.yaml: its help lists the file's keys, nested ones too (details in docs/abtest.md)
KEYS = (("exp.yaml", ExperimentConfig), ("traffic", Traffic), ("arms.control, arms.treatment", Arm),
        ("arms.*.related_ann", AnnCandidates), ("days", Days), ("users", UserSample), ("metrics[]", MetricSpec))
EXP_HELP = dict(formatter_class=argparse.RawDescriptionHelpFormatter,
                epilog="\n\n".join(f"{where} keys (type, default):\n{fields_help(model)}" for where, model in KEYS))


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="abtest", description="Simulated A/B experiments and their analysis.")
    add_debug_flag(ap)
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("simulate", help="simulate an experiment on pinworld's users", **EXP_HELP)
    s.add_argument("config", help="experiment YAML")
    s.add_argument("--workdir", default=None, help="override the file's workdir")
    s.add_argument("--analyze", action="store_true", help="analyse right after simulating")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_simulate, engine=None)   # --analyze: on the file's engine
    z = sub.add_parser("analyze", help="analyse an experiment's exposures and events", **EXP_HELP)
    z.add_argument("config", help="experiment YAML")
    z.add_argument("--workdir", default=None, help="override the file's workdir")
    z.add_argument("--engine", choices=ENGINES, default=None, help="where the metric queries run (default: the "
                   "file's `engine:`, else duckdb)")
    z.add_argument("--quiet", action="store_true", help="no notes on stderr")
    z.set_defaults(func=_analyze)
    v = sub.add_parser("validate", help="A/A and injected-lift validation study by re-salting the assignment", **EXP_HELP)
    v.add_argument("config", help="experiment YAML (its control arm, days, users and metrics are used)")
    v.add_argument("--workdir", default=None, help="override the file's workdir")
    v.add_argument("--resalts", type=int, default=2000, help="re-randomisations (default 2000)")
    v.add_argument("--lift", type=float, default=0.05, help="injected relative lift on P(repin), P(click)")
    v.add_argument("--out", default=None, help="output directory (default W/experiments/<name>-validation)")
    v.add_argument("--reuse", action="store_true", help="reuse simulated potential outcomes in the output directory")
    v.add_argument("--quiet", action="store_true", help="no progress bars")
    v.set_defaults(func=_validate)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command("abtest", lambda: args.func(args), args.debug)


if __name__ == "__main__":
    sys.exit(main())
