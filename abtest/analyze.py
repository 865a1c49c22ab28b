"""``abtest analyze exp.yaml``: per-variant sufficient statistics on DuckDB or Spark, statistics on top, a report.

Per (metric, surface) cell, the tests ``estimators.Estimator`` picks: Welch's t-test on per-user means or
the delta method for ratio metrics (CTR, CPC), CUPED-adjusted when there is a pre-period covariate
(``pre_window``); a log-ratio interval for every relative lift (none where a mean is ≤ 0); the minimum
detectable effect at the configured power. Across cells, multiple-testing control (Benjamini–Hochberg by
default); once per experiment, the sample-ratio mismatch check and the verdict on the primary metric and
the guardrails. Works on any ``exposures`` + ``events`` in the documented schemas, simulated or real.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, fields
from pathlib import Path

import ibis
import numpy as np

from abtest import stats
from abtest.config import VARIANTS, ExperimentConfig, dump_config
from pinlift.core.errors import input_error
from abtest.estimators import CellTest, Estimator
from abtest.logs import check_covariates, check_logs
from abtest.engines import as_engine
from abtest.metrics import Cell, Sources, cells_of, cross_sum_name, open_engine, sufficient_stats


def pre_window(cfg: ExperimentConfig, src: Sources, con) -> tuple[int, int] | None:
    """Days [lo, hi) of organic logs used as the CUPED covariate, or None when there is none: `cuped` off,
    a `covariates:` table instead, no pre-period, no organic logs, or no organic activity in those days.
    ``con``: an engine (``metrics.open_engine``) or an ``open_readonly(src)`` connection."""
    if not cfg.cuped or cfg.covariates is not None or cfg.pre_period_days == 0 or src.impressions is None:
        return None
    window = (cfg.days.start - cfg.pre_period_days, cfg.days.start)
    pre = ibis.table({"day": "int32"}, name="pre_events")
    days = pre.filter((pre.day >= window[0]) & (pre.day < window[1]))
    rows = as_engine(con).run(days.aggregate(n=days.count()))
    return window if rows["n"][0].as_py() else None


def _num(x):
    """A JSON-safe number (NaN and infinities become None)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _estimate(e: stats.Estimate) -> dict:
    return {k: _num(v) for k, v in asdict(e).items()}


def _mde(n_c, n_t, var_c, var_t, baseline, cfg: ExperimentConfig) -> dict | None:
    if not (np.isfinite([var_c, var_t, baseline]).all()) or baseline == 0:
        return None
    m = stats.minimum_detectable_effect(int(n_c), int(n_t), float(var_c), float(var_t),
                                        baseline_mean=float(baseline), alpha=cfg.alpha, power=cfg.power)
    return {"absolute": _num(m.absolute), "relative": _num(m.relative), "power": cfg.power}


def _cuped_record(res: stats.CupedResult) -> dict:
    return {"theta": _num(res.theta), "correlation": _num(res.correlation),
            "variance_reduction_factor": _num(res.variance_reduction_factor)}


def _unadjusted(effect: stats.EffectResult) -> dict:
    return {"control_mean": _num(effect.control_mean), "treatment_mean": _num(effect.treatment_mean),
            "absolute": _estimate(effect.absolute), "relative": _estimate(effect.relative)}


def analyze_cell(cell: Cell, sums: dict[str, dict[str, float]], cfg: ExperimentConfig,
                 with_covariate: bool) -> dict:
    """Statistics of one (metric, surface) from the per-variant sums."""
    # numpy scalars, not Python floats: stats.py relies on numpy's divide-by-zero semantics
    i = cell.index
    estimator = Estimator(cell.metric.kind, with_covariate)
    c, t = ({"n": np.float64(sums[v]["n"])} | {k: np.float64(sums[v][f"{k}{i}"]) for k in estimator.sums}
            for v in VARIANTS)
    res = estimator.run(c, t, alpha=cfg.alpha, metric=cell.key)
    out = {"metric": cell.metric.name, "surface": cell.surface, "key": cell.key, "kind": cell.metric.kind,
           "description": cell.metric.doc, "n": {"control": int(c["n"]), "treatment": int(t["n"])}}
    if no_data(cell, {k: sums['control'][k] + sums['treatment'][k] for k in sums['control']}):
        none = {f.name: None for f in fields(stats.Estimate)}
        out.update(method=res.primary.method, control_mean=None, treatment_mean=None, absolute=none, relative=none,
                   excluded="no data", p_value=None, cuped=None, mde=None, direction=cell.metric.direction)
        return out
    if cell.metric.kind == "ratio":
        out.update(numerator_sum={"control": c["sx"], "treatment": t["sx"]},
                   denominator_sum={"control": c["sy"], "treatment": t["sy"]})
    vrf, cuped = 1.0, None
    if res.cuped is not None:
        vrf, cuped = float(res.cuped.variance_reduction_factor), _cuped_record(res.cuped)
        out["unadjusted"] = _unadjusted(res.unadjusted)
    effect = res.primary
    mde = _mde(c["n"], t["n"], res.unit_variance[0] * vrf, res.unit_variance[1] * vrf, res.unadjusted.control_mean, cfg)
    out.update(method=effect.method, control_mean=_num(effect.control_mean), treatment_mean=_num(effect.treatment_mean),
               absolute=_estimate(effect.absolute), relative=_estimate(effect.relative), excluded=_excluded(res),
               p_value=_num(effect.absolute.p_value), cuped=cuped, mde=mde, direction=cell.metric.direction)
    return out


def no_data(cell: Cell, totals: dict[str, float]) -> bool:
    """A cell none of whose counted events carries its metric (its Σ numerator, or a ratio's Σ denominator, is
    0 over both variants; every per-user value is ≥ 0): it has no test and stays out of the multiple-testing
    family. ``totals``: sums over all users by ``sufficient_stats`` name (sx{i}, sy{i})."""
    return totals[f"sx{cell.index}"] == 0 or (cell.metric.kind == "ratio" and totals[f"sy{cell.index}"] == 0)


def _excluded(res: CellTest) -> str | None:
    """Why a cell has no relative lift (``stats.relative_lift`` needs both means > 0); None when it has one."""
    if np.isfinite(res.primary.relative.value):
        return None
    raw = (res.unadjusted.control_mean, res.unadjusted.treatment_mean)
    if not np.isfinite(raw).all() or raw == (0, 0):
        return "no data"
    return f"{'control' if not res.primary.control_mean > 0 else 'treatment'} mean ≤ 0"


def _effect(r: dict) -> str:
    """"good" or "bad": significant, in or against the metric's good direction; "none": not significant."""
    if not r["significant"]:
        return "none"
    return "good" if (r["absolute"]["value"] > 0) == (r["direction"] == "increase") else "bad"


def _verdict_entry(r: dict) -> dict:
    rel = r["relative"]
    return {"key": r["key"], "metric": r["metric"], "surface": r["surface"], "lift": rel["value"],
            "ci": None if rel["value"] is None else [rel["ci_low"], rel["ci_high"]], "p": r["p_value"],
            "p_adjusted": r["p_adjusted"], "direction": r["direction"], "moved": r["significant"],
            "effect": r["effect"], "excluded": r["excluded"]}


def lift_text(e: dict) -> str:
    """A verdict entry's lift, "+19.1% [+15.2, +23.0]", or "(no relative lift: why)"."""
    if e["lift"] is None:
        return f"(no relative lift: {e['excluded']})"
    lo, hi = e["ci"]
    return f"{100 * e['lift']:+.1f}% [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def _named(e: dict) -> str:
    return f"{e['metric'].replace('_', ' ')} on {e['surface'].capitalize()}"


def _sentence(label: str, p: dict, guardrails: list[dict], srm_mismatch: bool) -> str:
    lift = lift_text(p)
    if p["moved"]:
        up = (p["effect"] == "good") == (p["direction"] == "increase")
        head = (f"{label} {'lifts' if up else 'lowers'} {_named(p)} {lift if p['lift'] is None else 'by ' + lift}"
                + (", the wrong way" if p["effect"] == "bad" else ""))
    else:
        head = f"{label} does not move {_named(p)} significantly: {lift}"
    moved = {way: [f"{_named(g)} {lift_text(g)}" for g in guardrails if g["effect"] == way] for way in ("bad", "good")}
    tail = ("no guardrails declared" if not guardrails else "no guardrail moved" if not any(moved.values()) else
            "; ".join(f"{'guardrails' if len(m) > 1 else 'guardrail'} moved the {'wrong' if way == 'bad' else 'good'} "
                      f"way: {', '.join(m)}" for way, m in moved.items() if m))
    return ("Sample-ratio mismatch, do not trust this: " if srm_mismatch else "") + f"{head}; {tail}."


def verdict(results: list[dict], cfg: ExperimentConfig, srm_mismatch: bool) -> dict:
    """The primary metric and the guardrails, each with lift, CI, p and effect, and one sentence."""
    by_key = {r["key"]: r for r in results}
    primary = _verdict_entry(by_key[cfg.primary_key])
    guardrails = [_verdict_entry(by_key[k]) for k in cfg.guardrails]
    return {"treatment": cfg.treatment_label, "primary": primary, "guardrails": guardrails,
            "sentence": _sentence(cfg.treatment_label, primary, guardrails, srm_mismatch)}


LIFT_PAIRS = (("fresh_repins", "repins"), ("new_ad_clicks", "clicks"))


def lift_pairs(cells: list[Cell], surfaces) -> list[tuple[Cell, Cell]]:
    """(cold-start cell, overall cell) for each ``LIFT_PAIRS`` pair and each of ``surfaces`` (in that
    order) that has both cells."""
    by_key = {c.key: c for c in cells}
    return [(by_key[f"{a}/{s}"], by_key[f"{b}/{s}"]) for a, b in LIFT_PAIRS for s in surfaces
            if f"{a}/{s}" in by_key and f"{b}/{s}" in by_key]


def paired_stats(sums: dict[str, float], a: Cell, b: Cell) -> stats.PairedMeanStats:
    """Paired sufficient statistics of cells a and b in one variant's sums (``sufficient_stats`` with
    (a, b) among its pairs)."""
    s = {k: np.float64(v) for k, v in sums.items()}
    return stats.PairedMeanStats(int(s["n"]), s[f"sx{a.index}"], s[f"sxx{a.index}"], s[f"sx{b.index}"],
                                 s[f"sxx{b.index}"], s[cross_sum_name(a, b)])


def lift_differences(sums: dict[str, dict[str, float]], pairs: list[tuple[Cell, Cell]],
                     cfg: ExperimentConfig) -> list[dict]:
    """For each (a, b) in ``pairs`` (``lift_pairs``): the lift of the cold-start metric a (fresh repins,
    new-ad clicks) minus the lift of its overall metric b, with a delta-method CI that accounts for the
    two being measured on the same users. ``sums``: per-variant ``sufficient_stats`` with these pairs."""
    out = []
    for a, b in pairs:
        paired = {v: paired_stats(sums[v], a, b) for v in VARIANTS}
        r = stats.lift_difference_test(paired["control"], paired["treatment"], alpha=cfg.alpha,
                                       metric_a=a.key, metric_b=b.key)
        out.append({"key": f"{a.key} - {b.key}", "lift_a": _estimate(r.lift_a), "lift_b": _estimate(r.lift_b),
                    "lift_correlation": _num(r.lift_correlation), "difference": _estimate(r.difference)})
    return out


def _generator_version(cfg: ExperimentConfig) -> str | None:
    for path in (cfg.experiment_dir / "simulation.json", Path(cfg.workdir) / "world" / "world.json"):
        if path.is_file():
            return json.loads(path.read_text()).get("generator_version")
    return None


def _covariates(cfg: ExperimentConfig) -> Path | None:
    """The `covariates:` table when CUPED uses it; it must exist."""
    if cfg.covariates is None or not cfg.cuped:
        return None
    if not Path(cfg.covariates).exists():
        raise cfg.error(("covariates",), "a Parquet file or folder of per-user covariates", f"no {cfg.covariates}")
    return Path(cfg.covariates)


def analyze(cfg: ExperimentConfig, *, write: bool = True) -> dict:
    """Analyse ``W/experiments/<name>/``; with ``write``, save analysis.json and the reports there. The logs
    are checked first (``logs.check_logs``, on the config's engine): errors raise InputError, exclusions are
    counted in ``events``."""
    exp_dir = cfg.experiment_dir
    if not exp_dir.is_dir():
        raise input_error(exp_dir, "experiment", "a directory with exposures/ and events/ "
                          "(run `abtest simulate` or write your logs there)", "no such directory")
    src = Sources.for_experiment(cfg.workdir, exp_dir, _covariates(cfg))
    metrics = cfg.metric_list()
    if not metrics:
        raise cfg.error(("metrics",), "a metric on one of the experiment's surfaces", "none")
    needs_pins = [m.name for m in metrics if m.needs_pins]
    if needs_pins and src.pins is None:
        raise input_error(Path(cfg.workdir) / "world" / "pins.parquet", "pins",
                          f"the pins table (metric {needs_pins[0]!r} needs created_day / is_ad)", "no such file")
    cells = cells_of(metrics)
    pairs = lift_pairs(cells, cfg.surfaces)
    with open_engine(cfg.engine, src) as engine:
        logs = check_logs(engine, src.exposures, src.events, experiment=cfg.name, variants=VARIANTS,
                          surfaces=cfg.vocabulary.names, start=cfg.days.start, end=cfg.days.end)
        if src.covariates is not None:
            covered = check_covariates(engine, src.covariates, list(dict.fromkeys(m.name for m in metrics)))
        events = ibis.table({"day": "int32"}, name="events")
        lo, hi = engine.run(events.aggregate(lo=events.day.min(), hi=events.day.max())).to_pylist()[0].values()
        if src.covariates is not None:
            pre = {"table": str(src.covariates), "users_with_row": covered, "users": sum(logs.users.values())}
            window = None
        else:
            window = pre_window(cfg, src, engine)
            pre = None if window is None else {"first_day": window[0], "last_day": window[1] - 1,
                                               "source": str(src.impressions)}
        # the one pass over the events: every cell's sums and the cross sums of the lift pairs
        sums = sufficient_stats(engine, cells, window, pairs, until=cfg.days.end, distinct=logs.distinct,
                                covariates=src.covariates is not None)
    differences = lift_differences(sums, pairs, cfg)
    results = [analyze_cell(c, sums, cfg, pre is not None) for c in cells]
    finite = [j for j, r in enumerate(results) if r["p_value"] is not None]
    adj = stats.adjust_p_values([results[j]["p_value"] for j in finite], cfg.multiple_testing, alpha=cfg.alpha)
    for r in results:
        r["p_adjusted"], r["significant"] = None, False
    for j, p, rej in zip(finite, adj.adjusted, adj.reject):
        results[j]["p_adjusted"], results[j]["significant"] = float(p), bool(rej)
    for r in results:
        r["effect"] = _effect(r)
    counts = logs.users
    srm = stats.srm_test([counts[v] for v in VARIANTS], cfg.traffic.shares(), threshold=cfg.srm_threshold)
    analysis = {
        "experiment": cfg.name, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "generator_version": _generator_version(cfg),
        "alpha": cfg.alpha, "power": cfg.power, "multiple_testing": cfg.multiple_testing,
        "users": {v: counts[v] for v in VARIANTS},
        "events": logs.record(cfg.days.start, cfg.days.end, lo, hi),
        "pre_period": pre,
        "srm": {"observed": srm.observed.tolist(), "expected": srm.expected.tolist(), "shares": list(cfg.traffic.shares()),
                "chi2": _num(srm.chi2), "p_value": _num(srm.p_value), "threshold": srm.threshold,
                "mismatch": srm.mismatch},
        "verdict": verdict(results, cfg, srm.mismatch),
        "results": results,
        "lift_differences": differences,
        "config": dump_config(cfg),
    }
    if write:
        from abtest.report import write_report

        write_report(exp_dir, analysis)
    return analysis
