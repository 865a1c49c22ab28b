"""A workspace whose surfaces have other names goes through the whole loop with no code changed:
a tiny pinworld whose feed is called ``search`` and whose ads surface ``shop`` is generated, validated,
ranked, and put through an A/B simulation and its analysis."""

from __future__ import annotations

import json

import yaml

from abtest import cli as abtest_cli
from pinlift.core.vocabulary import load_vocabulary
from pinworld import cli as pinworld_cli
from ranking import train


def test_generate_declares_and_logs_the_renamed_surfaces(renamed_workdir):
    vocab = load_vocabulary(renamed_workdir)
    assert vocab.names == ("search", "related", "shop")
    assert [s.kind for s in vocab.surfaces] == ["feed", "related", "ads"]
    logged = sorted(p.name for p in (renamed_workdir / "logs/impressions/day=0").iterdir())
    assert logged == ["surface=related", "surface=search", "surface=shop"]
    assert pinworld_cli.main(["validate", "--workdir", str(renamed_workdir), "--skip-images"]) == 0


def test_rank_simulate_and_analyze(renamed_workdir, capsys):
    W = str(renamed_workdir)
    assert train.main(["--workdir", W, "--run-name", "ids_s0", "--epochs", "1", "--batch-size", "4096",
                       "--checks-per-epoch", "1", "--embedding-dim", "4", "dense_hidden=[8]", "over_hidden=[8]",
                       "--dcn-low-rank", "4"]) == 0
    report = json.loads((renamed_workdir / "ranking/runs/ids_s0/eval.json").read_text())
    assert set(report["metrics"]) == {"search/repin", "search/click", "related/repin", "related/click", "shop/click"}

    exp = {"name": "renamed", "salt": "renamed-v1", "arms": {"control": {"run": "ids_s0"},
                                                              "treatment": {"run": "ids_s0"}},
           "days": {"start": 28, "count": 3}, "pre_period_days": 7, "users": {"count": 300},
           "metrics": ["repins", "fresh_repins", "new_ad_clicks", "ctr", "cpc",
                       {"name": "click_position", "surfaces": ["search"], "aggregate": "mean",
                        "column": "position", "action": "click"}]}
    path = renamed_workdir / "exp.yaml"
    path.write_text(yaml.safe_dump(exp))
    assert abtest_cli.main(["simulate", str(path), "--workdir", W, "--quiet"]) == 0
    assert abtest_cli.main(["analyze", str(path), "--workdir", W]) == 0
    analysis = json.loads((renamed_workdir / "experiments/renamed/analysis.json").read_text())
    keys = {r["key"] for r in analysis["results"]}
    assert {"repins/search", "fresh_repins/related", "new_ad_clicks/shop", "cpc/shop",
            "click_position/search"} <= keys
    assert not any(k.endswith(("/homefeed", "/ads")) for k in keys)
