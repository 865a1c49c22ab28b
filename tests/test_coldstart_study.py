"""The cold-start lift study on the tiny world.

Robustness on `tiny` was checked while developing on ten world seeds (0-9): with user x content crosses,
oracle > topic > IDs overall (oracle lift 0.029-0.039, topic lift 0.003-0.011) and the oracle lift on
pins unseen in training exceeds the lift on old pins (by 0.002-0.033) on every seed; the oracle lift on
fresh pins exceeds the one on old pins only on 9 of 10 seeds (seed 0, the fixture, is the exception),
so with crosses that ordering is not asserted here -- it holds clearly on `small` (docs/coldstart_study.md).
Without crosses the oracle lift on fresh pins exceeded the one on old pins on all ten seeds (by 0.0001 to
0.012) and is asserted on the fixture; the topic one-hot alone lifts nothing reliable without crosses.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from pinworld.coldstart_study import ARMS, SLICES, main, run_study
from pinworld.oracle import oracle_features


@pytest.fixture(scope="module")
def crossed(tiny_workdir):
    return run_study(tiny_workdir, n_boot=3)


@pytest.fixture(scope="module")
def global_only(tiny_workdir):
    return run_study(tiny_workdir, crosses=False, n_boot=0)


def test_structure_and_bookkeeping(crossed, tiny_world):
    r = crossed
    assert r["settings"]["cutoff"] == (2 * tiny_world.config.days) // 3
    assert r["world"]["preset"] == "tiny" and r["world"]["generator_version"] == tiny_world.generator_version
    assert set(r["auc"]) == set(ARMS) and set(r["lift"]) == {"topic", "oracle"}
    n_home = tiny_world.impressions(surfaces=["homefeed"]).height
    c = r["counts"]
    assert c["train"]["impressions"] + c["all"]["impressions"] == n_home
    assert c["fresh"]["impressions"] + c["old"]["impressions"] == c["all"]["impressions"]
    assert 0 < c["unseen"]["impressions"] < c["all"]["impressions"]
    for arm in ARMS:
        for s in SLICES:
            assert 0.55 < r["auc"][arm][s] < 0.95, (arm, s)
    for arm in ("topic", "oracle"):
        for s in SLICES:
            assert r["lift"][arm][s] == pytest.approx(r["auc"][arm][s] - r["auc"]["ids"][s])
            b = r["bootstrap"][arm][s]
            assert b["sd"] >= 0 and b["p05"] <= b["p95"]
    # content arms add features; crosses make them per user
    nf = r["n_features"]
    assert nf["ids"] < nf["topic"] < nf["oracle"]
    n_oracle, n_topics = oracle_features(tiny_world, [0]).shape[1], tiny_world.truth.n_topics
    assert nf["oracle"] - nf["ids"] == (tiny_world.config.n_users + 1) * n_oracle
    assert nf["topic"] - nf["ids"] == (tiny_world.config.n_users + 1) * n_topics


def test_crossed_orderings(crossed):
    auc, lift = crossed["auc"], crossed["lift"]
    assert lift["oracle"]["all"] > 0.01
    assert lift["topic"]["all"] > 0
    assert auc["oracle"]["all"] - auc["topic"]["all"] > 0.01
    assert auc["oracle"]["fresh"] > auc["topic"]["fresh"] > auc["ids"]["fresh"]
    # pins with no training impression (no ID feature) gain more than old pins
    assert lift["oracle"]["unseen"] > lift["oracle"]["old"]


def test_global_content_lifts_fresh_more_than_old(global_only, crossed):
    lift = global_only["lift"]
    assert global_only["settings"]["crosses"] is False
    assert lift["oracle"]["all"] > 0
    assert global_only["auc"]["oracle"]["all"] > global_only["auc"]["topic"]["all"]
    assert lift["oracle"]["fresh"] > lift["oracle"]["old"]
    assert lift["oracle"]["unseen"] > lift["oracle"]["old"]
    # crosses are what lets content personalise: without them the lift is a fraction of it
    assert lift["oracle"]["all"] < 0.5 * crossed["lift"]["oracle"]["all"]
    assert global_only["auc"]["ids"] == crossed["auc"]["ids"]  # the baseline does not depend on crosses


def test_cli_writes_json_and_table(tiny_workdir, tmp_path, capsys):
    out = tmp_path / "res" / "study.json"
    assert main(["--workdir", str(tiny_workdir), "--cutoff", "30", "--no-crosses", "--n-boot", "0",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "lift oracle" in text and "unseen" in text
    r = json.loads(out.read_text())
    assert r["settings"]["cutoff"] == 30 and r["settings"]["crosses"] is False
    assert r["bootstrap"] == {}
    assert all(np.isfinite(r["auc"][a][s]) for a in ARMS for s in SLICES)


def test_bad_arguments(tiny_workdir, tmp_path):
    with pytest.raises(ValueError, match="cutoff"):
        run_study(tiny_workdir, cutoff=0)
    with pytest.raises(ValueError, match="surface"):
        run_study(tiny_workdir, surface="search")
    with pytest.raises(ValueError, match="label"):
        run_study(tiny_workdir, label="like")
    assert main(["--workdir", str(tmp_path / "nothing")]) == 2


def test_negative_control_shuffled_oracle_does_not_lift(tiny_workdir, monkeypatch, crossed):
    """Oracle features of other pins (a random permutation) carry no signal: the lift disappears."""
    import pinworld.coldstart_study as cs

    real = cs.oracle_features

    def shuffled(world, pin_ids=None):
        feats = real(world, pin_ids)
        return feats[np.random.default_rng(0).permutation(len(feats))]

    monkeypatch.setattr(cs, "oracle_features", shuffled)
    r = cs.run_study(tiny_workdir, n_boot=0)
    assert r["lift"]["oracle"]["all"] < 0.005
    assert r["lift"]["oracle"]["unseen"] < 0.01
    assert crossed["lift"]["oracle"]["all"] > r["lift"]["oracle"]["all"] + 0.02
