"""ranking.metrics: the tie-aware AUC, the user bootstrap (weights, resampled AUCs, intervals), the rows
digest, the resamples file and the small-validation warning."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torchrec.metrics.auc import compute_auc

from pinlift.core.errors import InputError
from ranking import metrics


def _tied(n=205, distinct=149, seed=0):
    """A slice like the one TorchRec got wrong: ``n`` rows, ``distinct`` scores, labels following the score."""
    rng = np.random.default_rng(seed)
    grid = np.sort(rng.random(distinct))
    pred = np.r_[grid, rng.choice(grid, n - distinct)]
    label = (rng.random(n) < 0.2 + 0.5 * pred).astype(np.float64)
    assert len(np.unique(pred)) == distinct
    return pred, label


def test_auc_equals_sklearn_on_tied_scores_where_torchrec_does_not():
    pred, label = _tied()
    m = metrics.binary_metrics(pred, label)
    assert m["auc"] == pytest.approx(roc_auc_score(label, pred), abs=1e-12)
    assert (m["n"], m["positives"]) == (205, int(label.sum()))
    p, y = (torch.from_numpy(x)[None, :] for x in (pred, label))
    torchrec = float(compute_auc(1, [p], [y], [torch.ones_like(p)])[0])
    assert abs(torchrec - m["auc"]) > 1e-4   # why the AUC is no longer TorchRec's


def test_resampled_aucs_are_weighted_aucs_of_whole_users():
    pred, label = _tied(n=600, distinct=40, seed=1)
    user = np.random.default_rng(2).integers(100, 160, len(pred))
    got = metrics.auc_resamples(pred, label, user, resamples=6)
    users, column = np.unique(user, return_inverse=True)
    w = metrics.user_weights(users, range(6))
    for b in range(6):   # every row of a user weighs that user's count in the resample
        assert got[b] == pytest.approx(roc_auc_score(label, pred, sample_weight=w[b, column]), abs=1e-12)
    assert len(np.unique(got)) == 6
    # deterministic, and the same draws whatever the chunking
    np.testing.assert_array_equal(got, metrics.auc_resamples(pred, label, user, resamples=6))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(metrics, "_CHUNK", 1)
        np.testing.assert_array_equal(got, metrics.auc_resamples(pred, label, user, resamples=6))


def test_user_weights_depend_on_the_user_not_the_row():
    all_users = np.array([3, 17, 42, 1_000_003, -5])
    w = metrics.user_weights(all_users, range(0, 50))
    np.testing.assert_array_equal(metrics.user_weights(all_users[[4, 1]], range(10, 20)), w[10:20][:, [4, 1]])
    assert not np.array_equal(metrics.user_weights(all_users, range(0, 50), seed=1), w)
    many = metrics.user_weights(np.arange(20_000), range(0, 40))
    assert many.mean() == pytest.approx(1, abs=0.01) and many.var() == pytest.approx(1, abs=0.02)   # Poisson(1)
    assert abs(np.corrcoef(many[0], many[1])[0, 1]) < 0.03


def test_the_interval_resamples_users_not_rows():
    """Rows of one user share that user's taste: the interval must be as wide as the users are few."""
    rng = np.random.default_rng(3)
    users = np.repeat(np.arange(40), 50)
    taste = rng.normal(0, 1.5, 40)[users]
    pred = rng.normal(0, 1, len(users)) + taste
    label = (rng.random(len(users)) < 1 / (1 + np.exp(-(taste + 0.5 * (pred - taste))))).astype(float)
    by_user = metrics.interval(metrics.auc_resamples(pred, label, users))
    by_row = metrics.interval(metrics.auc_resamples(pred, label, np.arange(len(users))))
    assert by_user[0] < metrics.binary_metrics(pred, label)["auc"] < by_user[1]
    assert by_user[1] - by_user[0] > 2 * (by_row[1] - by_row[0])
    before = pred.copy()
    m, resampled = metrics.slice_metrics(pred, label, users)
    np.testing.assert_array_equal(pred, before)   # TorchRec's NE clamps its input in place: not ours
    assert m["users"] == 40 and m["auc_ci"] == by_user and len(resampled) == metrics.RESAMPLES


def test_interval_leaves_out_resamples_without_both_labels():
    assert metrics.interval(np.array([np.nan, 0.6, 0.7, 0.8]), level=1.0) == [0.6, 0.8]
    assert metrics.interval(np.full(5, np.nan)) is None
    assert metrics.format_ci(None) == "[n/a]"
    assert metrics.format_ci([-0.01, 0.02], signed=True) == "[-0.0100, +0.0200]"


def test_rows_digest_ignores_order_and_sees_any_change():
    user, pin, label = np.array([1, 2, 2, 3]), np.array([10, 11, 12, 10]), np.array([0, 1, 0, np.nan], np.float32)
    d = metrics.rows_digest(user, pin, label)
    order = np.array([3, 1, 0, 2])
    assert metrics.rows_digest(user[order], pin[order], label[order]) == d
    assert metrics.rows_digest(user, pin, np.array([0, 1, 1, np.nan], np.float32)) != d
    assert metrics.rows_digest(user[:3], pin[:3], label[:3]) != d
    assert metrics.rows_digest(np.r_[user, 0], np.r_[pin, 0], np.r_[label, 0]) != d   # an all-zero row counts


def test_resamples_file_round_trip(tmp_path):
    cells = {("homefeed/repin", "all"): (np.array([0.7, 0.71]), "4:ab"),
             ("ads/click", "train_impressions_101+"): (np.array([0.6, np.nan]), "2:cd")}
    metrics.save_resamples(tmp_path, cells)
    back = metrics.load_resamples(tmp_path)   # read with allow_pickle=False
    assert back.keys() == cells.keys()
    for k, (a, d) in cells.items():
        np.testing.assert_array_equal(back[k][0], a)
        assert back[k][1] == d
    with pytest.raises(InputError, match="resampled AUCs: expected the file a run's evaluation writes .*--retrain"):
        metrics.load_resamples(tmp_path / "old_run")


def test_small_validation_days_warn():
    assert metrics.validation_warning(5_000, 200) is None
    few_rows, few_positives = metrics.validation_warning(367, 250), metrics.validation_warning(90_000, 199)
    assert few_rows.startswith("ranking: warning: the validation days hold 367 rows and 250 positive labels")
    assert "90,000 rows and 199 positive labels" in few_positives and "\n" not in few_positives
