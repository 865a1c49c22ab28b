"""Offline metrics: AUC, normalized entropy and calibration (TorchRec's metric functions), overall and
on cold-start slices: fresh content, new ads, pins unseen in training, training-impression buckets."""

from __future__ import annotations

import numpy as np
import torch
from torchrec.metrics.auc import compute_auc
from torchrec.metrics.calibration import compute_calibration
from torchrec.metrics.ne import compute_cross_entropy, compute_ne

from pinlift.core.clock import FRESH_DAYS, NEW_AD_DAYS

IMPRESSION_BUCKETS = ((0, 0), (1, 10), (11, 100), (101, None))   # training impressions of the pin
MIN_SLICE = 50   # fewer examples (or no positives/negatives) -> metrics are not reported


def binary_metrics(pred: np.ndarray, label: np.ndarray) -> dict | None:
    """AUC, NE and calibration of probabilities ``pred`` for 0/1 ``label`` (None for degenerate slices)."""
    n, pos = len(label), float(np.sum(label))
    if n < MIN_SLICE or pos == 0 or pos == n:
        return None
    p = torch.from_numpy(np.asarray(pred, np.float64))[None, :]
    y = torch.from_numpy(np.asarray(label, np.float64))[None, :]
    w = torch.ones_like(p)
    eta = 1e-12
    ce = compute_cross_entropy(y, p, w, eta)
    ne = compute_ne(ce.sum(-1), w.sum(-1), (y * w).sum(-1), ((1 - y) * w).sum(-1), eta)
    return {"n": n, "positives": int(pos), "auc": float(compute_auc(1, [p], [y], [w])[0]),
            "ne": float(ne[0]), "calibration": float(compute_calibration((p * w).sum(-1), (y * w).sum(-1))[0])}


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
