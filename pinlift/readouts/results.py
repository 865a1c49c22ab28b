"""`python -m pinlift.readouts.results --workdir W`: regenerate docs/results.md from a workspace's files —
image pretraining, PinCLIP Recall@K with the int8 check, the published artifact, the ranking arms and
the A/B experiments. Sections whose stage has not run are left out."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

from pinclip.training.ablations import ABLATIONS, ablation_table, describe_check
from pinlift.core.cli import add_debug_flag, run_command
from pinlift.core.schema import ADS_TABLE
from pinlift.readouts.summary import format_lift
from pinclip.embeddings import open_embeddings
from pinclip.embeddings import latest_version
from pinworld.files import write_text_atomic
from ranking.claims import format_checks
from ranking.compare import format_best_epochs, format_per_surface, format_table


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def world_section(w: Path) -> list[str]:
    m = _read(w / "world/world.json")
    if m is None:
        return []
    c = m["counts"]
    return ["## World", "", f"`{m['preset']}` preset, seed {m['seed']}, generator {m['generator_version']}: "
            f"{c['pins']:,} pins ({c[ADS_TABLE]:,} ads), {c['users']:,} users, {c['boards']:,} boards, "
            f"{c['impressions']:,} impressions over {m['config']['days']} days.", ""]


PRETRAINING = {  # tower -> (title, what it classifies from, closing remark)
    "image": ("Image-tower pretraining", "the pins' images", "Attribute terms are text-only by construction, so "
              "no image model can predict them."),
    "text": ("Text-tower pretraining", "the pins' descriptive and keyword texts", ""),
}


def pinclip_section(w: Path, run: str) -> list[str]:
    out = []
    for tower, (title, source, remark) in PRETRAINING.items():
        pre = _read(w / f"pinclip/pretrain/{tower}/report.json")
        if pre:
            out += [f"## {title}", "",
                    f"Multi-label classification of {pre['labels']} annotation terms from {source}, "
                    f"{pre['config']['steps']} steps: mAP {pre['mAP']:.3f} over {pre['labels_scored']} labels (chance "
                    f"{pre.get('mAP_chance', float('nan')):.3f}); over the {pre.get('top_labels', 0)} most frequent, "
                    f"{pre.get('mAP_top', float('nan')):.3f} (chance {pre.get('mAP_top_chance', float('nan')):.3f}); "
                    f"on {pre['eval_pins']:,} pins created after day {pre['cutoff_day']}. {remark}".rstrip(), ""]
    ev = _read(w / f"pinclip/runs/{run}/eval.json")
    if ev:
        variants = ev["variants"]
        out += [f"## PinCLIP Recall@K (run `{run}`)", "",
                f"Held-out pins ({ev['heldout_pins']:,}) against {ev['distractor_pins']:,} distractor pins; "
                "a hit when fewer than K distractors score at least the positive (the paper's §4.1).", "",
                "| task | queries | distractors | " + " | ".join(f"R@10 {v}" for v in variants)
                + " | R@100 64 | int8 drop (R@10) |",
                "|---|---:|---:|" + "---:|" * (len(variants) + 2)]
        for task, r in ev["tasks"].items():
            if not r.get("recall"):
                continue
            cells = [f"{r['recall'][v]['R@10']:.4f}" for v in variants] + [f"{r['recall']['64']['R@100']:.4f}"]
            drop = r["recall"]["64"]["R@10"] - r["recall"].get("64-int8", r["recall"]["64"])["R@10"]
            out.append(f"| {task} | {r['queries']:,} | {r['distractors']:,} | " + " | ".join(cells)
                       + f" | {100 * drop:+.2f} pt |")
        out.append("")
    return out


def ablations_section(w: Path) -> list[str]:
    ab = _read(w / "pinclip/ablations.json")
    if ab is None:
        return []
    runs = [name for name in ab["recall"] if name in ABLATIONS]
    out = [f"## PinCLIP baselines and ablations (reference run `{ab['reference']}`, row `fusion`)", "",
           "Each run is the reference's config with one change (`pinclip ablate`); an ablation that changes "
           "nothing in the reference is skipped. Same Recall@K protocol as above.", "",
           *(f"- `{name}`: {ABLATIONS[name].description}." for name in runs), "",
           *ablation_table(ab["recall"]), ""]
    for k, checks in ab["checks"].items():
        out.append(f"Targets at {k} (\"within two standard errors\": the difference is inside the binomial "
                   "sampling noise of the queries):")
        out.append("")
        for c in checks:
            out.append(f"- {'holds' if c['holds'] else '**fails**'}: {describe_check(c)}")
        out.append("")
    return out


def publish_section(w: Path, name: str = "pinclip") -> list[str]:
    if latest_version(w, name) is None:
        return []
    emb = open_embeddings(w, name)
    q = emb.data["fusion"][emb.present["fusion"]]
    clamped = float((np.abs(q.astype(np.int16)) == 127).mean())
    return ["## Published embeddings", "",
            f"`{emb.ref}`: {len(emb):,} pins; kinds {', '.join(emb.kinds)}; 64-d int8, global affine "
            f"(scale 0.5/127, zero point 0). 64 bytes per pin and kind against 1,024 bytes for float32 at 256-d "
            f"(16x smaller). Components at the clamp (|q| = 127): {clamped:.4%}.", ""]


def ranking_section(w: Path) -> list[str]:
    cmp_ = _read(w / "ranking/compare.json")
    if cmp_ is None:
        return []
    return ["## Ranking arms", "", f"AUC on the evaluation days, mean ± sd over seeds {cmp_['seeds']} "
            f"(at most {cmp_['epochs']} epochs, each run's model the check with the lowest loss on a held-out "
            f"validation day; epochs at that check, mean over seeds: {format_best_epochs(cmp_['best_epochs'])}); "
            "in brackets the lift over IDs-only, paired by seed; in square brackets 95% intervals from a bootstrap "
            "of users, paired between arms on the same resampled users.", "",
            format_table(cmp_["summary"], cmp_["arms"]), "",
            *(["The cold-start claims (`ranking.claims`): differences paired by seed, mean ± standard error; a "
               "claim holds when the difference is positive on every seed and more than twice its standard "
               "error (for the shuffled arm: when its lift is not). The floor is `topic_objects`, the topic one-hot "
               "of the topic a pin's objects show; `topic`, pinworld's latent true topic, is a reference that no "
               "reader of the content observes, reported and not judged.", "", format_checks(cmp_["checks"]), ""]
              if cmp_.get("checks") else []),
            *(["One model with surface-specific heads against one model per surface, same arm and seeds "
               "(`--per-surface`); AUC of each and the difference, paired by seed.", "",
               format_per_surface(cmp_["per_surface"]), ""] if cmp_.get("per_surface") else [])]


SEED_TABLE_KEYS = ("repins/homefeed", "fresh_repins/homefeed", "repins/related", "fresh_repins/related",
                   "new_ad_clicks/ads")


def experiments_table(analyses: list[dict]) -> list[str]:
    """One row per experiment: the headline lifts and the cold-start-minus-overall differences."""
    diff_keys = ("fresh_repins/homefeed - repins/homefeed", "new_ad_clicks/ads - clicks/ads")
    out = ["| experiment | " + " | ".join((*SEED_TABLE_KEYS, *diff_keys)) + " |",
           "|---|" + "---:|" * (len(SEED_TABLE_KEYS) + len(diff_keys))]
    for a in analyses:
        res = {r["key"]: r["relative"] for r in a["results"]}
        diffs = {d["key"]: d["difference"] for d in a.get("lift_differences", [])}
        cells = [format_lift(res[k]["value"]) if k in res else "" for k in SEED_TABLE_KEYS]
        for key in diff_keys:
            d = diffs.get(key)
            cells.append("" if d is None else f"{d['value']:+.1%} [{d['ci_low']:+.1%}, {d['ci_high']:+.1%}]")
        out.append(f"| `{a['experiment']}` | " + " | ".join(cells) + " |")
    return out


def abtest_section(w: Path) -> list[str]:
    analyses = [json.loads(p.read_text()) for p in sorted((w / "experiments").glob("*/analysis.json"))]
    out = []
    if len(analyses) > 1:
        out += ["## A/B experiments side by side", "", "Relative lifts (treatment over control).", "",
                *experiments_table(analyses), ""]
    for a in analyses:
        out += [f"## A/B experiment `{a['experiment']}`", "",
                f"Users: control {a['users']['control']:,}, treatment {a['users']['treatment']:,}; "
                f"SRM p = {a['srm']['p_value']:.3g}. Multiple testing: {a['multiple_testing']}.", "",
                "| metric | lift | 95% CI | p (adjusted) | MDE (relative) |", "|---|---:|---:|---:|---:|"]
        for r in a["results"]:
            rel, mde = r["relative"], r.get("mde") or {}
            padj = "" if r.get("p_adjusted") is None else f"{r['p_adjusted']:.3g}"
            mde_s = "" if mde.get("relative") is None else f"{mde['relative']:.1%}"
            ci = "" if rel["ci_low"] is None else f"[{format_lift(rel['ci_low'])}, {format_lift(rel['ci_high'])}]"
            out.append(f"| {r['key']} | {format_lift(rel['value']) if r.get('excluded') is None else r['excluded']} | {ci} | "
                       f"{padj}{' *' if r.get('significant') else ''} | {mde_s} |")
        for d in a.get("lift_differences", []):
            diff = d["difference"]
            out.append(f"\n{d['key']}: {diff['value']:+.1%} [{diff['ci_low']:+.1%}, {diff['ci_high']:+.1%}] "
                       "(cold-start lift minus overall lift, paired CI)")
        out.append("")
    return out


def render(workdir: Path | str, run: str = "tiny") -> str:
    w = Path(workdir)
    lines = ["# pinlift results", "", f"Regenerated by `python -m pinlift.readouts.results --workdir {w}`.", ""]
    for section in (world_section(w), pinclip_section(w, run), ablations_section(w), publish_section(w), ranking_section(w),
                    abtest_section(w)):
        lines += section
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pinlift.readouts.results", description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="pinwork")
    ap.add_argument("--run", default="tiny", help="the PinCLIP run to report")
    ap.add_argument("--out", default=None, help="the markdown file to write (default: W/results.md; "
                    "`make results` writes docs/results.md)")
    add_debug_flag(ap)
    a = ap.parse_args(argv)
    return run_command("pinlift results", lambda: _write(a), a.debug)


# a section another command writes into the same file (``<!-- NAME:begin -->`` ... ``<!-- NAME:end -->``, under
# its heading): kept as it is when the rest is regenerated
OWNED_SECTION = re.compile(r"^## [^\n]*\n\n<!-- (\w+):begin -->\n.*?<!-- \1:end -->\n", re.S | re.M)


def with_owned_sections(new: str, old: str) -> str:
    """``new`` followed by the sections of ``old`` that other commands write."""
    kept = [m.group(0) for m in OWNED_SECTION.finditer(old)]
    return "\n".join([new, *kept]) if kept else new


def _write(a) -> int:
    out = Path(a.out) if a.out else Path(a.workdir) / "results.md"
    old = out.read_text() if out.is_file() else ""
    write_text_atomic(out, with_owned_sections(render(a.workdir, a.run), old))
    print(f"pinlift: wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
