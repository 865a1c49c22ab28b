"""`python -m ranking.compare`: the ranking arms side by side, over seeds.

Arms differ only in the dense content feature: IDs only; + PinCLIP; + PinCLIP shuffled across pins (must
show no lift); + the topic one-hot as the pin's objects show it (the floor: what a content reader could
reach); + the one-hot of pinworld's latent true topic (a reference, not a floor: no content shows it in
~2% of pins); + oracle features (the ceiling). Data, seeds, the training rule (at most ``--epochs``, early
stopping on the same validation day) and widths are identical: the IDs-only arm has the content inputs
too, every pin marked missing (with a narrower input layer it scored 0.003–0.006 AUC lower on the demo
world, which had read as a "lift" of the shuffled arm; so had training two full epochs, where random
per-pin inputs slowed the ID tables' overfitting). ``--per-surface`` also trains one model per surface for
chosen arms. The runs' settings are ``ranking.train``'s (``[CONFIG.yaml] [key=value ...]``, ``--epochs``,
...), but for the keys each arm and seed sets (``ARM_KEYS``). A run already trained (eval.json present) with
the same settings is reused; one that differs only in keys that extend a run (more epochs) resumes; one
started with other settings is refused in one line (``--retrain`` trains it again). The table (mean AUC and
the lift over IDs-only, mean ± sd over seeds, paired by seed) goes to ``W/ranking/compare.json`` and, given
``--results FILE``, to that markdown file's ranking-compare section (``make results`` writes
``docs/results.md`` with ``pinlift.readouts.results``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from pinclip.embeddings import latest_version
from pinlift.core.cli import add_debug_flag, add_quiet_flag, run_command
from pinlift.core.config import COMMAND_LINE, settings_parser
from pinlift.core.docs import replace_section
from pinlift.core.errors import input_error
from pinlift.core.registry import embedding_sources, publish_source
from pinlift.core.runs import RunDir
from pinworld.files import write_text_atomic
from pinworld.world import World
from ranking.arms import ARMS
from ranking.claims import IMPRESSION_SLICES, claim_checks, format_checks, key_tasks
from ranking.train import EXTENDS, PROG, TrainConfig, Trainer, add_settings_arguments, load_train_config, run_settings

ARM_KEYS = ("embeddings", "shuffle_embeddings", "empty_content", "seed", "surfaces")  # set per arm and seed
SLICES = ("all", "fresh", "older", "unseen_pins", "new_ads", "older_ads", *IMPRESSION_SLICES)
RESULTS_SECTION = "ranking-compare"   # its section of docs/results.md


def ensure_embeddings(workdir: str, arms: list[str]) -> list[str]:
    """Publish what an arm needs from a registered embedding source (pinlift.core.registry: pinworld's oracle
    and topic codes); drop arms whose embedding is neither published nor publishable."""
    kept = []
    for arm in arms:
        name = ARMS[arm].embeddings
        if name in embedding_sources() and latest_version(workdir, name) is None:
            publish_source(name, workdir)
        if name is not None and latest_version(workdir, name) is None:
            print(f"ranking.compare: skipping arm {arm!r}: nothing published under {name!r} yet", file=sys.stderr)
            continue
        kept.append(arm)
    return kept


def arm_config(base: TrainConfig, arm: str, seed: int, surface: str | None = None) -> TrainConfig:
    """``base`` with the keys of an arm and seed: on every surface with one model, or on ``surface`` alone."""
    a = ARMS[arm]
    # IDs-only keeps the content inputs, empty, so that every arm has the same widths
    return TrainConfig.model_validate({**base.model_dump(), "embeddings": a.embeddings, "shuffle_embeddings": a.shuffled,
                                       "empty_content": a.embeddings is None, "seed": seed,
                                       "surfaces": [surface] if surface else base.surfaces})


def run_arm(base: TrainConfig, workdir: str, arm: str, seed: int, retrain: bool = False,
            surface: str | None = None, quiet: bool = False) -> dict:
    """Train (or reuse, or resume) one arm and seed; a run started with other settings is refused."""
    cfg = arm_config(base, arm, seed, surface)
    run = f"{arm}_{surface}_s{seed}" if surface else f"{arm}_s{seed}"
    record = RunDir(Path(workdir) / "ranking" / "runs", run, PROG, extends=EXTENDS)
    report = record.path / "eval.json"
    if report.is_file() and not retrain:
        settings = run_settings(cfg, World(workdir))
        record.check_resume(settings)
        saved = record.saved()
        if saved is None or saved["config"] == settings:   # none: a run from before run files
            return json.loads(report.read_text())
    return Trainer(cfg, workdir, run, restart=retrain, quiet=quiet).fit()   # extending keys changed: resume


def summarize(reports: dict[str, list[dict]]) -> dict:
    """{task: {slice: {arm: {auc_mean, auc_sd, lift_mean, lift_sd, n}}}}, lifts paired by seed vs IDs."""
    out: dict = {}
    base = reports.get("ids")
    for arm, runs in reports.items():
        for task in runs[0]["metrics"]:
            for sl in SLICES:
                aucs = [r["metrics"][task].get(sl) for r in runs]
                if any(a is None for a in aucs):
                    continue
                auc = np.array([a["auc"] for a in aucs])
                entry = {"auc_mean": float(auc.mean()), "auc_sd": float(auc.std(ddof=1)) if len(auc) > 1 else 0.0,
                         "n": aucs[0]["n"], "seeds": len(auc)}
                if base is not None:
                    ref = np.array([r["metrics"][task][sl]["auc"] for r in base[:len(auc)]])
                    lift = auc - ref
                    entry["lift_mean"] = float(lift.mean())
                    entry["lift_sd"] = float(lift.std(ddof=1)) if len(lift) > 1 else 0.0
                out.setdefault(task, {}).setdefault(sl, {})[arm] = entry
    return out


def per_surface_summary(joint: dict[str, list[dict]], separate: dict[str, dict[str, list[dict]]]) -> list[dict]:
    """One model for all surfaces vs one model per surface: per arm, key task and slice, the mean AUC of
    each and the difference (separate − joint, mean ± sd over seeds, paired by seed)."""
    rows = []
    for arm, by_surface in separate.items():
        for task in key_tasks(joint[arm][0]["metrics"]):
            runs = by_surface.get(task.split("/")[0])
            if not runs:
                continue
            for sl in ("all", "fresh", "new_ads"):
                if runs[0]["metrics"][task].get(sl) is None:
                    continue
                a = np.array([r["metrics"][task][sl]["auc"] for r in joint[arm][:len(runs)]])
                b = np.array([r["metrics"][task][sl]["auc"] for r in runs])
                d = b - a
                rows.append({"arm": arm, "task": task, "slice": sl, "joint": float(a.mean()),
                             "separate": float(b.mean()), "diff_mean": float(d.mean()),
                             "diff_sd": float(d.std(ddof=1)) if len(d) > 1 else 0.0, "seeds": len(d)})
    return rows


def format_per_surface(rows: list[dict]) -> str:
    lines = ["| arm | task | slice | one model | one per surface | per surface − one |",
             "|---|---|---|---:|---:|---:|"]
    for r in rows:
        sd = f" ± {r['diff_sd']:.4f}" if r["seeds"] > 1 else ""
        lines.append(f"| {r['arm']} | {r['task']} | {r['slice']} | {r['joint']:.4f} | {r['separate']:.4f} | "
                     f"{r['diff_mean']:+.4f}{sd} |")
    return "\n".join(lines)


def format_table(summary: dict, arms: list[str]) -> str:
    """Per key task (``ranking.claims.key_tasks``) and slice, each arm's mean AUC and lift over IDs-only."""
    lines = ["| task | slice | n | " + " | ".join(arms) + " |", "|---|---|---:|" + "---:|" * len(arms)]
    for task in key_tasks(summary):
        for sl in SLICES:
            row = summary.get(task, {}).get(sl)
            if not row:
                continue
            cells = []
            for arm in arms:
                e = row.get(arm)
                if e is None:
                    cells.append("")
                elif arm == "ids" or "lift_mean" not in e:
                    cells.append(f"{e['auc_mean']:.4f}" + (f" ± {e['auc_sd']:.4f}" if e["seeds"] > 1 else ""))
                else:
                    sd = f" ± {e['lift_sd']:.4f}" if e["seeds"] > 1 else ""
                    cells.append(f"{e['auc_mean']:.4f} ({e['lift_mean']:+.4f}{sd})")
            n = next(iter(row.values()))["n"]
            lines.append(f"| {task} | {sl} | {n:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_best_epochs(best_epochs: dict[str, list[float]]) -> str:
    """Per arm, the mean over seeds of the epochs at the check each run kept."""
    return ", ".join(f"{arm} {np.mean(epochs):.2f}" for arm, epochs in best_epochs.items())


def write_results(path: Path, body: str) -> None:
    """Replace the ranking-compare section of docs/results.md (created if absent), atomically."""
    text = path.read_text() if path.is_file() else "# pinlift results\n"
    write_text_atomic(path, replace_section(text, RESULTS_SECTION, body))


def build_parser():
    ap = settings_parser("python -m ranking.compare", __doc__.splitlines()[0], TrainConfig, skip=ARM_KEYS)
    add_settings_arguments(ap, skip=ARM_KEYS)
    ap.add_argument("--workdir", default="pinwork", help="the workspace (default pinwork)")
    ap.add_argument("--arms", default=",".join(ARMS), help="comma-separated, from " + ", ".join(ARMS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                    help="seeds of every arm (default 0 1 2; put key=value overrides before --seeds)")
    ap.add_argument("--results", default="", help="markdown file whose ranking-compare section is updated "
                    "(default '': none; the table always goes to W/ranking/compare.json)")
    ap.add_argument("--retrain", "--restart", dest="retrain", action="store_true",
                    help="train every run again from the start")
    ap.add_argument("--per-surface", default="", help="comma-separated arms also trained as one model per "
                    "surface, to compare with the one model with surface-specific heads")
    add_quiet_flag(ap)
    add_debug_flag(ap)
    return ap


def main(argv=None) -> int:
    ap = build_parser()
    a = ap.parse_intermixed_args(argv)
    arms = [x for x in a.arms.split(",") if x]
    unknown = [x for x in arms if x not in ARMS]
    per_surface = [x for x in a.per_surface.split(",") if x]
    if unknown:
        ap.error(f"--arms: unknown arm {unknown[0]!r}: expected some of {', '.join(ARMS)}")
    if any(x not in arms for x in per_surface):
        ap.error(f"--per-surface: expected arms among --arms ({', '.join(arms)}), found {a.per_surface!r}")
    return run_command(PROG, lambda: _compare(a, arms, per_surface), a.debug)


def _compare(a, arms: list[str], per_surface: list[str]) -> int:
    base = load_train_config(a)
    fixed = sorted(set(ARM_KEYS) & base.model_fields_set)
    if fixed:
        raise input_error(COMMAND_LINE, fixed[0], "a key that no arm sets (arms and seeds: --arms, --seeds)",
                          f"{fixed[0]}={getattr(base, fixed[0])!r}")
    workspace = World(a.workdir)
    arms = ensure_embeddings(a.workdir, arms)
    reports = {arm: [run_arm(base, a.workdir, arm, s, a.retrain, quiet=a.quiet) for s in a.seeds] for arm in arms}
    separate = {arm: {sf: [run_arm(base, a.workdir, arm, s, a.retrain, surface=sf, quiet=a.quiet) for s in a.seeds]
                      for sf in base.resolved(workspace).surfaces} for arm in per_surface if arm in reports}
    summary = summarize(reports)
    table = format_table(summary, arms)
    world = reports[arms[0]][0]
    best_epochs = {arm: [r["best_check"]["epochs"] for r in runs] for arm, runs in reports.items()}
    header = (f"### Ranking arms (`python -m ranking.compare`)\n\nAUC on days ≥ {world['cutoff_day']} "
              f"(mean ± sd over seeds {a.seeds}; in brackets: lift over IDs-only, paired by seed). "
              f"World generator {world['generator_version']}; at most {base.epochs} epochs, each run's model the "
              f"check with the lowest validation loss on the {base.validation_days} day(s) before the cutoff (epochs at that check, "
              f"mean over seeds: {format_best_epochs(best_epochs)}).\n\n")
    out = {"arms": arms, "seeds": a.seeds, "epochs": base.epochs, "summary": summary, "best_epochs": best_epochs}
    checks = claim_checks(reports, workspace.vocabulary)
    if checks:
        out["checks"] = checks
        table += "\n\nThe cold-start claims (`ranking.claims`; paired by seed, mean ± standard error):\n\n" + format_checks(checks)
    if separate:
        out["per_surface"] = per_surface_summary(reports, separate)
        table += ("\n\nOne model with surface-specific heads vs one model per surface (AUC):\n\n"
                  + format_per_surface(out["per_surface"]))
    path = Path(a.workdir) / "ranking" / "compare.json"
    write_text_atomic(path, json.dumps(out, indent=2))  # `make results` runs arms side by side
    if a.results:
        write_results(Path(a.results), header + table)
    print(header + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
