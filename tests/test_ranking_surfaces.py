"""Ranking on a workspace whose surfaces have other names: a feed called `search` and ads called `shop`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pinlift.core.vocabulary import Vocabulary
from ranking import train
from ranking.features import base_dense
from ranking.score import Scorer


def test_a_renamed_workspace_trains_and_serves(renamed_workdir, capsys):
    assert train.main(["--workdir", str(renamed_workdir), "--run-name", "renamed", "--epochs", "1",
                       "--batch-size", "4096", "--checks-per-epoch", "1", "--embedding-dim", "4",
                       "dense_hidden=[8]", "over_hidden=[8]", "--dcn-low-rank", "4"]) == 0
    run = renamed_workdir / "ranking" / "runs" / "renamed"
    report = json.loads((run / "eval.json").read_text())
    assert list(report["metrics"]) == ["search/repin", "search/click", "related/repin", "related/click", "shop/click"]
    assert "shop/click" in capsys.readouterr().out
    # the run records the surfaces it was trained with; the scorer rebuilds its layout from them
    recorded = json.loads((run / "config.json").read_text())["vocabulary"]
    vocab = Vocabulary.model_validate(recorded)
    assert vocab.names == ("search", "related", "shop") and vocab.surface("shop").tasks == ("click",)
    saved = json.loads((run / "run.json").read_text())["config"]   # what a resume must match
    assert saved["surfaces"] == list(vocab.names) and saved["vocabulary"] == recorded
    assert "surface_shop" in base_dense(vocab) and "surface_ads" not in base_dense(vocab)
    scorer = Scorer(renamed_workdir, "renamed")
    pins = scorer.world.table("pins")
    ads = pins.filter(pins["is_ad"])["pin_id"].to_numpy()[:12].reshape(2, 6)
    s = scorer.score([1, 2], "shop", ads, day=35)     # default task: shop's first, click
    assert s.shape == (2, 6) and ((s > 0) & (s < 1)).all()
    np.testing.assert_array_equal(s, scorer.score([1, 2], "shop", ads, day=35, task="click"))
    with pytest.raises(ValueError, match="surface 'shop' has no task 'repin'"):
        scorer.score([1], "shop", ads[:1], day=35, task="repin")
    with pytest.raises(ValueError, match="surface 'ads': expected one of search, related, shop"):
        scorer.score([1], "ads", ads[:1], day=35)
    cal = scorer.fit_ads_calibration(26, 30)
    assert sum(cal.impressions) > 0
