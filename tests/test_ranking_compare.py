"""ranking.compare: paired lifts over seeds, the results section, and a real two-arm run on the tiny world."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pinlift.core.errors import InputError
from ranking import compare
from ranking.metrics import load_resamples, save_resamples


def _report(auc_all, auc_fresh, run="run"):
    m = lambda a: {"auc": a, "n": 100, "positives": 20, "users": 30, "ne": 0.9, "calibration": 1.0}  # noqa: E731
    return {"run": run, "metrics": {"homefeed/repin": {"all": m(auc_all), "fresh": m(auc_fresh)}}, "cutoff_day": 20,
            "generator_version": "x"}


def _resampled(reports, wobble):
    """Each run's resampled AUCs: its AUC plus ``wobble[arm]`` times the sway of the users drawn in each
    resample, the same users for every run (evaluated on the same rows)."""
    sway = np.linspace(-0.02, 0.02, 201)
    return {r["run"]: {("homefeed/repin", sl): (m["auc"] + wobble[arm] * sway, "100:rows")
                       for sl, m in r["metrics"]["homefeed/repin"].items()} for arm, runs in reports.items() for r in runs}


def test_summary_pairs_lifts_by_seed_and_by_resampled_users():
    reports = {"ids": [_report(0.70, 0.60, "ids_s0"), _report(0.72, 0.62, "ids_s1")],
               "oracle": [_report(0.71, 0.65, "oracle_s0"), _report(0.74, 0.66, "oracle_s1")]}
    resampled = _resampled(reports, {"ids": 1.0, "oracle": 1.5})
    s = compare.summarize(reports, resampled)
    o = s["homefeed/repin"]["fresh"]["oracle"]
    assert o["lift_mean"] == pytest.approx(0.045) and o["lift_sd"] == pytest.approx(0.00707, abs=1e-4)
    # the users drawn sway both arms: the paired lift sways 0.5x, though the oracle's AUC sways 1.5x
    np.testing.assert_allclose(o["lift_ci"], [0.045 - 0.5 * 0.019, 0.045 + 0.5 * 0.019])
    np.testing.assert_allclose(o["auc_ci"], [0.655 - 1.5 * 0.019, 0.655 + 1.5 * 0.019])
    assert (o["n"], o["positives"], o["users"]) == (100, 20, 30)
    assert s["homefeed/repin"]["all"]["ids"]["lift_mean"] == 0 and s["homefeed/repin"]["all"]["ids"]["lift_ci"] == [0, 0]
    table = compare.format_table(s, ["ids", "oracle"])
    assert ("| homefeed/repin | fresh | 100 | 20 | 30 | 0.6100 ± 0.0141 [0.5910, 0.6290] | "
            "0.6550 (+0.0450 ± 0.0071 [+0.0355, +0.0545]) |") in table
    # runs evaluated on other rows are not paired
    cells = resampled["oracle_s1"]
    cells["homefeed/repin", "all"] = (cells["homefeed/repin", "all"][0], "99:other")
    with pytest.raises(InputError, match=r"^ranking runs 'ids_s0' and 'oracle_s1': homefeed/repin all: expected the "
                                         r"same evaluation rows, to pair them .*found other rows"):
        compare.summarize(reports, resampled)


def test_results_section_is_replaced_not_duplicated(tmp_path):
    path = tmp_path / "results.md"
    path.write_text("# results\n\nkeep me\n")
    compare.write_results(path, "first")
    compare.write_results(path, "second")
    text = path.read_text()
    assert "keep me" in text and "second" in text and "first" not in text
    assert text.count("<!-- ranking-compare:begin -->") == 1


def test_compare_runs_arms_on_tiny(tiny_workdir, tmp_path, capsys, monkeypatch):
    results = tmp_path / "results.md"
    assert compare.main(["--workdir", str(tiny_workdir), "--arms", "ids,oracle,pinclip", "--seeds", "0",
                         "--epochs", "1", "--results", str(results), "--per-surface", "ids"]) == 0
    out = json.loads((tiny_workdir / "ranking/compare.json").read_text())
    assert out["arms"] == ["ids", "oracle"]                       # no PinCLIP published in this workspace
    # IDs-only has the content inputs too (empty), so both arms have the same widths
    ids_cfg = json.loads((tiny_workdir / "ranking/runs/ids_s0/config.json").read_text())
    assert ids_cfg["empty_content"] is True and ids_cfg["embeddings"] is None
    # one model per surface, beside the joint one
    per = {(r["task"], r["slice"]): r for r in out["per_surface"]}
    assert set(per) >= {("homefeed/repin", "all"), ("related/repin", "all"), ("ads/click", "new_ads")}
    ads_cfg = json.loads((tiny_workdir / "ranking/runs/ids_ads_s0/config.json").read_text())
    assert ads_cfg["surfaces"] == ["ads"]
    r = per[("ads/click", "all")]
    assert r["diff_mean"] == pytest.approx(r["separate"] - r["joint"]) and r["diff_ci"][0] < r["diff_ci"][1]
    # every slice with its rows, positives, users and intervals; the lift's paired on the same users
    e = out["summary"]["homefeed/repin"]["fresh"]["oracle"]
    assert e["n"] > e["positives"] > 0 and e["users"] > 0 and e["lift_ci"][0] < e["lift_ci"][1]
    assert out["bootstrap"]["unit"] == "user"
    printed = capsys.readouterr()
    assert "| task | slice | n | positives | users | ids | oracle |" in printed.out
    assert "skipping 'pinclip': nothing published under 'pinclip' yet" in printed.err
    assert out["summary"]["homefeed/repin"]["all"]["oracle"]["seeds"] == 1
    assert "ranking-compare:begin" in results.read_text()
    # run again, the runs are reused; with other settings they are refused, not silently reused
    ids_eval = tiny_workdir / "ranking/runs/ids_s0/eval.json"
    stamp = ids_eval.stat().st_mtime_ns
    again = ["--workdir", str(tiny_workdir), "--arms", "ids", "--seeds", "0", "--epochs", "1"]
    assert compare.main([*again, "lr_dense=0.01"]) == 2
    err = capsys.readouterr().err
    assert err == ("ranking: run 'ids_s0' was started with other settings (lr_dense 0.002 -> 0.01); pass --restart to "
                   "start it over, or choose another run name\n")
    assert compare.main([*again, "seed=5"]) == 2      # seeds are --seeds
    assert capsys.readouterr().err.startswith("ranking: command line: seed: expected a key that no arm sets")
    # the default --results writes nothing outside the workspace (docs/results.md is `make results`'s)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "docs").mkdir()
    assert compare.main(again) == 0
    assert ids_eval.stat().st_mtime_ns == stamp and not (tmp_path / "docs" / "results.md").exists()
    # two runs evaluated on other rows are refused, not paired
    oracle = tiny_workdir / "ranking/runs/oracle_s0"
    kept = load_resamples(oracle)
    cells = {**kept, ("homefeed/repin", "fresh"): (kept["homefeed/repin", "fresh"][0], "1:0")}
    save_resamples(oracle, cells)
    try:
        assert compare.main(["--workdir", str(tiny_workdir), "--arms", "ids,oracle", "--seeds", "0", "--epochs", "1"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("ranking runs 'ids_s0' and 'oracle_s0': homefeed/repin fresh: expected the same "
                              "evaluation rows") and err.endswith("and 1:0)\n") and err.count("\n") == 1
    finally:
        save_resamples(oracle, kept)
    with pytest.raises(SystemExit):
        compare.main(["--workdir", str(tiny_workdir), "--arms", "bogus"])
    with pytest.raises(SystemExit):
        compare.main(["--workdir", str(tiny_workdir), "--arms", "ids", "--per-surface", "oracle"])


def test_claim_checks_pair_by_seed_and_judge_against_the_spread():
    from pinlift.core.vocabulary import PINWORLD
    from ranking.claims import IMPRESSION_SLICES, claim_checks, format_checks

    def runs(all_, fresh, few, many, seeds=3):
        """Eval reports whose homefeed AUCs are the given values plus a per-seed wobble."""
        wobble = [0.0, 0.001, -0.001][:seeds]
        slices = dict(zip(("all", "fresh", *IMPRESSION_SLICES), (all_, fresh, few, few, many, many)))
        return [{"metrics": {"homefeed/repin": {sl: {"auc": v + w} for sl, v in slices.items()}}} for w in wobble]

    def by_claim(reports):
        """The checks by claim, without the task prefix and the bracketed figures."""
        return {c["claim"].split(": ")[1].split(" (")[0]: c for c in claim_checks(reports, PINWORLD)}

    reports = {"ids": runs(0.70, 0.69, 0.68, 0.71), "pinclip": runs(0.72, 0.72, 0.71, 0.72),
               "topic": runs(0.71, 0.70, 0.69, 0.715), "topic_objects": runs(0.71, 0.725, 0.69, 0.715),
               "pinclip_shuffled": runs(0.70, 0.69, 0.68, 0.71)}
    # an arm's wobble repeats the IDs-only one, so paired differences are exact: test the rule, not the noise
    reports["pinclip"][1]["metrics"]["homefeed/repin"]["fresh"]["auc"] -= 0.0004
    checks = by_claim(reports)
    assert checks["pinclip lifts AUC overall"]["holds"] is True
    fresh = checks["the lift on fresh exceeds the overall lift"]
    np.testing.assert_allclose(fresh["per_seed"], [0.01, 0.0096, 0.01], atol=1e-9)
    assert fresh["holds"] is True
    assert checks["the lift shrinks with training impressions"]["holds"] is True      # 0.03 at few, 0.01 at many
    assert checks["pinclip beats the topic one-hot its objects show on fresh"]["holds"] is False   # 0.72 < 0.725
    # the latent true topic is a reference: its paired difference is reported with its spread, never judged
    latent = checks["pinclip against the latent true topic one-hot on fresh"]
    assert latent["reference"] is True and latent["holds"] is None and latent["se"] is not None
    np.testing.assert_allclose(latent["mean"], 0.02 - 0.0004 / 3, atol=1e-9)
    assert checks["pinclip_shuffled shows no lift"]["holds"] is True
    # a positive shuffled lift fails, and so does a difference that changes sign across seeds
    reports["pinclip_shuffled"] = runs(0.705, 0.69, 0.68, 0.71)
    reports["topic_objects"] = runs(0.71, 0.70, 0.69, 0.715)
    reports["topic_objects"][2]["metrics"]["homefeed/repin"]["fresh"]["auc"] += 0.05
    checks = by_claim(reports)
    assert checks["pinclip_shuffled shows no lift"]["holds"] is False
    assert checks["pinclip beats the topic one-hot its objects show on fresh"]["holds"] is False
    reports["topic_objects"] = runs(0.71, 0.70, 0.69, 0.715)
    checks = by_claim(reports)
    assert checks["pinclip beats the topic one-hot its objects show on fresh"]["holds"] is True
    assert "\n- reference: homefeed/repin: pinclip against the latent true topic one-hot on fresh: +0.0199 ± 0." in \
        format_checks(list(checks.values()))
    # one seed is not judged; without the topic arms their claims are left out
    one = {k: v[:1] for k, v in reports.items() if not k.startswith("topic")}
    checks = claim_checks(one, PINWORLD)
    assert all(c["holds"] is None and c["se"] is None for c in checks)
    assert not any("topic" in c["claim"] for c in checks)
    assert format_checks(checks).startswith("- not judged (one seed): homefeed/repin: pinclip lifts AUC overall: +0.0200")
    assert claim_checks({"pinclip": reports["pinclip"]}, PINWORLD) == []


def test_one_registration_adds_an_arm(tmp_path, capsys):
    """A registered arm is known to compare and, with a floor, is a cold-start claim; compare skips it while
    its embedding is not published."""
    from pinlift.core.vocabulary import PINWORLD
    from ranking.arms import ARMS, Arm, register_arm
    from ranking.claims import claim_checks

    register_arm(Arm("captions", "captions", floor="beats a caption bag of words"))
    try:
        reports = {arm: [_report(a, f), _report(a + 0.001, f + 0.001)]
                   for arm, (a, f) in {"ids": (0.70, 0.60), "pinclip": (0.72, 0.66), "captions": (0.71, 0.62)}.items()}
        claims = {c["claim"]: c for c in claim_checks(reports, PINWORLD)}
        np.testing.assert_allclose(claims["homefeed/repin: pinclip beats a caption bag of words on fresh"]["mean"], 0.04)
        assert compare.ensure_embeddings(str(tmp_path), [ARMS["ids"], ARMS["captions"]]) == [ARMS["ids"]]
        assert "skipping 'captions': nothing published under 'captions'" in capsys.readouterr().err
    finally:
        del ARMS["captions"]
