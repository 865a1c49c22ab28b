"""Ranking features: point-in-time history, feature assembly, vocabularies, content joins, metrics."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from pinclip.embeddings import open_embeddings
from pinclip.publish import EmbeddingBatch, publish
from ranking.features import (BASE_DENSE, CONTENT_DIM, SPARSE_FEATURES, TASKS, ContentFeatures, FeatureSource,
                              Vocab, Vocabs, dense_width, make_batch)
from ranking.history import History, gather_jagged
from ranking.metrics import binary_metrics, slice_masks


def test_history_counts_and_recent_items_strictly_before_day():
    h = History(entity=[1, 1, 1, 2, 1], day=[3, 5, 5, -4, 9], item=[10, 11, 12, 20, 13], weight=[1, 2, 3, 4, 5])
    np.testing.assert_array_equal(h.count_before([1, 1, 1, 2, 2, 3], [3, 5, 6, -4, 0, 9]), [0, 1, 6, 0, 4, 0])
    vals, lens = h.recent_before([1, 1, 2, 3], [6, 100, 0, 1], k=2)
    assert list(lens) == [2, 2, 1, 0] and list(vals) == [11, 12, 12, 13, 20]
    v, l = gather_jagged(np.array([5, 6, 7, 8]), np.array([0, 1, 1, 4]), np.array([2, 0, 1]))
    assert list(v) == [6, 7, 8, 5] and list(l) == [3, 1, 0]


def test_vocab_unknown_row():
    v = Vocab([30, 10, 20, 10])
    assert len(v) == 4
    np.testing.assert_array_equal(v.rows([10, 20, 30, 15, 99, -1]), [1, 2, 3, 0, 0, 0])


@pytest.fixture(scope="module")
def source(tiny_world):
    return FeatureSource(tiny_world)


def test_examples_match_brute_force(tiny_world, source):
    imp = tiny_world.impressions(since=25, as_of=27)
    ex = source.examples(imp)
    all_imp = tiny_world.impressions()
    edges = tiny_world.table("pin_board")
    rng = np.random.default_rng(0)
    for i in rng.choice(len(ex), 25, replace=False):
        pin, day, user = ex.pin_id[i], ex.day[i], ex.user_id[i]
        before = all_imp.filter((pl.col("pin_id") == pin) & (pl.col("day") < day))
        assert ex.dense[i, BASE_DENSE.index("pin_impressions")] == pytest.approx(np.log1p(before.height) / 5)
        assert ex.dense[i, BASE_DENSE.index("pin_repins")] == pytest.approx(np.log1p(before["repin"].sum()) / 5)
        saves = edges.filter((pl.col("user_id") == user) & (pl.col("day") < day)).sort("day", maintain_order=True)
        lo, hi = ex.history[1][i], ex.history[1][i + 1]
        assert hi - lo == min(10, saves.height)
        assert set(ex.history[0][lo:hi]) <= set(saves["pin_id"].to_list())
        assert set(saves["pin_id"].to_list()[-(hi - lo):]) == set(ex.history[0][lo:hi]) if hi > lo else True
        boards = edges.filter((pl.col("pin_id") == pin) & (pl.col("day") < day))
        assert ex.boards[1][i + 1] - ex.boards[1][i] == min(5, boards.height)
    related = ex.surface == 1
    assert (ex.query_pin_id[related] >= 0).all() and (ex.query_pin_id[~related] == -1).all()
    ads = ex.surface == 2
    assert (ex.advertiser_id[ads] >= 0).all() and (ex.advertiser_id[~ex.is_ad] == -1).all()
    # labels only where the task applies
    for j, (surface, _) in enumerate(TASKS):
        on = ~np.isnan(ex.labels[:, j])
        assert (on == (ex.surface == ["homefeed", "related", "ads"].index(surface))).all()


def test_batch_with_partial_embeddings_flags_missing(tiny_world, source, tmp_path):
    imp = tiny_world.impressions(since=30, as_of=31, surfaces=["related"])
    ex = source.examples(imp)
    known = np.unique(ex.pin_id)[::2]                 # publish only half of the candidate pins
    vec = np.random.default_rng(0).normal(size=(len(known), 64))
    publish(tmp_path, "half", EmbeddingBatch(known, {"fusion": vec}), source={"kind": "test"})
    content = ContentFeatures(open_embeddings(tmp_path, "half"))
    vocabs = Vocabs.fit(source.examples(tiny_world.impressions(as_of=20)))
    rows = np.arange(min(len(ex), 500))
    b = make_batch(ex, rows, vocabs, content)
    d = b.dense_features.numpy()
    assert d.shape == (len(rows), dense_width(True))
    base = len(BASE_DENSE)
    cand, cand_missing = d[:, base:base + CONTENT_DIM], d[:, base + CONTENT_DIM]
    has = np.isin(ex.pin_id[rows], known)
    assert (cand_missing == ~has).all()
    assert (np.abs(cand[~has]).sum(1) == 0).all() and (np.linalg.norm(cand[has], axis=1) > 0.9).all()
    look = open_embeddings(tmp_path, "half").lookup(ex.pin_id[rows][has], dequantize_values=True)
    np.testing.assert_allclose(cand[has], look.values, atol=1e-6)
    q0 = base + CONTENT_DIM + 1
    q_missing = d[:, q0 + CONTENT_DIM]
    assert (q_missing == ~np.isin(ex.query_pin_id[rows], known)).all()
    kjt = b.sparse_features
    assert list(kjt.keys()) == list(SPARSE_FEATURES)
    assert (kjt["query_pin"].lengths() == 1).all() and (kjt["advertiser"].lengths() == 0).all()
    pins = kjt["pin"].values().numpy()
    unseen = ~np.isin(ex.pin_id[rows], vocabs.pin.ids)
    assert (pins[unseen] == 0).all() and (pins[~unseen] > 0).all()
    shuffled = ContentFeatures(open_embeddings(tmp_path, "half"), shuffle_seed=1)
    assert not np.allclose(shuffled.rows(known)[0], content.rows(known)[0])
    assert sorted(map(tuple, shuffled.vectors.round(4))) == sorted(map(tuple, content.vectors.round(4)))


def test_unknown_surface_and_missing_pin_are_clear_errors(source, tiny_world):
    imp = tiny_world.impressions(since=30, as_of=31).head(5)
    with pytest.raises(ValueError, match="column 'surface': expected one of homefeed, related, ads, found 'search'"):
        source.examples(imp.with_columns(pl.lit("search").alias("surface")))
    with pytest.raises(ValueError, match="pin_id 123456789 not found in pins"):
        source.examples(imp.with_columns(pl.lit(123456789).cast(pl.Int64).alias("pin_id")))
    with pytest.raises(ValueError, match="no impressions"):
        source.examples(imp.head(0))


def test_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    y = rng.random(2000) < 0.2
    p = np.clip(0.2 + 0.3 * (y - 0.2) + rng.normal(0, 0.1, 2000), 0.01, 0.99)
    m = binary_metrics(p, y.astype(float))
    assert m["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-6)
    base = y.mean()
    entropy = -(base * np.log(base) + (1 - base) * np.log(1 - base))
    assert m["ne"] == pytest.approx(log_loss(y, p) / entropy, rel=1e-6)
    assert m["calibration"] == pytest.approx(p.sum() / y.sum(), rel=1e-9)
    assert binary_metrics(p[:10], y[:10].astype(float)) is None           # too small a slice
    assert binary_metrics(p, np.zeros(2000)) is None                      # no positives


def test_slices():
    masks = slice_masks(day=np.array([40, 40, 40, 40]), created_day=np.array([39, 10, 30, 20]),
                        is_ad=np.array([False, True, True, False]), train_impressions=np.array([0, 5, 50, 500]))
    assert list(masks["fresh"]) == [True, False, True, True]
    assert list(masks["new_ads"]) == [False, False, True, False] and list(masks["older_ads"]) == [False, True, False, False]
    assert list(masks["unseen_pins"]) == [True, False, False, False]
    assert [list(masks[k]).index(True) for k in ("train_impressions_0", "train_impressions_1_10",
                                                  "train_impressions_11_100", "train_impressions_101+")] == [0, 1, 2, 3]
