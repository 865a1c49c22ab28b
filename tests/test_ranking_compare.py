"""ranking.compare: paired lifts over seeds, the results section, and a real two-arm run on the tiny world."""

from __future__ import annotations

import json

import pytest

from ranking import compare


def _report(auc_all, auc_fresh):
    m = lambda a: {"auc": a, "n": 100, "ne": 0.9, "calibration": 1.0}  # noqa: E731
    return {"metrics": {"homefeed/repin": {"all": m(auc_all), "fresh": m(auc_fresh)}}, "cutoff_day": 20,
            "generator_version": "x"}


def test_summary_pairs_lifts_by_seed():
    reports = {"ids": [_report(0.70, 0.60), _report(0.72, 0.62)],
               "oracle": [_report(0.71, 0.65), _report(0.74, 0.66)]}
    s = compare.summarize(reports)
    o = s["homefeed/repin"]["fresh"]["oracle"]
    assert o["lift_mean"] == pytest.approx(0.045) and o["lift_sd"] == pytest.approx(0.00707, abs=1e-4)
    assert s["homefeed/repin"]["all"]["ids"]["lift_mean"] == 0
    table = compare.format_table(s, ["ids", "oracle"])
    assert "| homefeed/repin | fresh | 100 | 0.6100 ± 0.0141 | 0.6550 (+0.0450 ± 0.0071) |" in table


def test_results_section_is_replaced_not_duplicated(tmp_path):
    path = tmp_path / "results.md"
    path.write_text("# results\n\nkeep me\n")
    compare.write_results(path, "first")
    compare.write_results(path, "second")
    text = path.read_text()
    assert "keep me" in text and "second" in text and "first" not in text
    assert text.count(compare.RESULTS_BEGIN) == 1


def test_compare_runs_arms_on_tiny(tiny_workdir, tmp_path, capsys):
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
    assert r["diff_mean"] == pytest.approx(r["separate"] - r["joint"])
    assert "skipping arm 'pinclip'" in capsys.readouterr().err
    assert out["summary"]["homefeed/repin"]["all"]["oracle"]["seeds"] == 1
    assert "ranking-compare:begin" in results.read_text()
    with pytest.raises(SystemExit):
        compare.main(["--workdir", str(tiny_workdir), "--arms", "bogus"])
    with pytest.raises(SystemExit):
        compare.main(["--workdir", str(tiny_workdir), "--arms", "ids", "--per-surface", "oracle"])
