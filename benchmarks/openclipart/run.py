"""PinCLIP judged on real pictures: train, score and tabulate the Open Clip Art rows.

    python benchmarks/openclipart/run.py --workdir openclipart-work [--only ROW[,ROW...]] [key=value ...]
                                         [--write-docs]

Imports the library into the workspace if it holds no world yet (``--from``: the folder holding png/ and
svg/) and stores its images at 128 px once, trains the rows asked for (default: the table's main rows, with
the validation runs their learning rates are chosen from, and PinCLIP's floor on validation), reusing every
finished (row, seed) and resuming unfinished ones, then writes ``benchmarks/results/openclipart.json`` from
every finished row and, with ``--write-docs``, the section of ``docs/results.md`` between its markers.
Two processes may run side by side on different rows (a (row, seed) is locked while it trains). ``--only hyp_NAME key=value ...`` trains a hypothesis of one's own:
the work-matched PinCLIP row with those ``pinclip train`` settings, on the validation split. ``--no-train``
only gathers. One torch thread unless ``--threads``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
os.environ.setdefault("OMP_NUM_THREADS", "1")
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))   # the package `openclipart` of benchmarks/

RESULTS_JSON = ROOT / "benchmarks" / "results" / "openclipart.json"
DOCS = ROOT / "docs" / "results.md"


def split_counts(split_csv: Path) -> dict:
    from openclipart.split import SPLITS, read_split

    split = read_split(split_csv)
    files = {item.file: item.split for item in split.values()}
    return {"items": {s: sum(i.split == s for i in split.values()) for s in SPLITS},
            "files": {s: sum(v == s for v in files.values()) for s in SPLITS}}


def parse_settings(items: list[str]) -> dict:
    from pinlift.core.config import parse_overrides

    return parse_overrides(items)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="benchmarks/openclipart/run.py", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("settings", nargs="*", metavar="key=value",
                    help="with --only hyp_NAME: pinclip train settings of a hypothesis of one's own")
    ap.add_argument("--workdir", default="openclipart-work")
    ap.add_argument("--from", dest="source", default=None,
                    help="the library's folder (png/, svg/) to import when the workspace has no world")
    ap.add_argument("--split", default=None, help="the split file (default: benchmarks/openclipart/split.csv)")
    ap.add_argument("--only", default="", help="comma-separated rows (default: the main rows)")
    ap.add_argument("--list", action="store_true", help="list the rows and exit")
    ap.add_argument("--no-train", action="store_true", help="only gather finished rows into the JSON (and docs)")
    ap.add_argument("--retrain", action="store_true", help="train the --only rows afresh (e.g. after a library "
                    "change), not the rows they depend on")
    ap.add_argument("--write-docs", action="store_true", help="also rewrite the marked section of docs/results.md")
    ap.add_argument("--out", default=str(RESULTS_JSON))
    ap.add_argument("--docs", default=str(DOCS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps-cap", type=int, default=None, help="at most this many steps per row (smoke tests)")
    ap.add_argument("--batch-size", type=int, default=None,
                    help="image–text (and Pin-to-Pin) pairs a step instead of the rows' 128 (smoke tests)")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--debug", action="store_true", help="full tracebacks")
    a = ap.parse_args(argv)

    from openclipart.rows import DEFAULT_ROWS, OPENCLIP, ROWS, custom_hypothesis

    if a.list:
        for row in ROWS.values():
            print(f"{row.name:<24} {row.table:<10} {row.split:<10} seeds {','.join(map(str, row.seeds)):<4} {row.about}")
        return 0

    import torch

    from openclipart import harness, report
    from openclipart.split import SPLIT_CSV

    torch.set_num_threads(a.threads)
    split_csv = Path(a.split) if a.split else SPLIT_CSV
    names = [n for n in a.only.split(",") if n] or DEFAULT_ROWS
    custom = {}
    if a.settings:
        if len(names) != 1:
            raise SystemExit("run.py: key=value settings define one hypothesis: give --only hyp_NAME")
        custom[names[0]] = custom_hypothesis(names[0], parse_settings(a.settings))
    workdir = Path(a.workdir)
    if not a.no_train:
        common = ({"pinclip": {"batch_size": a.batch_size, "neighbor_batch_size": a.batch_size},
                   "openclip": {"batch_size": a.batch_size}} if a.batch_size else {})
        ctx = harness.Context(workdir, None, progress=not a.quiet, steps_cap=a.steps_cap, common=common,
                              custom=custom)
        for name in names:
            harness.check_settings(ctx.row(name))   # unknown rows and settings fail before anything trains
        harness.ensure_workspace(workdir, a.source, progress=not a.quiet)
        if a.retrain:
            if not a.only:
                raise ValueError("run.py: --retrain needs --only ROW[,ROW...]")
            for name in names:
                harness.forget(ctx, name)
        ctx.catalog = harness.load_catalog(workdir, split_csv)
        for name in names:
            harness.run_row(ctx, name)

    results = {}
    done = workdir / harness.BENCH_DIR / "results"
    for row_dir in sorted(p for p in done.glob("*") if p.is_dir()):
        seeds = sorted(row_dir.glob("s*.json"), key=lambda p: int(p.stem[1:]))
        results[row_dir.name] = [json.loads(p.read_text()) for p in seeds]
    doc = report.build(results, split_counts(split_csv), report.parameter_counts(OPENCLIP["model_config"]))
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {out} ({len(doc['rows'])} rows)")
    if a.write_docs:
        report.write_docs(Path(a.docs), report.markdown(doc))
        print(f"wrote the openclipart section of {a.docs}")
    return 0


if __name__ == "__main__":
    from pinlift.core.cli import run_command

    sys.exit(run_command("openclipart", main, debug="--debug" in sys.argv))
