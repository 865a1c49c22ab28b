"""Ranking features: point-in-time history, feature assembly, vocabularies, content joins, metrics."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from pinclip.embeddings import open_embeddings
from pinclip.publish import EmbeddingBatch, publish
from pinlift.core.vocabulary import PINWORLD
from ranking.features import (CONTENT_DIM, SPARSE_FEATURES, ContentFeatures, Examples, FeatureSource, Vocab, Vocabs,
                              base_dense, dense_width, make_batch, pooled_history)
from ranking.history import History, gather_jagged
from ranking.metrics import binary_metrics, slice_masks

DENSE = base_dense(PINWORLD)   # the dense features of pinworld's surfaces


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
        assert ex.dense[i, DENSE.index("pin_impressions")] == pytest.approx(np.log1p(before.height) / 5)
        assert ex.dense[i, DENSE.index("pin_repins")] == pytest.approx(np.log1p(before["repin"].sum()) / 5)
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
    for j, (surface, _) in enumerate(PINWORLD.tasks):
        on = ~np.isnan(ex.labels[:, j])
        assert (on == (ex.surface == PINWORLD.names.index(surface))).all()


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
    assert d.shape == (len(rows), dense_width(PINWORLD, True))
    base = len(DENSE)
    cand, cand_missing = d[:, base:base + CONTENT_DIM], d[:, base + CONTENT_DIM]
    has = np.isin(ex.pin_id[rows], known)
    assert (cand_missing == ~has).all()
    assert (np.abs(cand[~has]).sum(1) == 0).all() and (np.linalg.norm(cand[has], axis=1) > 0.9).all()
    look = open_embeddings(tmp_path, "half").lookup(ex.pin_id[rows][has], dequantize_values=True)
    np.testing.assert_allclose(cand[has], look.values, atol=1e-6)
    q0 = base + CONTENT_DIM + 1
    q_missing = d[:, q0 + CONTENT_DIM]
    assert (q_missing == ~np.isin(ex.query_pin_id[rows], known)).all()
    h0 = base + 2 * (CONTENT_DIM + 1)
    # the pooled history leaves the candidate's own saves out (a pin always matches itself)
    ref, ref_missing = _reference_pooled(ex, rows, known, look_of=open_embeddings(tmp_path, "half"),
                                         leave_out=np.where(has, ex.pin_id[rows], -1))
    np.testing.assert_allclose(d[:, h0:h0 + CONTENT_DIM], ref, rtol=1e-5, atol=1e-6)
    assert (d[:, h0 + CONTENT_DIM] == ref_missing).all()
    assert 0 < ref_missing.sum() < len(rows)          # both cases occur on this slice
    resaved = [has[n] and i_saved for n, i_saved in
               enumerate(ex.pin_id[i] in ex.history[0][ex.history[1][i]:ex.history[1][i + 1]] for i in rows)]
    assert any(resaved)                               # the case the exclusion is for occurs here
    # similarities: the candidate against the query pin and against the pooled history
    query = d[:, q0:q0 + CONTENT_DIM]
    np.testing.assert_allclose(d[:, -2], (cand.astype(np.float64) * query).sum(1), atol=1e-5)
    np.testing.assert_allclose(d[:, -1], (cand.astype(np.float64) * ref).sum(1), atol=1e-5)
    both = has & np.isin(ex.query_pin_id[rows], known)
    assert (d[~both, -2] == 0).all() and (np.abs(d[both, -2]) > 0).all()
    kjt = b.sparse_features
    assert list(kjt.keys()) == list(SPARSE_FEATURES)
    assert (kjt["query_pin"].lengths() == 1).all() and (kjt["advertiser"].lengths() == 0).all()
    pins = kjt["pin"].values().numpy()
    unseen = ~np.isin(ex.pin_id[rows], vocabs.pin.ids)
    assert (pins[unseen] == 0).all() and (pins[~unseen] > 0).all()
    shuffled = ContentFeatures(open_embeddings(tmp_path, "half"), shuffle_seed=1)
    assert not np.allclose(shuffled.rows(known)[0], content.rows(known)[0])
    assert sorted(map(tuple, shuffled.vectors.round(4))) == sorted(map(tuple, content.vectors.round(4)))


def _reference_pooled(ex, rows, known, look_of, leave_out=None):
    """Row by row: the float64 mean of the published vectors of the row's history pins that have one,
    without the pin ``leave_out[n]`` (the candidate)."""
    pooled, missing = np.zeros((len(rows), CONTENT_DIM)), np.zeros(len(rows), bool)
    for n, i in enumerate(rows):
        saves = ex.history[0][ex.history[1][i]:ex.history[1][i + 1]]
        have = saves[np.isin(saves, known) & (leave_out is None or saves != leave_out[n])]
        if len(have):
            pooled[n] = look_of.lookup(have, dequantize_values=True).values.astype(np.float64).mean(0)
        missing[n] = len(have) == 0
    return pooled, missing


def _examples(user, day, pin, history):
    """Hand-made Homefeed examples; ``history`` is each row's list of saved pin ids."""
    n = len(user)
    return Examples(
        user_id=np.array(user, np.int64), pin_id=np.array(pin, np.int64), query_pin_id=np.full(n, -1, np.int64),
        advertiser_id=np.full(n, -1, np.int64), surface=np.zeros(n, np.int8), day=np.array(day, np.int32),
        created_day=np.zeros(n, np.int32), is_ad=np.zeros(n, bool), dense=np.zeros((n, len(DENSE)), np.float32),
        labels=np.zeros((n, len(PINWORLD.tasks)), np.float32), boards=(np.zeros(0, np.int64), np.zeros(n + 1, np.int64)),
        history=(np.array([p for h in history for p in h], np.int64),
                 np.concatenate([[0], np.cumsum([len(h) for h in history])]).astype(np.int64)))


def test_pooled_history_matches_reference_with_empty_and_missing(tmp_path):
    known = np.array([10, 11, 12, 13, 14])             # pins 20 and 21 have no embedding
    vec = np.random.default_rng(1).normal(size=(len(known), 64))
    publish(tmp_path, "some", EmbeddingBatch(known, {"fusion": vec}), source={"kind": "test"})
    emb = open_embeddings(tmp_path, "some")
    content = ContentFeatures(emb)
    histories = {(1, 5): [10, 20, 11], (1, 6): [10, 20, 11, 12], (2, 5): [], (3, 5): [20, 21], (4, 5): [14],
                 (5, 5): [13, 12, 11, 10, 14, 20, 21, 10]}
    # users interleaved, several candidates per (user, day), as in a batch of slates
    keys = [(1, 5), (2, 5), (1, 5), (3, 5), (1, 6), (4, 5), (5, 5), (2, 5), (1, 5), (5, 5)]
    ex = _examples([u for u, _ in keys], [d for _, d in keys], [10 + i % 12 for i in range(len(keys))],
                   [histories[k] for k in keys])
    for rows in (np.arange(len(ex)), np.array([9, 3, 0, 0, 4, 1])):
        ref, ref_missing = _reference_pooled(ex, rows, known, emb)
        pooled, count = pooled_history(ex, rows, content)
        assert pooled.dtype == np.float32 and pooled.shape == (len(rows), CONTENT_DIM)
        np.testing.assert_allclose(pooled, ref, rtol=1e-6, atol=1e-7)
        assert list(count) == [sum(p in known for p in histories[keys[i]]) for i in rows]
        d = make_batch(ex, rows, Vocabs.fit(ex), content).dense_features.numpy()
        h0 = len(DENSE) + 2 * (CONTENT_DIM + 1)
        assert list(ref_missing) == [keys[i][0] in (2, 3) for i in rows]
        # in a batch, the candidate's own saves are left out of its pooled history; the indicator is on
        # when no other save has an embedding
        cand = ex.pin_id[rows]
        others, others_missing = _reference_pooled(ex, rows, known, emb, leave_out=np.where(np.isin(cand, known), cand, -1))
        np.testing.assert_allclose(d[:, h0:h0 + CONTENT_DIM], others, rtol=1e-5, atol=1e-6)
        assert list(d[:, h0 + CONTENT_DIM]) == list(others_missing)
        assert (d[others_missing, h0:h0 + CONTENT_DIM] == 0).all()


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
