"""The validation study: does the analysis hold its error rates on this simulator? (``abtest validate exp.yaml``)

1. Simulate the experiment's days once with every sampled user served by the control arm under two
   potential outcomes: as is, and with an injected lift (ground-truth P(repin) and P(click) × (1 + δ),
   same slates, same random numbers).
2. Per-user metric values (and the pre-period covariates when `abtest analyze` uses them) for both,
   once, in DuckDB (the analysis SQL).
3. Re-randomise R times (default 2,000) by re-salting the hash assignment, in numpy; recompute the
   per-variant sufficient statistics as matrix products and run each cell's tests vectorised, the ones
   `abtest analyze` runs (``estimators.Estimator``: Welch or delta-method ratio, and with the covariate
   CUPED or ratio CUPED, then the primary test):
   * A/A (both variants from the un-lifted outcome): false-positive rate at alpha per metric × surface
     and test, uniformity of p-values (Kolmogorov–Smirnov), the family-wise false-positive rate of the
     primary tests after the multiple-testing adjustment, and the same for a naive impression-level
     CTR t-test that ignores that impressions cluster within users;
   * injected lift (treatment users take the lifted outcome): coverage of the known lift by the
     relative-lift CIs, and power;
   * SRM: false alarms at the configured split, detection rate when the assignment is skewed;
   * CUPED: reported variance-reduction factor (1 − ρ²) against the observed variance ratio of the
     lift estimates.
Results go to ``W/experiments/<name>-validation/`` (validation.json, validation.md).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from scipy import stats as sps

from abtest import stats
from abtest.analyze import no_data, pre_window
from abtest.assign import buckets, variant_of_buckets
from abtest.config import ExperimentConfig, dump_config
from pinlift.core.errors import InputError
from abtest.estimators import CellTest, Estimator
from abtest.metrics import Cell, Metric, Sources, cells_of, open_readonly, per_user_values, value_columns
from abtest.simulate import simulate_potential_outcomes
from abtest.storage import atomic_files
from pinlift.core.vocabulary import CLICK, REPIN

FPR_BAND = (0.035, 0.067)
COVERAGE_BAND = (0.93, 0.97)
KS_MIN_P = 0.01


def expected_lift(metric: Metric, lift: dict[str, float]) -> float:
    """The relative lift a metric must show when P(action) is multiplied by (1 + lift[action])."""
    num = 1 + lift.get(metric.numerator.action, 0.0)
    den = 1 + lift.get(metric.denominator.action, 0.0) if metric.denominator is not None else 1.0
    return num / den - 1


def user_values(directory: Path, cfg: ExperimentConfig, cells: list[Cell]) -> dict[str, np.ndarray]:
    """Per-user values of the logs in ``directory``, with the pre-period covariates exactly when `abtest
    analyze` uses them (``pre_window``)."""
    src = Sources.for_experiment(cfg.workdir, directory)
    with open_readonly(src) as con:
        return per_user_values(con, cells, pre_window(cfg, src, con))


class AssignmentSums:
    """Per-variant sums of per-user columns over R assignments (R × users, variant 0 or 1), as matrix products."""

    def __init__(self, assignment: np.ndarray):
        self.masks = [(assignment == v).astype(np.float64) for v in (0, 1)]
        self.n = [m.sum(1) for m in self.masks]

    def s(self, v: int, col: np.ndarray) -> np.ndarray:
        return self.masks[v] @ col


# the per-user column (``metrics.value_columns``) behind each column letter of ``Estimator``
_COLUMN = {"x": "x", "y": "y", "c": "c", "d": "cy"}


def cell_test(cell: Cell, sums: AssignmentSums, ctrl: dict, trt: dict, alpha: float) -> CellTest:
    """One cell's tests over R assignments, those `abtest analyze` runs (CUPED when ``ctrl`` has the
    covariates); control users read ``ctrl``, treatment users ``trt``."""
    estimator = Estimator(cell.metric.kind, f"c{cell.index}" in ctrl)

    def variant(v: int, values: dict) -> dict:
        col = {a: values[f"{_COLUMN[a]}{cell.index}"] for a in estimator.columns}
        return {"n": sums.n[v]} | {k: sums.s(v, np.prod([col[a] for a in k[1:]], axis=0)) for k in estimator.sums}

    return estimator.run(variant(0, ctrl), variant(1, trt), alpha=alpha, metric=cell.key)


def _summary_p(p: np.ndarray, alpha: float) -> dict:
    p = p[np.isfinite(p)]
    if len(p) == 0:
        return {"fpr": None, "ks_p": None, "ks_d": None, "runs": 0}
    ks = sps.kstest(p, "uniform")
    return {"fpr": float(np.mean(p < alpha)), "ks_d": float(ks.statistic), "ks_p": float(ks.pvalue), "runs": int(len(p))}


def _covers(e: stats.Estimate, target: float) -> float:
    ok = np.isfinite(e.ci_low) & np.isfinite(e.ci_high)
    return float(np.mean((e.ci_low[ok] <= target) & (target <= e.ci_high[ok]))) if ok.any() else float("nan")


def _test_record(aa: stats.EffectResult, injected: stats.EffectResult, target: float, alpha: float) -> dict:
    return {"method": aa.method, "aa": _summary_p(np.asarray(aa.absolute.p_value, float), alpha),
            "injected": {"mean_estimate": float(np.nanmean(injected.relative.value)),
                         "coverage": _covers(injected.relative, target),
                         "power": float(np.mean(np.asarray(injected.absolute.p_value) < alpha))}}


def resalt_study(cfg: ExperimentConfig, cells: list[Cell], base: dict, lifted: dict, lift: dict[str, float],
                 resalts: int, skews=(0.02, 0.05)) -> dict:
    """All the re-randomisation measurements from per-user values of the two potential outcomes."""
    alpha = cfg.alpha
    users = base["user_id"]
    if not np.array_equal(users, lifted["user_id"]):
        raise InputError("abtest validate: potential outcomes: expected the same exposed users in both, found different")
    t0 = time.time()
    b = np.stack([buckets(f"{cfg.assignment_salt}/resalt-{r}", users) for r in range(resalts)])
    hashing_s = time.time() - t0
    shares = cfg.traffic.shares()
    assignment = variant_of_buckets(b, shares)
    sums = AssignmentSums(assignment)
    out_cells, aa_p_primary = [], []
    for cell in cells:
        aa = cell_test(cell, sums, base, base, alpha)
        inj = cell_test(cell, sums, base, lifted, alpha)
        target = expected_lift(cell.metric, lift)
        tests = [_test_record(aa.unadjusted, inj.unadjusted, target, alpha)]
        if aa.cuped is not None:
            raw_var = float(np.nanvar(aa.unadjusted.relative.value))
            cup_var = float(np.nanvar(aa.cuped.effect.relative.value))
            tests.append(_test_record(aa.cuped.effect, inj.cuped.effect, target, alpha) | {"cuped": {
                "correlation": float(np.nanmean(aa.cuped.correlation)),
                "reported_variance_factor": float(np.nanmean(aa.cuped.variance_reduction_factor)),
                "observed_variance_ratio": cup_var / raw_var if raw_var > 0 else None}})
        rec = {"key": cell.key, "kind": cell.metric.kind, "primary": aa.primary.method, "expected_lift": target,
               "tests": tests}
        empty = no_data(cell, {f"s{col}": base[col].sum() for col in value_columns([cell], covariate=False)})
        rec["no_data"] = bool(empty)      # as in analyze: no test, not in the family
        aa_p_primary.append(np.full(resalts, np.nan) if empty else np.asarray(aa.primary.absolute.p_value, float))
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


def primary_test(cell: dict) -> dict:
    """The record of a study cell's primary test."""
    return next(t for t in cell["tests"] if t["method"] == cell["primary"])


def checks(study: dict) -> list[dict]:
    """Pass/fail lines against the acceptance bands."""
    out = []

    def add(name, value, ok, band):
        out.append({"check": name, "value": value, "band": band, "ok": bool(ok)})

    lo, hi = FPR_BAND
    for c in study["cells"]:
        for t in c["tests"]:
            aa, key, method = t["aa"], c["key"], t["method"]
            if c.get("no_data") or aa["fpr"] is None:
                continue
            add(f"A/A FPR {key} ({method})", aa["fpr"], lo <= aa["fpr"] <= hi, list(FPR_BAND))
            add(f"A/A p-values uniform {key} ({method}, KS p)", aa["ks_p"], aa["ks_p"] > KS_MIN_P, f"> {KS_MIN_P}")
            cov = t["injected"]["coverage"]
            add(f"coverage {key} ({method}, lift {c['expected_lift']:+.3f})", cov,
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
             "| metric / surface | method | A/A FPR | KS p | CUPED var. factor (reported / observed) "
             "| expected lift | mean estimate | coverage | power |", "|" + "---|" * 9]
    f = lambda x, p=3: "—" if x is None else f"{x:.{p}f}"  # noqa: E731
    for c in s["cells"]:
        for t in c["tests"]:
            cu, method = t.get("cuped"), t["method"]
            lines.append(f"| {c['key']} | {f'**{method}**' if method == c['primary'] else method} | "
                         f"{f(t['aa']['fpr'])} | {f(t['aa']['ks_p'])} | "
                         f"{(f(cu['reported_variance_factor'], 2) + ' / ' + f(cu['observed_variance_ratio'], 2)) if cu else '—'} | "
                         f"{c['expected_lift']:+.3f} | {t['injected']['mean_estimate']:+.4f} | "
                         f"{f(t['injected']['coverage'])} | {f(t['injected']['power'])} |")
    lines += ["", "In bold: the primary test of each cell, the one `abtest analyze` reports."]
    naive = [c for c in s["cells"] if "naive_impression_ttest" in c]
    lines += ["", "Naive impression-level CTR t-test (impressions as independent units), A/A:", ""]
    lines += [f"- {c['key']}: FPR {c['naive_impression_ttest']['fpr']:.3f} (KS p "
              f"{c['naive_impression_ttest']['ks_p']:.2g}) vs {f(primary_test(c)['aa']['fpr'])} with {c['primary']}"
              for c in naive]
    srm = s["srm"]
    lines += ["", f"SRM (alert at p < {srm['threshold']}): false alarms {srm['false_alarm_rate']:.4f} at the configured split; "
              + "; ".join(f"detection {k['detection_rate']:.3f} at actual shares {k['actual_shares']}" for k in srm["skewed"]),
              "", f"Family-wise A/A false-positive rate after {report['multiple_testing']} across "
              f"{len(s['cells'])} primary tests: {s['family_wise_false_positive_rate']:.3f}", "", "## Checks", ""]
    lines += [f"- [{'x' if c['ok'] else ' '}] {c['check']}: {c['value'] if c['value'] is None else round(c['value'], 4)} "
              f"(band {c['band']})" for c in report["checks"]]
    return "\n".join(lines) + "\n"


def run_validation(cfg: ExperimentConfig, *, resalts: int = 2000, lift: float = 0.05,
                   out_dir: Path | None = None, progress: bool = True, reuse: bool = False) -> dict:
    """The whole study; returns the report (also written to ``out_dir``)."""
    if resalts < 100:
        raise InputError(f"abtest validate: --resalts: expected at least 100, found {resalts}")
    cfg.require_simulation()
    start = time.time()
    out_dir = Path(out_dir) if out_dir else Path(cfg.workdir) / "experiments" / f"{cfg.name}-validation"
    base_arm = cfg.arms.control.model_copy(update={"lift": {}})
    lifts = {REPIN: lift, CLICK: lift}
    arms = {"base": base_arm, "lifted": base_arm.model_copy(update={"lift": lifts})}
    potential = out_dir / "potential"
    if not (reuse and (potential / "potential.json").is_file()):
        out_dir.mkdir(parents=True, exist_ok=True)
        simulate_potential_outcomes(cfg, arms, potential, progress=progress)
    sim_s = time.time() - start
    cells = cells_of(cfg.metric_list())
    t0 = time.time()
    base = user_values(potential / "base", cfg, cells)
    lifted = user_values(potential / "lifted", cfg, cells)
    sql_s = time.time() - t0
    t0 = time.time()
    study = resalt_study(cfg, cells, base, lifted, lifts, resalts)
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
