"""Offline metrics: AUC, normalized entropy and calibration, overall and on cold-start slices (fresh content,
new ads, pins unseen in training, training-impression buckets), each slice with its rows, positives, users
and a bootstrap interval of its AUC clustered by user.

NE and calibration are TorchRec's metric functions. The AUC is scikit-learn's ``roc_auc_score``: TorchRec's
``compute_auc`` orders tied scores arbitrarily (0.6815 against 0.6788 on a slice of 205 rows with 149
distinct scores). The interval resamples users, not rows, since one user's impressions are not independent:
a Poisson bootstrap in which user u weighs a Poisson(1) count in resample b, drawn from a hash of (seed, b, u)
alone, so that any two evaluations of the same users (two arms, two seeds, slices) are resampled alike and
their difference is paired. The resampled AUCs are computed here (``auc_resamples``), since the library
would sort the scores again in each of the B resamples: one sort of the negatives, then per resample the
weight of the negatives below each positive (ties count half) from (segment x user) counts of negatives,
O(n log n + B n) at worst.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from scipy import sparse
from scipy.stats import poisson
from sklearn.metrics import roc_auc_score
from torchrec.metrics.calibration import compute_calibration
from torchrec.metrics.ne import compute_cross_entropy, compute_ne

from pinlift.core.clock import FRESH_DAYS, NEW_AD_DAYS
from pinlift.core.errors import input_error
from pinlift.core.hashing import mix64

IMPRESSION_BUCKETS = ((0, 0), (1, 10), (11, 100), (101, None))   # training impressions of the pin
MIN_SLICE = 50   # fewer examples (or no positives/negatives) -> metrics are not reported
RESAMPLES, SEED, LEVEL = 200, 0, 0.95   # the user bootstrap: resamples, hash seed, interval level
BOOTSTRAP = {"unit": "user", "method": "poisson", "resamples": RESAMPLES, "seed": SEED, "level": LEVEL}
MIN_VALIDATION_ROWS, MIN_VALIDATION_POSITIVES = 5_000, 200   # fewer: the check kept may be picked on noise
RESAMPLES_FILE = "eval_resamples.npz"   # in a run directory: every slice's resampled AUCs
Resamples = dict[tuple[str, str], tuple[np.ndarray, str]]   # (task, slice): resampled AUCs, rows digest
_CHUNK = 1 << 20   # rows x resamples weighed at once (bounds memory to tens of MB)
_POISSON1_CDF = poisson.cdf(np.arange(32), 1.0)


def binary_metrics(pred: np.ndarray, label: np.ndarray) -> dict | None:
    """AUC, NE and calibration of probabilities ``pred`` for 0/1 ``label`` (None for degenerate slices)."""
    n, pos = len(label), float(np.sum(label))
    if n < MIN_SLICE or pos == 0 or pos == n:
        return None
    p = torch.from_numpy(np.array(pred, np.float64))[None, :]   # a copy: TorchRec clamps it in place
    y = torch.from_numpy(np.asarray(label, np.float64))[None, :]
    w = torch.ones_like(p)
    eta = 1e-12
    ce = compute_cross_entropy(y, p, w, eta)
    ne = compute_ne(ce.sum(-1), w.sum(-1), (y * w).sum(-1), ((1 - y) * w).sum(-1), eta)
    return {"n": n, "positives": int(pos), "auc": float(roc_auc_score(label, pred)),
            "ne": float(ne[0]), "calibration": float(compute_calibration((p * w).sum(-1), (y * w).sum(-1))[0])}


def slice_metrics(pred: np.ndarray, label: np.ndarray, user_id: np.ndarray) -> tuple[dict, np.ndarray] | None:
    """``binary_metrics`` with the slice's users and its AUC's interval (``auc_ci``), and the resampled AUCs."""
    m = binary_metrics(pred, label)
    if m is None:
        return None
    resampled = auc_resamples(pred, label, user_id)
    return {**m, "users": len(np.unique(user_id)), "auc_ci": interval(resampled)}, resampled


def user_weights(user_id: np.ndarray, resamples: range, seed: int = SEED) -> np.ndarray:
    """Poisson(1) weights (len(resamples), len(user_id)): a function of (seed, resample, user id) alone."""
    salt = mix64(np.array([seed], np.uint64))
    users = mix64(np.asarray(user_id).astype(np.uint64) ^ salt)
    b = mix64(np.arange(resamples.start, resamples.stop, dtype=np.uint64) + salt)
    uniform = (mix64(users[None, :] ^ b[:, None]) >> np.uint64(11)).astype(np.float64) * 2.0 ** -53
    return np.searchsorted(_POISSON1_CDF, uniform, side="right").astype(np.float32)


def auc_resamples(pred: np.ndarray, label: np.ndarray, user_id: np.ndarray, resamples: int = RESAMPLES,
                  seed: int = SEED) -> np.ndarray:
    """The AUC in each of ``resamples`` user resamples (NaN where one has no positive or no negative): per
    positive, the weight of the negatives scored below it plus half of those tied with it."""
    pred, label = np.asarray(pred), np.asarray(label) > 0
    users, column = np.unique(user_id, return_inverse=True)
    order = np.argsort(pred[~label], kind="stable")
    negatives = pred[~label][order]
    below, upto = (np.searchsorted(negatives, pred[label], side) for side in ("left", "right"))
    # negatives counted alike by every positive form one segment: weigh (segment x user) counts, not rows
    cuts, at = np.unique(np.r_[below, upto], return_inverse=True)
    segment = np.searchsorted(cuts, np.arange(len(negatives)), "right")
    counts = sparse.csr_matrix((np.ones(len(segment)), (segment, column[~label][order])),
                               shape=(len(cuts) + 1, len(users)))
    at_below, at_upto = at[:len(below)], at[len(below):]
    pos_column = column[label]
    out = np.empty(resamples)
    step = max(1, _CHUNK // max(len(cuts) + 1, len(pos_column)))
    for first in range(0, resamples, step):
        w = user_weights(users, range(first, min(first + step, resamples)), seed).T.astype(np.float64)
        cum = np.cumsum(counts @ w, axis=0)   # row t: the weight of negatives below cuts[t]
        wp = w[pos_column]
        with np.errstate(invalid="ignore", divide="ignore"):
            out[first:first + w.shape[1]] = ((wp * (cum[at_below] + cum[at_upto])).sum(0) / 2
                                             / (wp.sum(0) * cum[-1]))
    return out


def interval(resampled: np.ndarray, level: float = LEVEL) -> list[float] | None:
    """The percentile interval of bootstrap values, NaN resamples left out (None when none is finite)."""
    x = np.asarray(resampled)[np.isfinite(resampled)]
    if len(x) == 0:
        return None
    tail = (1 - level) / 2
    return [float(v) for v in np.quantile(x, [tail, 1 - tail])]


def format_ci(ci: list[float] | None, signed: bool = False) -> str:
    """``[0.7012, 0.7101]`` (``[+0.0010, +0.0200]`` when signed); ``[n/a]`` without finite resamples."""
    f = "{:+.4f}" if signed else "{:.4f}"
    return "[n/a]" if ci is None else f"[{f.format(ci[0])}, {f.format(ci[1])}]"


def rows_digest(*columns: np.ndarray) -> str:
    """An order-free fingerprint of evaluation rows, one array per column (ids, day, label): equal for runs
    evaluated on the same rows, whatever their order (the user weights do not depend on it)."""
    h = np.zeros(len(columns[0]), np.uint64)
    for c in columns:
        h = mix64(h + np.asarray(c, np.float64).view(np.uint64) + np.uint64(0x9E3779B97F4A7C15))
    return f"{len(h)}:{int(h.sum(dtype=np.uint64)):016x}"


def save_resamples(run_dir: Path, cells: Resamples) -> None:
    """Write a run's resampled AUCs and rows digests by (task, slice), as an npz without pickles."""
    keys = list(cells)
    np.savez(Path(run_dir) / RESAMPLES_FILE, task=np.array([k[0] for k in keys], str),
             slice=np.array([k[1] for k in keys], str), digest=np.array([cells[k][1] for k in keys], str),
             auc=np.array([cells[k][0] for k in keys], np.float64).reshape(len(keys), -1))


def load_resamples(run_dir: Path) -> Resamples:
    """What ``save_resamples`` wrote in ``run_dir``."""
    path = Path(run_dir) / RESAMPLES_FILE
    if not path.is_file():
        raise input_error(path, "resampled AUCs", "the file a run's evaluation writes (a run evaluated before "
                          "intervals: pass --retrain)", "no such file")
    with np.load(path, allow_pickle=False) as z:
        return {(str(t), str(s)): (a, str(d)) for t, s, a, d in zip(z["task"], z["slice"], z["auc"], z["digest"])}


def validation_warning(rows: int, positives: int) -> str | None:
    """One line when the validation days are too small to pick a check on (None otherwise)."""
    if rows >= MIN_VALIDATION_ROWS and positives >= MIN_VALIDATION_POSITIVES:
        return None
    return (f"ranking: warning: the validation days hold {rows:,} rows and {positives:,} positive labels (fewer than "
            f"{MIN_VALIDATION_ROWS:,} rows or {MIN_VALIDATION_POSITIVES} positives): the check kept may be picked on "
            "noise; give more --validation-days")


def slice_masks(day, created_day, is_ad, train_impressions) -> dict[str, np.ndarray]:
    """Named boolean masks over evaluation examples."""
    age = np.asarray(day) - np.asarray(created_day)
    masks = {"all": np.ones(len(age), bool), "fresh": age < FRESH_DAYS, "older": age >= FRESH_DAYS,
             "new_ads": np.asarray(is_ad) & (age < NEW_AD_DAYS), "older_ads": np.asarray(is_ad) & (age >= NEW_AD_DAYS),
             "unseen_pins": train_impressions == 0}
    for lo, hi in IMPRESSION_BUCKETS:
        name = f"train_impressions_{lo}" if lo == hi else (f"train_impressions_{lo}+" if hi is None
                                                            else f"train_impressions_{lo}_{hi}")
        masks[name] = (train_impressions >= lo) & (True if hi is None else train_impressions <= hi)
    return masks
