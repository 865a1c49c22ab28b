"""The validation study: does the analysis hold its error rates on this simulator?

``python -m abtest.validation exp.yaml`` (or ``abtest validate exp.yaml``):

1. Simulate the experiment's days once with every sampled user served by the control arm under two
   potential outcomes: as is, and with an injected lift (ground-truth P(repin) and P(click) × (1 + δ),
   same slates, same random numbers).
2. Per-user metric values (and pre-period covariates) for both, once, in DuckDB (the analysis SQL).
3. Re-randomise R times (default 2,000) by re-salting the hash assignment, in numpy; recompute the
   per-variant sufficient statistics as matrix products and run the statistics vectorised:
   * A/A (both variants from the un-lifted outcome): false-positive rate at alpha per metric × surface
     for Welch / delta-method and CUPED, uniformity of p-values (Kolmogorov–Smirnov), the
     family-wise false-positive rate after the multiple-testing adjustment, and the same for a naive
     impression-level CTR t-test that ignores that impressions cluster within users;
   * injected lift (treatment users take the lifted outcome): coverage of the known lift by the
     relative-lift CIs, and power;
   * SRM: false alarms at the configured split, detection rate when the assignment is skewed;
   * CUPED: reported variance-reduction factor (1 − ρ²) against the observed variance ratio of the
     lift estimates.
Results go to ``W/experiments/<name>-validation/`` (validation.json, validation.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats as sps

from abtest import stats
from abtest.assign import buckets, variant_of_buckets
from abtest.config import ExperimentConfig, dump_config, load_config
from abtest.errors import AbtestError
from abtest.metrics import Cell, Metric, Sources, cells_of, open_readonly, per_user_values
from abtest.simulate import simulate_potential_outcomes
from abtest.storage import atomic_files

FPR_BAND = (0.035, 0.067)
COVERAGE_BAND = (0.93, 0.97)
KS_MIN_P = 0.01


def expected_lift(metric: Metric, lift: dict[str, float]) -> float:
    """The relative lift a metric must show when P(action) is multiplied by (1 + lift[action])."""
    num = 1 + lift.get(metric.numerator.action, 0.0)
    den = 1 + lift.get(metric.denominator.action, 0.0) if metric.denominator is not None else 1.0
    return num / den - 1


def _per_user(directory: Path, cfg: ExperimentConfig, cells: list[Cell]) -> dict[str, np.ndarray]:
    src = Sources.for_experiment(cfg.workdir, directory)
    window = None
    if cfg.pre_period_days and src.impressions is not None:
        window = (cfg.days.start - cfg.pre_period_days, cfg.days.start)
    with open_readonly(src) as con:
        return per_user_values(con, cells, window)


class _Sums:
    """Per-variant sums of per-user columns over R assignments, as matrix products."""

    def __init__(self, assignment: np.ndarray):
        self.masks = [(assignment == v).astype(np.float64) for v in (0, 1)]
        self.n = [m.sum(1) for m in self.masks]

    def s(self, v: int, col: np.ndarray) -> np.ndarray:
        return self.masks[v] @ col


def _mean_stats(sums: _Sums, v: int, x: np.ndarray) -> stats.MeanStats:
    return stats.MeanStats(sums.n[v], sums.s(v, x), sums.s(v, x * x))


def _ratio_stats(sums: _Sums, v: int, x: np.ndarray, y: np.ndarray) -> stats.RatioStats:
    return stats.RatioStats(sums.n[v], sums.s(v, x), sums.s(v, y), sums.s(v, x * x), sums.s(v, y * y),
                            sums.s(v, x * y))


def _cuped_stats(sums: _Sums, v: int, x: np.ndarray, c: np.ndarray) -> stats.CupedStats:
    return stats.CupedStats(sums.n[v], sums.s(v, x), sums.s(v, x * x), sums.s(v, c), sums.s(v, c * c),
                            sums.s(v, x * c))


def _summary_p(p: np.ndarray, alpha: float) -> dict:
    p = p[np.isfinite(p)]
    if len(p) == 0:
        return {"fpr": None, "ks_p": None, "ks_d": None, "runs": 0}
    ks = sps.kstest(p, "uniform")
    return {"fpr": float(np.mean(p < alpha)), "ks_d": float(ks.statistic), "ks_p": float(ks.pvalue), "runs": int(len(p))}


def _effects(cell: Cell, sums: _Sums, ctrl: dict, trt: dict, alpha: float, covariate: bool):
    """(plain effect, CUPED result or None) for one cell; control users read ``ctrl``, treatment ``trt``."""
    i = cell.index
    with np.errstate(divide="ignore", invalid="ignore"):
        if cell.metric.kind == "ratio":
            eff = stats.ratio_test(_ratio_stats(sums, 0, ctrl[f"x{i}"], ctrl[f"y{i}"]),
                                   _ratio_stats(sums, 1, trt[f"x{i}"], trt[f"y{i}"]), alpha=alpha)
            return eff, None
        eff = stats.welch_test(_mean_stats(sums, 0, ctrl[f"x{i}"]), _mean_stats(sums, 1, trt[f"x{i}"]), alpha=alpha)
        cup = None
        if covariate:
            cup = stats.cuped_test(_cuped_stats(sums, 0, ctrl[f"x{i}"], ctrl[f"c{i}"]),
                                   _cuped_stats(sums, 1, trt[f"x{i}"], trt[f"c{i}"]), alpha=alpha)
        return eff, cup


def _covers(e: stats.Estimate, target: float) -> float:
    ok = np.isfinite(e.ci_low) & np.isfinite(e.ci_high)
    return float(np.mean((e.ci_low[ok] <= target) & (target <= e.ci_high[ok]))) if ok.any() else float("nan")


def resalt_study(cfg: ExperimentConfig, cells: list[Cell], base: dict, lifted: dict, lift: dict[str, float],
                 resalts: int, skews=(0.02, 0.05), progress: bool = True) -> dict:
    """All the re-randomisation measurements from per-user values of the two potential outcomes."""
    alpha = cfg.alpha
    users = base["user_id"]
    if not np.array_equal(users, lifted["user_id"]):
        raise AbtestError("abtest validate: potential outcomes: expected the same exposed users in both, found different")
    covariate = any(k.startswith("c") for k in base)
    t0 = time.time()
    b = np.stack([buckets(f"{cfg.assignment_salt}/resalt-{r}", users) for r in range(resalts)])
    hashing_s = time.time() - t0
    shares = cfg.traffic.shares()
    assignment = variant_of_buckets(b, shares)
    sums = _Sums(assignment)
    out_cells, aa_p_primary = [], []
    for cell in cells:
        aa, aa_cuped = _effects(cell, sums, base, base, alpha, covariate)
        inj, inj_cuped = _effects(cell, sums, base, lifted, alpha, covariate)
        target = expected_lift(cell.metric, lift)
        rec = {"key": cell.key, "kind": cell.metric.kind, "method": aa.method,
               "aa": _summary_p(np.asarray(aa.absolute.p_value, float), alpha),
               "injected": {"expected_lift": target, "mean_estimate": float(np.nanmean(inj.relative.value)),
                            "coverage": _covers(inj.relative, target),
                            "power": float(np.mean(np.asarray(inj.absolute.p_value) < alpha))}}
        primary = aa.absolute.p_value
        if aa_cuped is not None:
            raw_var = float(np.nanvar(aa.relative.value))
            cup_var = float(np.nanvar(aa_cuped.effect.relative.value))
            rec["cuped"] = {"aa": _summary_p(np.asarray(aa_cuped.effect.absolute.p_value, float), alpha),
                            "correlation": float(np.nanmean(aa_cuped.correlation)),
                            "reported_variance_factor": float(np.nanmean(aa_cuped.variance_reduction_factor)),
                            "observed_variance_ratio": cup_var / raw_var if raw_var > 0 else None,
                            "injected_coverage": _covers(inj_cuped.effect.relative, target),
                            "injected_power": float(np.mean(np.asarray(inj_cuped.effect.absolute.p_value) < alpha))}
            primary = aa_cuped.effect.absolute.p_value
        aa_p_primary.append(np.asarray(primary, float))
        if cell.metric.name == "ctr":
            i = cell.index
            imp, clk = base[f"y{i}"], base[f"x{i}"]
            # every impression treated as an independent unit: clicks are 0/1, so Σx² = Σx
            naive = stats.welch_test(stats.MeanStats(sums.s(0, imp), sums.s(0, clk), sums.s(0, clk)),
                                     stats.MeanStats(sums.s(1, imp), sums.s(1, clk), sums.s(1, clk)), alpha=alpha)
            rec["naive_impression_ttest"] = _summary_p(np.asarray(naive.absolute.p_value, float), alpha)
        out_cells.append(rec)
    # family-wise: any cell significant after the configured adjustment, per re-salt
    p_matrix = np.stack(aa_p_primary, 1)
    any_reject = []
    for row in p_matrix:
        ok = np.isfinite(row)
        any_reject.append(bool(stats.adjust_p_values(row[ok], cfg.multiple_testing, alpha=alpha).reject.any())
                          if ok.any() else False)
    # SRM on exposure counts
    srm = {"threshold": cfg.srm_threshold, "exposed_users": int(len(users))}

    def srm_rate(actual_shares) -> float:
        v = variant_of_buckets(b, actual_shares)
        counts = np.stack([(v == 0).sum(1), (v == 1).sum(1)], 1)
        return float(np.mean([stats.srm_test(c, shares, threshold=cfg.srm_threshold).mismatch for c in counts]))

    srm["false_alarm_rate"] = srm_rate(shares)
    total = sum(shares)
    srm["skewed"] = []
    for s in skews:
        skewed = (shares[0] - s * total, shares[1] + s * total)
        srm["skewed"].append({"actual_shares": [round(x, 4) for x in skewed], "detection_rate": srm_rate(skewed)})
    return {"resalts": resalts, "users": int(len(users)), "hashing_seconds": round(hashing_s, 2),
            "users_per_variant_mean": [float(sums.n[0].mean()), float(sums.n[1].mean())],
            "cells": out_cells, "srm": srm,
            "family_wise_false_positive_rate": float(np.mean(any_reject))}


def checks(study: dict) -> list[dict]:
    """Pass/fail lines against the acceptance bands."""
    out = []

    def add(name, value, ok, band):
        out.append({"check": name, "value": value, "band": band, "ok": bool(ok)})

    lo, hi = FPR_BAND
    for c in study["cells"]:
        aa = c["aa"]
        if aa["fpr"] is None:
            continue
        add(f"A/A FPR {c['key']} ({c['method']})", aa["fpr"], lo <= aa["fpr"] <= hi, list(FPR_BAND))
        add(f"A/A p-values uniform {c['key']} (KS p)", aa["ks_p"], aa["ks_p"] > KS_MIN_P, f"> {KS_MIN_P}")
        if "cuped" in c and c["cuped"]["aa"]["fpr"] is not None:
            f = c["cuped"]["aa"]["fpr"]
            add(f"A/A FPR {c['key']} (cuped)", f, lo <= f <= hi, list(FPR_BAND))
        cov = c["injected"]["coverage"]
        add(f"coverage {c['key']} (lift {c['injected']['expected_lift']:+.3f})", cov,
            COVERAGE_BAND[0] <= cov <= COVERAGE_BAND[1], list(COVERAGE_BAND))
    # The naive test's inflation grows with impressions per user times their within-user correlation:
    # it must show on the surface where users see the most impressions (Homefeed); Ads slates are short.
    naive = {c["key"]: c["naive_impression_ttest"]["fpr"] for c in study["cells"] if "naive_impression_ttest" in c}
    if naive:
        key = max(naive, key=naive.get)
        add(f"naive impression-level CTR t-test inflated (worst: {key}; all: "
            f"{', '.join(f'{k} {v:.3f}' for k, v in naive.items())})", naive[key], naive[key] > hi, f"> {hi}")
    srm = study["srm"]
    add("SRM false alarms at the configured split", srm["false_alarm_rate"], srm["false_alarm_rate"] <= 0.005, "<= 0.005")
    worst = srm["skewed"][-1]
    add(f"SRM detection at shares {worst['actual_shares']}", worst["detection_rate"], worst["detection_rate"] >= 0.9,
        ">= 0.9")
    return out


def render_markdown(report: dict) -> str:
    s = report["study"]
    lines = [f"# Validation of `{report['experiment']}`", "",
             f"{s['resalts']:,} re-randomisations (re-salted hash assignment) of {s['users']:,} exposed users over "
             f"fixed simulated logs, days {report['days'][0]}–{report['days'][1] - 1}; injected lift "
             f"{report['lift']} on the ground-truth probabilities; alpha {report['alpha']}.", "",
             "| metric / surface | method | A/A FPR | KS p | CUPED FPR | CUPED var. factor (reported / observed) "
             "| expected lift | mean estimate | coverage | power |", "|" + "---|" * 10]
    for c in s["cells"]:
        cu = c.get("cuped")
        f = lambda x, p=3: "—" if x is None else f"{x:.{p}f}"  # noqa: E731
        lines.append(f"| {c['key']} | {c['method']} | {f(c['aa']['fpr'])} | {f(c['aa']['ks_p'])} | "
                     f"{f(cu['aa']['fpr']) if cu else '—'} | "
                     f"{(f(cu['reported_variance_factor'], 2) + ' / ' + f(cu['observed_variance_ratio'], 2)) if cu else '—'} | "
                     f"{c['injected']['expected_lift']:+.3f} | {c['injected']['mean_estimate']:+.4f} | "
                     f"{f(c['injected']['coverage'])} | {f(c['injected']['power'])} |")
    naive = [c for c in s["cells"] if "naive_impression_ttest" in c]
    lines += ["", "Naive impression-level CTR t-test (impressions as independent units), A/A:", ""]
    lines += [f"- {c['key']}: FPR {c['naive_impression_ttest']['fpr']:.3f} (KS p "
              f"{c['naive_impression_ttest']['ks_p']:.2g}) vs {c['aa']['fpr']:.3f} with the delta method"
              for c in naive]
    srm = s["srm"]
    lines += ["", f"SRM (alert at p < {srm['threshold']}): false alarms {srm['false_alarm_rate']:.4f} at the configured split; "
              + "; ".join(f"detection {k['detection_rate']:.3f} at actual shares {k['actual_shares']}" for k in srm["skewed"]),
              "", f"Family-wise A/A false-positive rate after {report['multiple_testing']} across "
              f"{len(s['cells'])} tests: {s['family_wise_false_positive_rate']:.3f}", "", "## Checks", ""]
    lines += [f"- [{'x' if c['ok'] else ' '}] {c['check']}: {c['value'] if c['value'] is None else round(c['value'], 4)} "
              f"(band {c['band']})" for c in report["checks"]]
    return "\n".join(lines) + "\n"


def run_validation(cfg: ExperimentConfig, *, resalts: int = 2000, lift: float = 0.05,
                   out_dir: Path | None = None, progress: bool = True, reuse: bool = False) -> dict:
    """The whole study; returns the report (also written to ``out_dir``)."""
    if resalts < 100:
        raise AbtestError(f"abtest validate: --resalts: expected at least 100, found {resalts}")
    start = time.time()
    out_dir = Path(out_dir) if out_dir else Path(cfg.workdir) / "experiments" / f"{cfg.name}-validation"
    base_arm = cfg.arms.control.model_copy(update={"lift": {}})
    lifts = {"repin": lift, "click": lift}
    arms = {"base": base_arm, "lifted": base_arm.model_copy(update={"lift": lifts})}
    potential = out_dir / "potential"
    if not (reuse and (potential / "potential.json").is_file()):
        out_dir.mkdir(parents=True, exist_ok=True)
        simulate_potential_outcomes(cfg, arms, potential, progress=progress)
    sim_s = time.time() - start
    cells = cells_of(cfg.metric_list())
    t0 = time.time()
    base = _per_user(potential / "base", cfg, cells)
    lifted = _per_user(potential / "lifted", cfg, cells)
    sql_s = time.time() - t0
    t0 = time.time()
    study = resalt_study(cfg, cells, base, lifted, lifts, resalts, progress=progress)
    report = {"experiment": cfg.name, "days": [cfg.days.start, cfg.days.end], "lift": lifts, "alpha": cfg.alpha,
              "multiple_testing": cfg.multiple_testing, "study": study,
              "seconds": {"simulate": round(sim_s, 1), "per_user_sql": round(sql_s, 1),
                          "resalting": round(time.time() - t0, 1)},
              "config": dump_config(cfg)}
    report["checks"] = checks(study)
    with atomic_files(out_dir, ["validation.json", "validation.md"]) as tmp:
        (tmp / "validation.json").write_text(json.dumps(report, indent=2))
        (tmp / "validation.md").write_text(render_markdown(report))
    report["out_dir"] = str(out_dir)
    return report


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("config", help="experiment YAML (its control arm, days, users and metrics are used)")
    ap.add_argument("--workdir", default=None, help="override the file's workdir")
    ap.add_argument("--resalts", type=int, default=2000, help="re-randomisations (default 2000)")
    ap.add_argument("--lift", type=float, default=0.05, help="injected relative lift on P(repin), P(click)")
    ap.add_argument("--out", default=None, help="output directory (default W/experiments/<name>-validation)")
    ap.add_argument("--reuse", action="store_true", help="reuse simulated potential outcomes in the output directory")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")


def run_from_args(a: argparse.Namespace) -> int:
    cfg = load_config(a.config, workdir=a.workdir)
    report = run_validation(cfg, resalts=a.resalts, lift=a.lift, out_dir=a.out, progress=not a.quiet, reuse=a.reuse)
    print(render_markdown(report))
    print(f"abtest validate: wrote {report['out_dir']}/validation.json and validation.md")
    failed = [c for c in report["checks"] if not c["ok"]]
    if failed:
        print(f"abtest validate: {len(failed)} of {len(report['checks'])} checks outside their bands", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m abtest.validation", description=__doc__.splitlines()[0])
    add_arguments(ap)
    from abtest.cli import run_guarded

    return run_guarded(lambda: run_from_args(ap.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
