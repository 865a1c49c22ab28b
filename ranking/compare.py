"""`python -m ranking.compare`: the ranking arms side by side, over seeds.

Arms differ only in the dense content feature: IDs only; + PinCLIP; + PinCLIP shuffled across pins (must
show no lift); + the topic one-hot as the pin's objects show it (the floor: what a content reader could
reach); + the one-hot of pinworld's latent true topic (a reference, not a floor: no content shows it in
~2% of pins); + oracle features (the ceiling). Data, seeds, the training rule (at most ``--epochs``, early
stopping on the same validation day) and widths are identical: the IDs-only arm has the content inputs
too, every pin marked missing (with a narrower input layer it scored 0.003–0.006 AUC lower on the demo
world, which had read as a "lift" of the shuffled arm; so had training two full epochs, where random
per-pin inputs slowed the ID tables' overfitting). Any published vectors are an arm too, named on the command
line (``--arms ids,mine=teamvec@v0001``); arms whose vectors are neither published nor publishable here (the
ground-truth arms on a team's own data) are skipped in one line. ``--per-surface`` also trains one model per
surface for chosen arms. The runs' settings are ``ranking.train``'s (``[CONFIG.yaml] [key=value ...]``, ``--epochs``,
...), but for the keys each arm and seed sets (``ARM_KEYS``). A run already trained (eval.json present) with
the same settings is reused; one that differs only in keys that extend a run (more epochs) resumes; one
started with other settings is refused in one line (``--retrain`` trains it again). The table (per slice its
rows, positives and users; mean AUC and the lift over IDs-only, mean ± sd over seeds, paired by seed, each with
an interval from a bootstrap of users, paired between arms on the same resampled users) goes to ``W/ranking/compare.json`` and, given
``--results FILE``, to that markdown file's ranking-compare section (``make results`` writes
``docs/results.md`` with ``pinlift.readouts.results``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from pinclip.embeddings import latest_version, versions
from pinlift.core.cli import add_debug_flag, add_quiet_flag, run_command
from pinlift.core.config import COMMAND_LINE, settings_parser
from pinlift.core.docs import replace_section
from pinlift.core.errors import InputError, input_error
from pinlift.core.registry import embedding_sources, publish_source
from pinlift.core.runs import RUN_FILE, RunDir
from pinworld.files import write_text_atomic
from pinworld.world import NoGroundTruth, World
from ranking.arms import ARMS, Arm, parse_arm
from ranking.claims import IMPRESSION_SLICES, claim_checks, format_checks, key_tasks
from ranking.metrics import Resamples, format_ci, interval, load_resamples
from ranking.train import EXTENDS, PROG, TrainConfig, Trainer, add_settings_arguments, load_train_config, run_settings

ARM_KEYS = ("embeddings", "shuffle_embeddings", "empty_content", "seed", "surfaces")  # set per arm and seed
SLICES = ("all", "fresh", "older", "unseen_pins", "new_ads", "older_ads", *IMPRESSION_SLICES)
RESULTS_SECTION = "ranking-compare"   # its section of docs/results.md


def ensure_embeddings(workdir: str, arms: list[Arm]) -> list[Arm]:
    """Publish what an arm needs from a registered embedding source (pinlift.core.registry: pinworld's oracle
    and topic codes); drop, saying so in one line, arms whose embedding is neither published nor publishable
    (a source that reads pinworld's ground truth, on a workspace without it)."""
    kept, skipped = [], {}
    for arm in arms:
        name, _, version = (arm.embeddings or "").partition("@")
        try:
            if name in embedding_sources() and latest_version(workdir, name) is None:
                publish_source(name, workdir)
        except NoGroundTruth:
            skipped.setdefault("the workspace has no ground truth (pinworld's own worlds have it)", []).append(arm.name)
            continue
        if name and latest_version(workdir, name) is None:
            skipped.setdefault(f"nothing published under {name!r} yet", []).append(arm.name)
            continue
        if version and version not in versions(workdir, name):
            skipped.setdefault(f"no version {version!r} of {name!r}", []).append(arm.name)
            continue
        kept.append(arm)
    if skipped:
        print("ranking.compare: skipping " + "; ".join(f"{', '.join(map(repr, names))}: {why}"
                                                      for why, names in skipped.items()), file=sys.stderr)
    return kept


def arm_config(base: TrainConfig, a: Arm, seed: int, surface: str | None = None) -> TrainConfig:
    """``base`` with the keys of an arm and seed: on every surface with one model, or on ``surface`` alone."""
    # IDs-only keeps the content inputs, empty, so that every arm has the same widths
    return TrainConfig.model_validate({**base.model_dump(), "embeddings": a.embeddings, "shuffle_embeddings": a.shuffled,
                                       "empty_content": a.embeddings is None, "seed": seed,
                                       "surfaces": [surface] if surface else base.surfaces})


def run_arm(base: TrainConfig, workdir: str, arm: Arm, seed: int, retrain: bool = False,
            surface: str | None = None, quiet: bool = False) -> dict:
    """Train (or reuse, or resume) one arm and seed. A run is reused only when its run file's hash is that of
    these settings (the embedding's version included); one started with other settings, or with no run file,
    is refused."""
    cfg = arm_config(base, arm, seed, surface)
    run = f"{arm.name}_{surface}_s{seed}" if surface else f"{arm.name}_s{seed}"
    record = RunDir(Path(workdir) / "ranking" / "runs", run, PROG, extends=EXTENDS)
    report = record.path / "eval.json"
    if report.is_file() and not retrain:
        settings = run_settings(cfg, World(workdir))
        saved = record.saved()
        if saved is None:
            raise input_error(record.path, RUN_FILE, "the record of how the run was trained (pass --retrain)",
                              "no such file")
        record.check_resume(settings)
        if saved["config"] == settings:
            return json.loads(report.read_text())
    return Trainer(cfg, workdir, run, restart=retrain, quiet=quiet).fit()   # extending keys changed: resume


def _sd(x: np.ndarray) -> float:
    return float(x.std(ddof=1)) if len(x) > 1 else 0.0


def _resampled(resampled: dict[str, Resamples], runs: list[dict], task: str, sl: str,
               paired_with: dict) -> np.ndarray:
    """One slice's resampled AUCs (seeds, resamples) in ``runs``, refused unless every run was evaluated on
    the same rows as ``paired_with``, so that the same resampled users weigh the same rows."""
    digest = resampled[paired_with["run"]][task, sl][1]
    for r in runs:
        found = resampled[r["run"]][task, sl][1]
        if found != digest:
            raise input_error(f"ranking runs {paired_with['run']!r} and {r['run']!r}", f"{task} {sl}",
                              "the same evaluation rows, to pair them (same data and cutoff; or --retrain)",
                              f"other rows (digests {digest} and {found})")
    return np.array([resampled[r["run"]][task, sl][0] for r in runs])


def summarize(reports: dict[str, list[dict]], resampled: dict[str, Resamples]) -> dict:
    """{task: {slice: {arm: entry}}}: the slice's rows, positives and users; the mean AUC over seeds (± sd)
    and its interval (the user bootstrap, resamples averaged over seeds); beside IDs-only, the lift (minus
    the IDs-only AUC of the same seed, mean ± sd) and its interval, paired on the same resampled users.
    ``resampled``: by run name, what ``ranking.metrics.load_resamples`` reads."""
    out: dict = {}
    base = reports.get("ids")
    for arm, runs in reports.items():
        for task in runs[0]["metrics"]:
            for sl in SLICES:
                aucs = [r["metrics"][task].get(sl) for r in runs]
                if any(a is None for a in aucs):
                    continue
                auc = np.array([a["auc"] for a in aucs])
                boot = _resampled(resampled, runs, task, sl, paired_with=(base or runs)[0])
                entry = {"auc_mean": float(auc.mean()), "auc_sd": _sd(auc), "auc_ci": interval(boot.mean(0)),
                         **{k: aucs[0][k] for k in ("n", "positives", "users")}, "seeds": len(auc)}
                if base is not None:
                    ref_runs = base[:len(auc)]
                    lift = auc - np.array([r["metrics"][task][sl]["auc"] for r in ref_runs])
                    ref = _resampled(resampled, ref_runs, task, sl, paired_with=base[0])
                    entry.update(lift_mean=float(lift.mean()), lift_sd=_sd(lift),
                                 lift_ci=interval((boot - ref).mean(0)))
                out.setdefault(task, {}).setdefault(sl, {})[arm] = entry
    return out


def per_surface_summary(joint: dict[str, list[dict]], separate: dict[str, dict[str, list[dict]]],
                        resampled: dict[str, Resamples]) -> list[dict]:
    """One model for all surfaces vs one model per surface: per arm, key task and slice, the mean AUC of
    each and the difference (separate − joint, mean ± sd over seeds, paired by seed; its interval paired on
    the same resampled users)."""
    rows = []
    for arm, by_surface in separate.items():
        for task in key_tasks(joint[arm][0]["metrics"]):
            runs = by_surface.get(task.split("/")[0])
            if not runs:
                continue
            for sl in ("all", "fresh", "new_ads"):
                if runs[0]["metrics"][task].get(sl) is None:
                    continue
                one = joint[arm][:len(runs)]
                a = np.array([r["metrics"][task][sl]["auc"] for r in one])
                b = np.array([r["metrics"][task][sl]["auc"] for r in runs])
                d = b - a
                boot = (_resampled(resampled, runs, task, sl, paired_with=one[0])
                        - _resampled(resampled, one, task, sl, paired_with=one[0])).mean(0)
                rows.append({"arm": arm, "task": task, "slice": sl, "joint": float(a.mean()),
                             "separate": float(b.mean()), "diff_mean": float(d.mean()), "diff_sd": _sd(d),
                             "diff_ci": interval(boot), "n": runs[0]["metrics"][task][sl]["n"], "seeds": len(d)})
    return rows


def format_per_surface(rows: list[dict]) -> str:
    lines = ["| arm | task | slice | n | one model | one per surface | per surface − one |",
             "|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        sd = f" ± {r['diff_sd']:.4f}" if r["seeds"] > 1 else ""
        lines.append(f"| {r['arm']} | {r['task']} | {r['slice']} | {r['n']:,} | {r['joint']:.4f} | "
                     f"{r['separate']:.4f} | {r['diff_mean']:+.4f}{sd} {format_ci(r['diff_ci'], signed=True)} |")
    return "\n".join(lines)


def format_table(summary: dict, arms: list[str]) -> str:
    """Per key task (``ranking.claims.key_tasks``) and slice: rows, positives and users; each arm's mean AUC
    (± sd over seeds) and interval, or its lift over IDs-only with the lift's paired interval."""
    lines = ["| task | slice | n | positives | users | " + " | ".join(arms) + " |",
             "|---|---|---:|---:|---:|" + "---:|" * len(arms)]
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
                    sd = f" ± {e['auc_sd']:.4f}" if e["seeds"] > 1 else ""
                    cells.append(f"{e['auc_mean']:.4f}{sd} {format_ci(e['auc_ci'])}")
                else:
                    sd = f" ± {e['lift_sd']:.4f}" if e["seeds"] > 1 else ""
                    ci = format_ci(e["lift_ci"], signed=True)
                    cells.append(f"{e['auc_mean']:.4f} ({e['lift_mean']:+.4f}{sd} {ci})")
            e = next(iter(row.values()))
            lines.append(f"| {task} | {sl} | {e['n']:,} | {e['positives']:,} | {e['users']:,} | "
                         + " | ".join(cells) + " |")
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
    ap.add_argument("--arms", default=",".join(ARMS), help="comma-separated: registered arms (" + ", ".join(ARMS)
                    + ") or NAME=EMBEDDING[@VERSION], any published vectors (default: the registered arms)")
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
    try:
        arms = [parse_arm(x) for x in a.arms.split(",") if x]
    except InputError as err:
        ap.error(str(err))
    names = [x.name for x in arms]
    per_surface = [x for x in a.per_surface.split(",") if x]
    if len(set(names)) != len(names):
        ap.error(f"--arms: expected distinct arm names, found {', '.join(names)}")
    if any(x not in names for x in per_surface):
        ap.error(f"--per-surface: expected arms among --arms ({', '.join(names)}), found {a.per_surface!r}")
    return run_command(PROG, lambda: _compare(a, arms, per_surface), a.debug)


def _compare(a, arms: list[Arm], per_surface: list[str]) -> int:
    base = load_train_config(a)
    fixed = sorted(set(ARM_KEYS) & base.model_fields_set)
    if fixed:
        raise input_error(COMMAND_LINE, fixed[0], "a key that no arm sets (arms and seeds: --arms, --seeds)",
                          f"{fixed[0]}={getattr(base, fixed[0])!r}")
    workspace = World(a.workdir)
    kept = ensure_embeddings(a.workdir, arms)
    if not kept:
        raise input_error(COMMAND_LINE, "--arms", "an arm whose embedding is published or publishable",
                          ", ".join(x.name for x in arms))
    arms = [x.name for x in kept]
    reports = {x.name: [run_arm(base, a.workdir, x, s, a.retrain, quiet=a.quiet) for s in a.seeds] for x in kept}
    separate = {x.name: {sf: [run_arm(base, a.workdir, x, s, a.retrain, surface=sf, quiet=a.quiet) for s in a.seeds]
                         for sf in base.resolved(workspace).surfaces} for x in kept if x.name in per_surface}
    every_run = [r for runs in [*reports.values(), *(rs for by in separate.values() for rs in by.values())]
                 for r in runs]
    resampled = {r["run"]: load_resamples(Path(a.workdir) / "ranking" / "runs" / r["run"]) for r in every_run}
    summary = summarize(reports, resampled)
    table = format_table(summary, arms)
    world = reports[arms[0]][0]
    best_epochs = {arm: [r["best_check"]["epochs"] for r in runs] for arm, runs in reports.items()}
    boot, warning = world["bootstrap"], world["validation_warning"]
    header = (f"### Ranking arms (`python -m ranking.compare`)\n\nAUC on days ≥ {world['cutoff_day']} "
              f"(mean ± sd over seeds {a.seeds}; in brackets: lift over IDs-only, paired by seed). In square "
              f"brackets: {boot['level']:.0%} intervals from {boot['resamples']} resamples of users (Poisson "
              "bootstrap), the same resampled users for every arm and seed, so that a lift's interval is paired. "
              f"World generator {world['generator_version']}; at most {base.epochs} epochs, each run's model the "
              f"check with the lowest validation loss on the {base.validation_days} day(s) before the cutoff "
              f"({world['validation_examples']:,} rows, {world['validation_positives']:,} positives; epochs at that "
              f"check, mean over seeds: {format_best_epochs(best_epochs)}).\n\n"
              + (f"**{warning}**\n\n" if warning else ""))
    out = {"arms": arms, "seeds": a.seeds, "epochs": base.epochs, "summary": summary, "best_epochs": best_epochs,
           "bootstrap": boot, "validation_warning": warning}
    checks = claim_checks(reports, workspace.vocabulary)
    if checks:
        out["checks"] = checks
        table += "\n\nThe cold-start claims (`ranking.claims`; paired by seed, mean ± standard error):\n\n" + format_checks(checks)
    if separate:
        out["per_surface"] = per_surface_summary(reports, separate, resampled)
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
