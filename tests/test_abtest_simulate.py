"""abtest simulate on the tiny world: auction and slates by hand, deterministic salted assignment,
outputs in the documented schemas, common random numbers, incremental embedding publishing with a
lag, a real ranking run as an arm, atomic failure."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from abtest.analyze import analyze
from abtest.assign import BUCKETS, assign, bucket_bounds, buckets, sample_users, variant_of_buckets
from abtest.candidates import CandidateSource
from abtest.config import Days, load_config
from pinlift.core.errors import InputError
from pinlift.core.vocabulary import PINWORLD
from abtest.publishers import OracleEmbeddingPublisher, make_publisher
from abtest.rankers import auction, rank_slates
from abtest.simulate import EVENTS_SCHEMA, EXPOSURES_SCHEMA, simulate, simulate_potential_outcomes
from pinworld.world import World

START = 30   # tiny world: 40 days of logs, rankers' default cutoff 26


def _yaml(tmp_path, workdir, body: str, name="exp") -> object:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\nworkdir: {workdir}\nsalt: test-salt\ndays: {{start: {START}, count: 2}}\n"
                    f"users: {{count: 200}}\npre_period_days: 7\n{body}")
    return load_config(path)


def test_auction_by_hand():
    pool = np.array([[10, 11, 12, 13]])
    pctr = np.array([[0.10, 0.05, 0.02, 0.04]])
    bid = np.array([[1.0, 3.0, 2.0, 0.5]])
    # eCPM 0.10, 0.15, 0.04, 0.02 -> ads 11, 10, 12; ad 13 bids below the reserve of 0.6
    slate, price = auction(pool, pctr, bid, k=2, reserve=0.6)
    np.testing.assert_array_equal(slate, [[11, 10]])
    # 11 pays eCPM(10) / pCTR(11) = 0.10 / 0.05 = 2.0; 10 pays 0.04 / 0.10 = 0.4 -> the reserve 0.6
    np.testing.assert_allclose(price, [[2.0, 0.6]])
    slate, price = auction(pool[:, :1], pctr[:, :1], bid[:, :1], k=2, reserve=0.6)
    np.testing.assert_array_equal(slate, [[10, -1]])
    assert price[0, 0] == 0.6 and np.isnan(price[0, 1])   # no runner-up: the reserve
    capped, p = auction(np.array([[1, 2]]), np.array([[0.01, 0.5]]), np.array([[5.0, 1.0]]), k=1, reserve=0.1)
    assert capped[0, 0] == 2 and p[0, 0] == pytest.approx(0.1)   # 0.05 / 0.5 = 0.1


def test_rank_slates_dedups_and_pads():
    pool = np.array([[5, 7, 5, 9], [3, -1, 3, 3]])
    score = np.array([[0.1, 0.5, 0.9, -np.inf], [0.2, 0.9, 0.3, 0.1]])
    np.testing.assert_array_equal(rank_slates(pool, score, 3), [[5, 7, -1], [3, -1, -1]])


def test_assignment_is_deterministic_salted_and_split():
    users = np.arange(20_000)
    a = assign("s1", users, (0.5, 0.5))
    np.testing.assert_array_equal(a, assign("s1", users, (0.5, 0.5)))
    assert abs((a == 1).mean() - 0.5) < 0.015
    b = assign("s2", users, (0.5, 0.5))
    assert abs((a == b).mean() - 0.5) < 0.015              # a new salt re-randomises independently
    c = assign("s1", users, (0.1, 0.1))
    assert abs((c == -1).mean() - 0.8) < 0.015 and ((c == 0) <= (a == 0)).all()  # nested bucket ranges
    np.testing.assert_array_equal(bucket_bounds((0.5, 0.5)), [5000, 10000])
    bk = buckets("s1", users[:5])
    assert ((0 <= bk) & (bk < BUCKETS)).all()
    np.testing.assert_array_equal(variant_of_buckets(np.array([[0, 4999, 5000, 9999]]), (0.5, 0.5)), [[0, 0, 1, 1]])
    s = sample_users(users, count=300, seed=3)
    assert len(s) == 300 and np.array_equal(s, sample_users(users[::-1], count=300, seed=3))


def test_oracle_publisher_is_incremental_with_lag(tiny_workdir, tiny_oracle, tmp_path):
    world = World(tiny_workdir)
    pub = OracleEmbeddingPublisher(world, tmp_path, "oracle", lag=2)
    created = world.table("pins").sort("pin_id")["created_day"].to_numpy()
    v1 = pub.publish_until(30)
    assert v1.version == "v0001" and created[v1.pin_ids].max() == 28   # created <= day - lag
    v2 = pub.publish_until(31)
    assert v2.version == "v0002" and v2.manifest["parent"] == "v0001" and v2.manifest["as_of_day"] == 30
    assert set(created[np.setdiff1d(v2.pin_ids, v1.pin_ids)]) == {29}
    assert pub.publish_until(31) is v2
    np.testing.assert_array_equal(v2.lookup(v1.pin_ids[:50]).values, tiny_oracle.lookup(v1.pin_ids[:50]).values)


def test_publisher_follows_the_source_kind_of_the_workspace_version(tiny_workdir, tmp_path):
    from pinclip.oracle_source import publish_oracle

    publish_oracle(tiny_workdir, "floor_objects", kind="topic_objects")
    pub = make_publisher(World(tiny_workdir), tmp_path, "floor_objects", lag=2)
    assert isinstance(pub, OracleEmbeddingPublisher) and pub.kind == "topic_objects"
    assert pub.publish_until(30).manifest["source"]["kind"] == "topic_objects"


def test_ads_pool_depth_follows_the_experiment(tiny_workdir):
    world = World(tiny_workdir)
    users = np.arange(50)
    pools = {}
    for per_slot in (4, 16):
        reqs = CandidateSource(world, per_slot).requests(
            START, users, ["ads"], lambda s: np.random.default_rng(0))["ads"]
        assert reqs.pool.shape == (len(reqs), per_slot * reqs.k)
        live = (world.table("ads").filter((world.table("ads")["created_day"] <= START)
                                          & (world.table("ads")["end_day"] > START))["pin_id"].to_numpy())
        assert np.isin(reqs.pool, live).all()
        pools[per_slot] = reqs
    np.testing.assert_array_equal(pools[4].user_ids, pools[16].user_ids)   # same requests, deeper pools


def test_logging_policy_experiment_end_to_end(tiny_workdir, tmp_path):
    cfg = _yaml(tmp_path, tiny_workdir, "arms:\n  control: {ranker: logging_policy}\n"
                "  treatment: {ranker: logging_policy, lift: {repin: 0.5}}\n")
    out = simulate(cfg, progress=False)
    exposures = pq.read_table(out / "exposures")
    assert exposures.schema.equals(EXPOSURES_SCHEMA)
    users = exposures["user_id"].to_numpy()
    assert len(np.unique(users)) == len(users) <= 200
    v = np.asarray(exposures["variant"].to_pylist())
    expect = np.where(assign("test-salt", users, (0.5, 0.5)) == 1, "treatment", "control")
    np.testing.assert_array_equal(v, expect)
    parts = sorted(p.parent.name for p in (out / "events").rglob("*.parquet"))
    assert set(parts) == {f"day={START}", f"day={START + 1}"}
    events = pq.read_table(out / "events", partitioning=None)
    assert events.schema.equals(EVENTS_SCHEMA)
    assert set(events["action"].to_pylist()) <= {"impression", "repin", "click", "hide"}
    ev = events.to_pandas()
    clicks = ev[(ev.action == "click") & (ev.surface == "ads")]
    assert len(clicks) and (clicks.value > 0).all() and ev[ev.action != "click"].value.isna().all()
    first = ev.groupby("user_id").day.min()
    fe = dict(zip(users, exposures["first_exposure_day"].to_numpy()))
    assert all(fe[u] == d for u, d in first.items())
    meta = json.loads((out / "simulation.json").read_text())
    assert meta["exposed"]["control"] + meta["exposed"]["treatment"] == len(users)
    # deterministic: the same file gives the same events
    again = pq.read_table(simulate(cfg, progress=False) / "events", partitioning=None)
    assert again.equals(events)
    a = analyze(cfg)
    assert (out / "report.html").is_file() and a["users"]["treatment"] == int((v == "treatment").sum())


def test_common_random_numbers_potential_outcomes(tiny_workdir, tmp_path):
    cfg = _yaml(tmp_path, tiny_workdir, "aa: true\narms:\n  control: {ranker: logging_policy}\n")
    base = cfg.arms.control
    dirs = simulate_potential_outcomes(
        cfg, {"base": base, "lifted": base.model_copy(update={"lift": {"repin": 0.3}})}, tmp_path / "po",
        progress=False)
    b = pq.read_table(dirs["base"] / "events", partitioning=None).to_pandas()
    lifted = pq.read_table(dirs["lifted"] / "events", partitioning=None).to_pandas()
    imp = ["request_id", "position", "pin_id"]
    # same slates, same hides and clicks; repins only added (u < p implies u < p (1 + δ))
    for action in ("impression", "click", "hide"):
        assert b[b.action == action][imp].reset_index(drop=True).equals(
            lifted[lifted.action == action][imp].reset_index(drop=True))
    rb = set(map(tuple, b[b.action == "repin"][imp].to_numpy()))
    rl = set(map(tuple, lifted[lifted.action == "repin"][imp].to_numpy()))
    assert rb < rl and 1.1 < len(rl) / len(rb) < 1.5


@pytest.fixture(scope="module")
def oracle_run(tiny_workdir, tiny_oracle):
    """A one-epoch ranking run with oracle content features, trained inside the test (seconds)."""
    from ranking import train

    cfg = train.TrainConfig(surfaces=["ads"], epochs=1, batch_size=512, embeddings="oracle",
                            embedding_dim=8, dense_hidden=[16], over_hidden=[16], dcn_low_rank=4)
    train.Trainer(cfg, tiny_workdir, "ab_oracle", restart=True).fit()
    return "ab_oracle"


def test_ranking_run_arm_with_lagged_embeddings_and_ann(tiny_workdir, tmp_path, oracle_run):
    cfg = _yaml(tmp_path, tiny_workdir, "embedding_lag_days: 1\narms:\n  control: {ranker: logging_policy}\n"
                f"  treatment: {{run: {oracle_run}, related_ann: {{k: 8}}}}\n", name="ranked")
    out = simulate(cfg, progress=False)
    meta = json.loads((out / "simulation.json").read_text())
    assert meta["embeddings_served"]["treatment"] == {str(START): "oracle@v0001", str(START + 1): "oracle@v0002"}
    assert [p["as_of_day"] for p in meta["publishes"]["oracle"]] == [START, START + 1]
    served = pq.read_table(out / "embeddings" / "oracle" / "v0002" / "part-00001.parquet")["pin_id"].to_numpy()
    created = World(tiny_workdir).table("pins").sort("pin_id")["created_day"].to_numpy()
    assert (created[served] == START).all()
    events = pq.read_table(out / "events", partitioning=None).to_pandas()
    assert {"homefeed", "related", "ads"} <= set(events.surface)
    a = analyze(cfg, write=False)
    assert {r["key"] for r in a["results"]} >= {"repins/related", "cpc/ads", "new_ad_clicks/ads"}
    # the run's Ads pCTR was calibrated on every logged Ads impression of days [cutoff, start)
    cal = meta["ads_calibration"][oracle_run]
    logged = World(tiny_workdir).impressions(since=26, as_of=START, surfaces=["ads"])
    assert cal["days"] == [26, START] and sum(cal["impressions"]) == logged.height
    assert sum(cal["clicks"]) == int(logged["click"].sum())
    # ... and refitted after every day on those plus the Ads impressions and clicks the run served so far
    ads = events[(events.surface == "ads") & events.user_id.isin(
        pq.read_table(out / "exposures").to_pandas().query("variant == 'treatment'").user_id)]
    assert [r["after_day"] for r in cal["refits"]] == [START, START + 1]
    for r in cal["refits"]:
        mine = ads[ads.day <= r["after_day"]]
        assert r["served_impressions"] == (mine.action == "impression").sum() > 0
        assert sum(r["impressions"]) == logged.height + r["served_impressions"]
        assert sum(r["clicks"]) == int(logged["click"].sum()) + (mine.action == "click").sum()


def test_ads_calibration_scores_impressions_where_they_were_shown(tiny_workdir, oracle_run):
    from ranking.score import Scorer

    scorer = Scorer(tiny_workdir, oracle_run)
    cal = scorer.fit_ads_calibration(26, START)
    logged = World(tiny_workdir).impressions(since=26, as_of=START, surfaces=["ads"])
    assert logged["position"].max() > 0
    shown, ex = scorer._predict(logged, "click")
    top, _ = scorer._predict(logged.with_columns(position=pl.lit(0, pl.Int16)), "click")
    segment = scorer._ad_segments(ex)
    for s, before in enumerate(cal.mean_before):
        if before is not None:
            assert before == pytest.approx(shown[segment == s].mean())
            assert before != pytest.approx(top[segment == s].mean())


def test_calibration_needs_logged_days(tiny_workdir, tmp_path, oracle_run):
    cfg = _yaml(tmp_path, tiny_workdir, f"arms:\n  control: {{run: {oracle_run}}}\n  treatment: {{run: {oracle_run}}}\n",
                name="nocal").model_copy(update={"days": Days(start=26, count=1)})
    with pytest.raises(InputError, match="calibrate_ads: expected logged days between run 'ab_oracle'"):
        simulate(cfg, progress=False)
    assert not (tiny_workdir / "experiments" / "nocal").exists()


def test_bad_arm_leaves_nothing(tiny_workdir, tmp_path):
    cfg = _yaml(tmp_path, tiny_workdir, "arms:\n  control: {ranker: logging_policy}\n"
                "  treatment: {run: no_such_run}\n", name="broken")
    with pytest.raises(InputError, match=r"broken.yaml:\d+: arms.treatment.run: expected a trained ranking run"):
        simulate(cfg, progress=False)
    early = _yaml(tmp_path, tiny_workdir, "arms:\n  control: {ranker: logging_policy}\n"
                  "  treatment: {ranker: logging_policy, related_ann: {k: 4}}\n", name="noemb")
    with pytest.raises(InputError, match="arms.treatment.related_ann: expected an arm with `embeddings:`"):
        simulate(early, progress=False)
    exp_root = tiny_workdir / "experiments"
    assert not (exp_root / "broken").exists() and not (exp_root / "noemb").exists()
    assert not list(exp_root.glob(".tmp*"))


def test_validation_study_runs_small(tiny_workdir, tmp_path):
    from abtest.metrics import builtin_metrics
    from abtest.validation import expected_lift, primary_test, run_validation

    lift = {"repin": 0.1, "click": 0.2}
    builtin = builtin_metrics(PINWORLD)
    assert expected_lift(builtin["repins"], lift) == pytest.approx(0.1)
    assert expected_lift(builtin["ctr"], lift) == pytest.approx(0.2)
    assert expected_lift(builtin["cpc"], lift) == pytest.approx(0.0)
    assert expected_lift(builtin["hides"], lift) == 0.0
    cfg = _yaml(tmp_path, tiny_workdir, "aa: true\narms:\n  control: {ranker: logging_policy}\n"
                "metrics: [repins, ctr, cpc]\n", name="val")
    report = run_validation(cfg, resalts=150, lift=0.3, out_dir=tmp_path / "v", progress=False)
    study = report["study"]
    assert study["resalts"] == 150 and len(study["cells"]) == 3 + 3 + 1
    cells = {c["key"]: c for c in study["cells"]}
    rep = primary_test(cells["repins/homefeed"])
    assert rep["method"] == "cuped_welch" and cells["repins/homefeed"]["expected_lift"] == pytest.approx(0.3)
    assert 0.0 <= rep["aa"]["fpr"] <= 0.15 and rep["injected"]["coverage"] > 0.8
    assert rep["injected"]["power"] > rep["aa"]["fpr"]
    # ratio CUPED, analyze's primary test for CTR with a pre-period, is validated like every other test
    ctr = cells["ctr/homefeed"]
    assert ctr["primary"] == "cuped_delta_ratio" and [t["method"] for t in ctr["tests"]] == ["delta_ratio",
                                                                                             "cuped_delta_ratio"]
    rc = primary_test(ctr)
    assert 0.0 <= rc["aa"]["fpr"] <= 0.15 and 0.0 < rc["aa"]["ks_p"] <= 1.0 and rc["injected"]["coverage"] > 0.8
    assert 0.0 < rc["cuped"]["reported_variance_factor"] <= 1.0 and rc["cuped"]["observed_variance_ratio"] > 0
    assert "naive_impression_ttest" in ctr
    names = [c["check"] for c in report["checks"]]
    for check in ("A/A FPR ctr/homefeed (cuped_delta_ratio)", "A/A p-values uniform ctr/homefeed (cuped_delta_ratio,",
                  "coverage ctr/homefeed (cuped_delta_ratio,"):
        assert any(n.startswith(check) for n in names), check
    assert {"false_alarm_rate", "skewed"} <= set(study["srm"]) and report["checks"]
    md = (tmp_path / "v" / "validation.md").read_text()
    assert "| ctr/homefeed | **cuped_delta_ratio** |" in md and "| ctr/homefeed | delta_ratio |" in md
    saved = json.loads((tmp_path / "v" / "validation.json").read_text())["study"]["cells"]
    assert [(c["primary"], [t["method"] for t in c["tests"]]) for c in saved] == [
        (c["primary"], [t["method"] for t in c["tests"]]) for c in study["cells"]]
    # `cuped: false` in the file: no covariate, the unadjusted tests only, as in `abtest analyze`
    plain = _yaml(tmp_path, tiny_workdir, "aa: true\narms:\n  control: {ranker: logging_policy}\n"
                  "metrics: [repins, ctr, cpc]\ncuped: false\n", name="val")
    study = run_validation(plain, resalts=150, lift=0.3, out_dir=tmp_path / "v", progress=False, reuse=True)["study"]
    assert {c["key"]: [t["method"] for t in c["tests"]] for c in study["cells"]}["ctr/homefeed"] == ["delta_ratio"]
    assert {c["primary"] for c in study["cells"]} == {"welch", "delta_ratio"}
