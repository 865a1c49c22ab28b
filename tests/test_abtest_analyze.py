"""abtest analyze on synthetic logs with a known injected effect: the SQL sufficient statistics match
numpy, the CI covers the effect, CUPED reduces variance, SRM flags a skewed split, BH adjusts, and bad
input fails with one clear line and nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from statsmodels.stats.multitest import multipletests

from abtest import stats
from abtest.analyze import analyze, lift_pairs
from abtest.assign import assign
from abtest.cli import main
from abtest.config import load_config
from pinlift.core.errors import InputError
from pinlift.core.vocabulary import PINWORLD, write_vocabulary
from abtest.estimators import Estimator
from abtest.metrics import (Sources, cells_of, cross_sum_name, metric_from_spec, open_readonly, per_user_values,
                            sufficient_stats)
from abtest.report import render_markdown
from abtest.simulate import EVENTS_SCHEMA, EXPOSURES_SCHEMA
from abtest.validation import AssignmentSums, cell_test, resalt_study, user_values

N_USERS, START, PRE_DAYS, DAYS = 3000, 20, 10, 5
DELTA = 0.30          # injected relative lift of the repin probability for treatment users
N_PINS = 500


def _events(rng, users, day, surface, n_imp, p_repin, p_click, start_request):
    """Event rows for impressions drawn per user: impressions, then repin / click rows (clicks on ads
    cost 50 cents)."""
    rows = {k: [] for k in ("day", "user_id", "surface", "request_id", "pin_id", "position", "action", "value")}
    u = np.repeat(users, n_imp)
    pins = rng.integers(0, N_PINS, len(u))
    pos = np.concatenate([np.arange(k) for k in n_imp]) if len(n_imp) else np.zeros(0, int)
    req = start_request + np.arange(len(u))
    repin = rng.random(len(u)) < np.repeat(p_repin, n_imp)
    click = rng.random(len(u)) < np.repeat(p_click, n_imp)
    for action, mask in (("impression", np.ones(len(u), bool)), ("repin", repin), ("click", click)):
        n = int(mask.sum())
        rows["day"].append(np.full(n, day, np.int32))
        rows["user_id"].append(u[mask])
        rows["surface"] += [surface] * n
        rows["request_id"].append(req[mask])
        rows["pin_id"].append(pins[mask])
        rows["position"].append(pos[mask].astype(np.int16))
        rows["action"] += [action] * n
        rows["value"].append(np.full(n, 50.0 if (action == "click" and surface == "ads") else np.nan))
    cat = {k: (np.concatenate(v) if k not in ("surface", "action") else v) for k, v in rows.items()}
    return pa.table({**cat, "value": pa.array(cat["value"], mask=np.isnan(cat["value"]))}, schema=EVENTS_SCHEMA)


def make_workspace(root: Path, *, skew_drop: float = 0.0, seed: int = 0) -> tuple[Path, dict]:
    """A workspace with pins, organic pre-period logs and one experiment's exposures + events.

    Users have a persistent activity level (so the pre-period predicts the experiment: CUPED), the
    treatment multiplies P(repin) by 1 + DELTA; ``skew_drop`` loses that share of treatment users
    (a logging bug: SRM)."""
    rng = np.random.default_rng(seed)
    w = root / "ws"
    write_vocabulary(w, PINWORLD)
    pq.write_table(pa.table({"pin_id": np.arange(N_PINS, dtype=np.int64),
                             "created_day": rng.integers(-30, START, N_PINS).astype(np.int32),
                             "is_ad": rng.random(N_PINS) < 0.2}), w / "world" / "pins.parquet")
    users = np.arange(N_USERS, dtype=np.int64)
    activity = rng.gamma(2.0, 1.0, N_USERS)
    taste = rng.beta(2, 30, N_USERS)
    variant = assign("synthetic", users, (0.5, 0.5))
    # organic pre-period logs (the impressions table schema)
    for day in range(START - PRE_DAYS, START):
        n_imp = rng.poisson(activity * 2)
        u = np.repeat(users, n_imp)
        part = w / "logs" / "impressions" / f"day={day}" / "surface=homefeed"
        part.mkdir(parents=True)
        pq.write_table(pa.table({
            "request_id": np.arange(len(u), dtype=np.int64) + day * 10**6, "day": np.full(len(u), day, np.int32),
            "surface": ["homefeed"] * len(u), "user_id": u, "query_pin_id": pa.nulls(len(u), pa.int64()),
            "pin_id": rng.integers(0, N_PINS, len(u)), "position": np.zeros(len(u), np.int16),
            "repin": rng.random(len(u)) < np.repeat(taste, n_imp), "click": rng.random(len(u)) < 0.05,
            "hide": np.zeros(len(u), bool)}), part / "part-0.parquet")
    exp = w / "experiments" / "synth"
    keep = ~((variant == 1) & (rng.random(N_USERS) < skew_drop))
    p_repin = taste * np.where(variant == 1, 1 + DELTA, 1.0)
    request = 0
    for day in range(START, START + DAYS):
        part = exp / "events" / f"day={day}"
        part.mkdir(parents=True)
        tables = []
        for surface, scale in (("homefeed", 2.0), ("ads", 0.5)):
            n_imp = np.where(keep, rng.poisson(activity * scale), 0)
            tables.append(_events(rng, users, day, surface, n_imp, p_repin, np.full(N_USERS, 0.08), request))
            request += int(n_imp.sum())
        pq.write_table(pa.concat_tables(tables), part / "part-0.parquet")
    (exp / "exposures").mkdir(parents=True)
    pq.write_table(pa.table({"experiment": ["synth"] * int(keep.sum()), "user_id": users[keep],
                             "variant": np.where(variant == 1, "treatment", "control")[keep].tolist(),
                             "first_exposure_day": np.full(int(keep.sum()), START, np.int32)},
                            schema=EXPOSURES_SCHEMA), exp / "exposures" / "part-0.parquet")
    cfg = root / "exp.yaml"
    cfg.write_text(f"""name: synth
workdir: {w}
salt: synthetic
arms:
  control: {{ranker: logging_policy}}
  treatment: {{ranker: logging_policy}}
surfaces: [homefeed, ads]
days: {{start: {START}, count: {DAYS}}}
pre_period_days: {PRE_DAYS}
metrics:
  - repins
  - fresh_repins
  - ctr
  - cpc
  - hides
  - {{name: ad_spend, surfaces: [ads], aggregate: sum, column: value, action: click}}
""")
    return cfg, {"variant": variant, "keep": keep}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    cfg_path, truth = make_workspace(tmp_path_factory.mktemp("synth"))
    cfg = load_config(cfg_path)
    return cfg_path, cfg, analyze(cfg), truth


def _result(analysis, key):
    return next(r for r in analysis["results"] if r["key"] == key)


def test_sql_sufficient_statistics_match_numpy(synth):
    cfg_path, cfg, analysis, truth = synth
    src = Sources.for_experiment(cfg.workdir, cfg.experiment_dir)
    cells = cells_of(cfg.metric_list())
    with open_readonly(src) as con:
        per_user = per_user_values(con, cells, (START - PRE_DAYS, START))
        with pytest.raises(duckdb.Error):           # the metrics connection cannot write
            con.execute("CREATE TABLE t (x INTEGER)")
    events = pq.read_table(cfg.experiment_dir / "events", partitioning=None).to_pandas()
    rep = events[(events.action == "repin") & (events.surface == "homefeed")].groupby("user_id").size()
    x = rep.reindex(per_user["user_id"], fill_value=0).to_numpy()
    i = next(c.index for c in cells if c.key == "repins/homefeed")
    np.testing.assert_array_equal(per_user[f"x{i}"], x)
    treated = per_user["variant"] == "treatment"
    r = _result(analysis, "repins/homefeed")
    assert r["n"] == {"control": int((~treated).sum()), "treatment": int(treated.sum())}
    welch = stats.welch_test(stats.MeanStats.from_values(x[~treated]), stats.MeanStats.from_values(x[treated]))
    assert r["unadjusted"]["absolute"]["value"] == pytest.approx(float(welch.absolute.value))
    assert r["unadjusted"]["absolute"]["p_value"] == pytest.approx(float(welch.absolute.p_value))
    spend = events[(events.action == "click") & (events.surface == "ads")].groupby("user_id")["value"].sum()
    j = next(c.index for c in cells if c.key == "ad_spend/ads")
    np.testing.assert_allclose(per_user[f"x{j}"], spend.reindex(per_user["user_id"], fill_value=0).to_numpy())
    # a ratio's pre-period covariate: the same CTR over the organic logs of the pre-period
    k = next(c.index for c in cells if c.key == "ctr/homefeed")
    logs = pq.read_table(src.impressions, partitioning=None).to_pandas()
    pre = logs[(logs.surface == "homefeed") & (logs.day >= START - PRE_DAYS) & (logs.day < START)]
    by_user = pre.groupby("user_id")["click"].agg(["sum", "size"]).reindex(per_user["user_id"], fill_value=0)
    np.testing.assert_array_equal(per_user[f"c{k}"], by_user["sum"].to_numpy())
    np.testing.assert_array_equal(per_user[f"cy{k}"], by_user["size"].to_numpy())
    xy = [per_user[f"{col}{k}"] for col in ("x", "y", "c", "cy")]
    ref = stats.ratio_cuped_test(stats.RatioCupedStats.from_values(*(a[~treated] for a in xy)),
                                 stats.RatioCupedStats.from_values(*(a[treated] for a in xy)))
    ctr = _result(analysis, "ctr/homefeed")
    assert ctr["absolute"]["value"] == pytest.approx(float(ref.effect.absolute.value))
    assert ctr["absolute"]["se"] == pytest.approx(float(ref.effect.absolute.se))
    assert ctr["cuped"]["theta"] == pytest.approx(float(ref.theta))
    clicks = events[(events.action == "click") & (events.surface == "ads")].shape[0]
    cpc = _result(analysis, "cpc/ads")
    assert cpc["control_mean"] == pytest.approx(50.0) and cpc["treatment_mean"] == pytest.approx(50.0)
    assert sum(cpc["denominator_sum"].values()) == clicks


def test_new_ad_delivery_and_ctr_match_pandas(synth):
    cfg_path, cfg, analysis, truth = synth
    cells = cells_of([metric_from_spec(PINWORLD, n, None, None, None, None, None)
                      for n in ("new_ad_impressions", "new_ad_ctr")])
    with open_readonly(Sources.for_experiment(cfg.workdir, cfg.experiment_dir)) as con:
        sums = sufficient_stats(con, cells, None)
    events = pq.read_table(cfg.experiment_dir / "events", partitioning=None).to_pandas()
    pins = pq.read_table(Path(cfg.workdir) / "world" / "pins.parquet").to_pandas()
    e = events[events.surface == "ads"].merge(pins, on="pin_id")
    new = e[e.is_ad & (e.day - e.created_day < 14)]
    exposures = pq.read_table(cfg.experiment_dir / "exposures").to_pandas()
    new = new.merge(exposures[["user_id", "variant"]], on="user_id")
    imp, ctr = cells
    for v in ("control", "treatment"):
        n_imp = int((new[new.variant == v].action == "impression").sum())
        n_click = int((new[new.variant == v].action == "click").sum())
        assert sums[v][f"sx{imp.index}"] == n_imp > 0
        assert (sums[v][f"sx{ctr.index}"], sums[v][f"sy{ctr.index}"]) == (n_click, n_imp)


def test_recovers_injected_lift_with_cuped(synth):
    _, cfg, analysis, _ = synth
    r = _result(analysis, "repins/homefeed")
    assert r["method"] == "cuped_welch" and r["significant"]
    assert r["relative"]["ci_low"] < DELTA < r["relative"]["ci_high"]
    # the pre-period predicts the experiment: CUPED narrows the interval
    assert r["cuped"]["variance_reduction_factor"] < 0.8
    assert r["absolute"]["se"] < r["unadjusted"]["absolute"]["se"] * 0.92
    # click probability was not lifted
    ctr = _result(analysis, "ctr/homefeed")
    assert ctr["method"] == "cuped_delta_ratio" and ctr["relative"]["ci_low"] < 0 < ctr["relative"]["ci_high"]
    assert ctr["absolute"]["se"] <= ctr["unadjusted"]["absolute"]["se"] * 1.001   # pooled theta: never much worse
    assert r["mde"]["relative"] > 0 and r["mde"]["power"] == 0.8
    assert not analysis["srm"]["mismatch"]


@pytest.mark.parametrize("cuped", [True, False])
def test_validation_runs_the_test_analyze_reports(synth, tmp_path, cuped):
    """The validation study's vectorised path, given the experiment's own assignment, reproduces every
    primary test of `abtest analyze` (method and p-value), with and without `cuped:`."""
    cfg_path, cfg, analysis, _ = synth
    if not cuped:
        path = tmp_path / "nocuped.yaml"
        path.write_text(cfg_path.read_text() + "cuped: false\n")
        cfg = load_config(path)
        analysis = analyze(cfg, write=False)
    cells = cells_of(cfg.metric_list())
    values = user_values(cfg.experiment_dir, cfg, cells)
    sums = AssignmentSums((values["variant"] == "treatment").astype(int)[None])
    methods = set()
    for cell in cells:
        primary = cell_test(cell, sums, values, values, cfg.alpha).primary
        r = _result(analysis, cell.key)
        methods.add(primary.method)
        assert primary.method == r["method"], cell.key
        if r["excluded"] == "no data":      # hides: none happened; no test, as the study's family leaves it out
            assert r["p_value"] is None
            continue
        assert float(primary.absolute.p_value[0]) == pytest.approx(r["p_value"], rel=1e-6, abs=1e-12), cell.key
        assert float(primary.absolute.value[0]) == pytest.approx(r["absolute"]["value"], rel=1e-6, abs=1e-12), cell.key
    assert methods == ({"cuped_welch", "cuped_delta_ratio"} if cuped else {"welch", "delta_ratio"})


@pytest.mark.filterwarnings("ignore:Mean of empty slice", "ignore:Degrees of freedom")  # hides: none, NaN lifts
def test_analyze_and_validate_choose_through_one_estimator(synth, monkeypatch):
    _, cfg, _, _ = synth
    seen = {"analyze": set(), "validate": set()}
    caller = ["analyze"]
    run = Estimator.run

    def spy(self, *args, **kwargs):
        seen[caller[0]].add((self.kind, self.covariate))
        return run(self, *args, **kwargs)

    monkeypatch.setattr(Estimator, "run", spy)
    analyze(cfg, write=False)
    caller[0] = "validate"
    cells = cells_of(cfg.metric_list())
    values = user_values(cfg.experiment_dir, cfg, cells)
    resalt_study(cfg, cells, values, values, {"repin": 0.0}, resalts=20)
    assert seen["analyze"] == seen["validate"] == {("mean", True), ("ratio", True)}


def test_fresh_minus_overall_lift(synth):
    _, _, analysis, _ = synth
    d = {x["key"]: x for x in analysis["lift_differences"]}["fresh_repins/homefeed - repins/homefeed"]
    # the injected lift is the same on fresh and old pins: both lifts cover it, their difference covers 0
    assert d["lift_b"]["ci_low"] < DELTA < d["lift_b"]["ci_high"]
    assert d["difference"]["ci_low"] < 0 < d["difference"]["ci_high"]
    assert 0 < d["lift_correlation"] < 1
    # the paired CI is narrower than treating the two lifts as independent
    independent = (d["lift_a"]["se"] ** 2 + d["lift_b"]["se"] ** 2) ** 0.5
    assert d["difference"]["se"] < independent


def _as_json(e: stats.Estimate) -> dict:
    """An estimate as analysis.json holds it (non-finite numbers as None)."""
    return {k: float(v) if np.isfinite(v) else None for k, v in vars(e).items()}


def test_lift_differences_match_a_per_user_computation(synth):
    # the paired sums come from the one aggregate query; recompute them from per-user values
    _, cfg, analysis, _ = synth
    cells = cells_of(cfg.metric_list())
    pairs = lift_pairs(cells, cfg.surfaces)
    assert [f"{a.key} - {b.key}" for a, b in pairs] == [d["key"] for d in analysis["lift_differences"]]
    assert len(pairs) == 2
    with open_readonly(Sources.for_experiment(cfg.workdir, cfg.experiment_dir)) as con:
        per_user = per_user_values(con, cells, None)
    for (a, b), got in zip(pairs, analysis["lift_differences"]):
        paired = {v: stats.PairedMeanStats.from_values(per_user[f"x{a.index}"][per_user["variant"] == v],
                                                       per_user[f"x{b.index}"][per_user["variant"] == v])
                  for v in ("control", "treatment")}
        r = stats.lift_difference_test(paired["control"], paired["treatment"])
        for name in ("lift_a", "lift_b", "difference"):
            assert got[name] == _as_json(getattr(r, name))
        assert got["lift_correlation"] == float(r.lift_correlation)


def _tiny_workspace(root: Path) -> Path:
    """Six users, homefeed repins of one fresh pin (0) and one old pin (1); hand-counted below."""
    w = root / "ws"
    write_vocabulary(w, PINWORLD)
    pq.write_table(pa.table({"pin_id": np.array([0, 1], np.int64), "created_day": np.array([5, -100], np.int32),
                             "is_ad": [False, False]}), w / "world" / "pins.parquet")
    exp = w / "experiments" / "tiny"
    (exp / "exposures").mkdir(parents=True)
    pq.write_table(pa.table({"experiment": ["tiny"] * 6, "user_id": np.arange(6, dtype=np.int64),
                             "variant": ["control"] * 3 + ["treatment"] * 3,
                             "first_exposure_day": np.array([10, 10, 10, 10, 10, 11], np.int32)},
                            schema=EXPOSURES_SCHEMA), exp / "exposures" / "part-0.parquet")
    # (day, user, pin) of each repin; user 2 has none; user 5's day-10 repin precedes its exposure
    repins = [(10, 0, 0), (10, 0, 0), (11, 0, 1), (11, 1, 1),
              (10, 3, 0), (11, 3, 0), (10, 4, 0), (10, 4, 1), (11, 4, 1), (11, 4, 1), (10, 5, 0), (11, 5, 0)]
    day, user, pin = (np.array(c) for c in zip(*repins))
    n = len(repins)
    (exp / "events" / "all").mkdir(parents=True)
    pq.write_table(pa.table({"day": day.astype(np.int32), "user_id": user.astype(np.int64),
                             "surface": ["homefeed"] * n, "request_id": np.arange(n, dtype=np.int64),
                             "pin_id": pin.astype(np.int64), "position": np.zeros(n, np.int16),
                             "action": ["repin"] * n, "value": pa.nulls(n, pa.float64())}, schema=EVENTS_SCHEMA),
                   exp / "events" / "all" / "part-0.parquet")
    cfg = root / "exp.yaml"
    cfg.write_text(f"""name: tiny
workdir: {w}
arms: {{control: {{ranker: logging_policy}}, treatment: {{ranker: logging_policy}}}}
surfaces: [homefeed]
days: {{start: 10, count: 2}}
pre_period_days: 0
metrics: [repins, fresh_repins]
""")
    return cfg


def test_lift_difference_by_hand(tmp_path):
    cfg = load_config(_tiny_workspace(tmp_path))
    # per user (fresh repins a, repins b): control (2, 3), (0, 1), (0, 0); treatment (2, 2), (1, 4), (1, 1)
    a_c, b_c, a_t, b_t = [2, 0, 0], [3, 1, 0], [2, 1, 1], [2, 4, 1]
    cells = cells_of(cfg.metric_list())
    [(a, b)] = lift_pairs(cells, cfg.surfaces)
    assert (a.key, b.key) == ("fresh_repins/homefeed", "repins/homefeed")
    with open_readonly(Sources.for_experiment(cfg.workdir, cfg.experiment_dir)) as con:
        sums = sufficient_stats(con, cells, None, [(a, b)])
    hand = {"control": (3, 2, 4, 4, 10, 6), "treatment": (3, 4, 6, 7, 21, 9)}   # n, Σa, Σa², Σb, Σb², Σab
    for v, expected in hand.items():
        s = sums[v]
        got = (s["n"], s[f"sx{a.index}"], s[f"sxx{a.index}"], s[f"sx{b.index}"], s[f"sxx{b.index}"],
               s[cross_sum_name(a, b)])
        assert got == expected
    [d] = analyze(cfg, write=False)["lift_differences"]
    # fresh: (4/3) / (2/3) − 1 = 1; all repins: (7/3) / (4/3) − 1 = 0.75
    assert d["key"] == "fresh_repins/homefeed - repins/homefeed"
    assert d["lift_a"]["value"] == pytest.approx(1.0) and d["lift_b"]["value"] == pytest.approx(0.75)
    assert d["difference"]["value"] == pytest.approx(0.25)
    r = stats.lift_difference_test(stats.PairedMeanStats.from_values(a_c, b_c),
                                   stats.PairedMeanStats.from_values(a_t, b_t))
    for name in ("lift_a", "lift_b", "difference"):
        assert d[name] == _as_json(getattr(r, name))
    assert d["lift_correlation"] == float(r.lift_correlation)


def test_multiple_testing_adjusts_family(synth):
    _, cfg, analysis, _ = synth
    res = [r for r in analysis["results"] if r["p_value"] is not None]
    expected = multipletests([r["p_value"] for r in res], method="fdr_bh")[1]
    np.testing.assert_allclose([r["p_adjusted"] for r in res], expected)
    assert all(r["p_adjusted"] >= r["p_value"] for r in res)
    # the zero-variance hides metric has no p-value and is never significant
    assert all(not r["significant"] for r in analysis["results"] if r["metric"] == "hides")


def test_reports_written(synth):
    _, cfg, analysis, _ = synth
    d = cfg.experiment_dir
    saved = json.loads((d / "analysis.json").read_text())
    assert saved["users"] == analysis["users"] and len(saved["results"]) == len(analysis["results"])
    html = (d / "report.html").read_text()
    assert "data:image/png;base64," in html and "SRM: ok" in html and "repins" in html
    assert (d / "forest.png").read_bytes()[:4] == b"\x89PNG"
    md = (d / "report.md").read_text()
    assert "| repins | homefeed | cuped_welch |" in md
    assert not list(d.glob(".tmp*"))


def test_srm_flags_lost_treatment_users(tmp_path):
    cfg_path, truth = make_workspace(tmp_path, skew_drop=0.12, seed=1)
    a = analyze(load_config(cfg_path), write=False)
    assert a["srm"]["mismatch"] and a["srm"]["p_value"] < 0.001
    assert "MISMATCH" in render_markdown(a)


def test_bad_input_fails_cleanly(tmp_path, capsys):
    cfg_path, _ = make_workspace(tmp_path, seed=2)
    cfg = load_config(cfg_path)
    exp = cfg.experiment_dir
    # an arm with no users
    table = pq.read_table(exp / "exposures" / "part-0.parquet")
    pq.write_table(table.filter(pa.compute.equal(table["variant"], "control")), exp / "exposures" / "part-0.parquet")
    with pytest.raises(InputError, match="variant 'treatment': expected at least 2 users, found 0"):
        analyze(cfg)
    assert not (exp / "analysis.json").exists()
    # an unknown variant
    pq.write_table(table.set_column(2, "variant", pa.array(["b"] * table.num_rows)), exp / "exposures" / "part-0.parquet")
    with pytest.raises(InputError, match="column 'variant': expected one of control, treatment, found 'b'"):
        analyze(cfg)
    pq.write_table(table, exp / "exposures" / "part-0.parquet")
    # empty events
    events = pq.read_table(exp / "events", partitioning=None)
    for f in (exp / "events").rglob("*.parquet"):
        f.unlink()
    pq.write_table(events.slice(0, 0), exp / "events" / "day=20" / "part-0.parquet")
    assert main(["analyze", str(cfg_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"abtest: {exp / 'events'}: events: expected event rows, found none"
    # missing events, wrong column type
    for f in (exp / "events").rglob("*.parquet"):
        f.unlink()
    with pytest.raises(InputError, match="events: expected Parquet files, found none"):
        analyze(cfg)
    pq.write_table(events.set_column(6, "action", pa.array(np.zeros(events.num_rows, np.int64))),
                   exp / "events" / "day=20" / "part-0.parquet")
    with pytest.raises(InputError, match="column 'action': expected string, found BIGINT"):
        analyze(cfg)
    assert not (exp / "analysis.json").exists() and not list(exp.glob(".tmp*"))
    write_vocabulary(tmp_path / "nowhere", PINWORLD)
    missing = load_config(cfg_path, workdir=str(tmp_path / "nowhere"))
    with pytest.raises(InputError, match="experiment: expected a directory with exposures"):
        analyze(missing)
