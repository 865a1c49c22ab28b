"""`python -m pinlift.readouts.summary --workdir W`: one headline figure per stage of the loop, read from the
files each stage wrote (stages not run yet say so), and a flag per training run that looks under-trained."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pinlift.core.cli import add_debug_flag, add_quiet_flag, run_command
from pinlift.core.curves import TB_DIR, TRAIN_LOSS, read_scalars, training_check


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def stage_figures(workdir: Path | str) -> list[tuple[str, str, str]]:
    """(stage, headline, file) rows for every stage of the loop."""
    w = Path(workdir)
    rows = []
    world = _read(w / "world/world.json")
    rows.append(("world", "not generated" if world is None else
                 f"{world['preset']} seed {world['seed']}: {world['counts']['pins']:,} pins, "
                 f"{world['counts']['users']:,} users, {world['counts']['impressions']:,} impressions",
                 "world/world.json"))
    run = _read(w / "pinclip/runs/tiny/config.json")
    shipped = (run or {}).get("train", {}).get("pretrained")
    if shipped:   # the quick demo: no tower is pretrained in the workspace
        rows.append(("PinCLIP start", f"the PinCLIP model shipped as {shipped} (pinclip/towers/{shipped}.json says "
                     f"how it was made), {run['train']['steps']} more steps here", "pinclip/runs/tiny/config.json"))
    for tower in () if shipped else ("image", "text"):
        pre = _read(w / f"pinclip/pretrain/{tower}/report.json")
        rows.append((f"{tower} pretraining", "not run" if pre is None else
                     f"mAP {pre['mAP']:.3f} over {pre['labels_scored']} annotation labels on {pre['eval_pins']:,} new pins"
                     + (f"; top {pre['top_labels']}: {pre['mAP_top']:.3f} (chance {pre['mAP_top_chance']:.3f})"
                        if "mAP_top" in pre else ""),
                     f"pinclip/pretrain/{tower}/report.json"))
    ev = _read(w / "pinclip/runs/tiny/eval.json")
    if ev is None:
        rows.append(("PinCLIP eval", "not run", "pinclip/runs/tiny/eval.json"))
    else:
        parts = [f"{t} {ev['tasks'][t]['recall']['64']['R@10']:.3f}" for t in ev["tasks"]
                 if ev["tasks"][t].get("recall")]
        rows.append(("PinCLIP eval", "R@10 (64-d): " + ", ".join(parts), "pinclip/runs/tiny/eval.json"))
    latest = w / "embeddings/pinclip/LATEST"
    if latest.is_file():
        version = latest.read_text().strip()
        m = _read(w / "embeddings/pinclip" / version / "manifest.json")
        rows.append(("publish", f"pinclip@{version}: {m['rows']:,} pins, 64-d int8 = 64 bytes per pin and kind",
                     f"embeddings/pinclip/{version}/manifest.json"))
    else:
        rows.append(("publish", "not run", "embeddings/pinclip/LATEST"))
    cmp_ = _read(w / "ranking/compare.json")
    if cmp_ is None:
        rows.append(("ranking", "not run", "ranking/compare.json"))
    else:
        s = cmp_["summary"]
        cells = []
        for task, sl in (("homefeed/repin", "all"), ("homefeed/repin", "fresh"), ("ads/click", "new_ads")):
            arms = s.get(task, {}).get(sl, {})
            if "ids" in arms and "pinclip" in arms:
                cells.append(f"{task} {sl}: AUC {arms['ids']['auc_mean']:.4f} -> {arms['pinclip']['auc_mean']:.4f}")
        rows.append(("ranking", "; ".join(cells) or f"arms {cmp_['arms']}", "ranking/compare.json"))
    for exp in sorted((w / "experiments").glob("*/analysis.json")):
        analysis = _read(exp)
        v = analysis.get("verdict")
        report = str(exp.parent.relative_to(w) / "report.html")
        rows.append((f"A/B {exp.parent.name}", "no verdict: re-run `abtest analyze`" if v is None else
                     f"{v['primary']['key']}: {v['sentence']}", report))
        if cold := cold_start_lifts(analysis):
            rows.append((f"A/B {exp.parent.name} cold start", cold, report))
    return rows


def cold_start_lifts(analysis: dict) -> str:
    """The lifts of the cold-start cells (those the analysis compares with their overall cell), with CIs."""
    results = {r["key"]: r["relative"] for r in analysis["results"]}
    cells = [d["key"].split(" - ")[0] for d in analysis.get("lift_differences", [])]
    return "; ".join(f"{k} {format_lift(results[k]['value'])} [{format_lift(results[k]['ci_low'])}, {format_lift(results[k]['ci_high'])}]"
                     for k in cells if k in results and results[k]["value"] is not None)


def format_lift(x: float | None) -> str:
    """A relative lift as +x.x%, or — when there is none."""
    return "—" if x is None else f"{100 * x:+.1f}%"


RUN_ROOTS = ("pinclip/pretrain", "pinclip/runs", "ranking/runs")   # where the stages keep their training runs


def training_checks(workdir: Path | str) -> list[tuple[str, dict]]:
    """(run directory, ``training_check`` record) for every run with training curves (``RUN_ROOTS/<run>/tb``):
    steps against the configured ``steps`` and ``warmup_steps``, or a ranking run's checks against
    ``epochs x checks_per_epoch``."""
    w = Path(workdir)
    out = []
    for tb in sorted(tb for root in RUN_ROOTS for tb in w.glob(f"{root}/*/{TB_DIR}")):
        run = tb.parent.relative_to(w)
        loss = read_scalars(w / run).get(TRAIN_LOSS, [])
        values = [v for _, v in loss]
        config = _read(w / run / "run.json")["config"]
        if run.parts[0] == "ranking":
            progress = _read(w / run / "checkpoints/progress.json") or {"checks": [], "stopped": False}
            record = training_check(values, len(progress["checks"]), config["epochs"] * config["checks_per_epoch"],
                                    unit="checks", stopped_early=progress["stopped"], min_share=1.0)
        else:
            record = training_check(values, loss[-1][0] if loss else 0, config["steps"], warmup=config["warmup_steps"])
        out.append((str(run), record))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pinlift.readouts.summary", description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="pinwork")
    add_quiet_flag(ap)
    add_debug_flag(ap)
    a = ap.parse_args(argv)
    return run_command("pinlift summary", lambda: _print_summary(a.workdir), a.debug)


def _print_summary(workdir: str) -> int:
    rows = stage_figures(workdir)
    width = max(len(r[0]) for r in rows)
    print(f"pinlift demo summary ({workdir})")
    for stage, headline, path in rows:
        print(f"  {stage:<{width}}  {headline}\n  {'':<{width}}  -> {path}")
    for run, record in training_checks(workdir):
        if record["under_trained"]:
            print(f"  under-trained: {run}: {record['reason']} (curves: {run}/curves.png)")
    if (times := _read(Path(workdir) / "demo.json")) is not None:
        stages = ", ".join(f"{k} {v / 60:.1f}" for k, v in times["stages"].items())
        print(f"  wall time: {times['total_s'] / 60:.1f} min ({stages}) -> demo.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
