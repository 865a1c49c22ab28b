"""Segment-wise Platt calibration of a frozen run's predicted probabilities.

An ads auction ranks by pCTR × bid, so pCTR must be right in level, not only in order. A model whose
pins without an ID row all share the unknown row misjudges exactly the new ads: the IDs-only run
overrated them in the demo world, which bought them impressions their clicks did not earn. Calibration
fits ``p' = sigmoid(a_s · logit(p) + b_s)`` per segment ``s`` (new ad or not × pin ID seen in training or
not) on logged impressions from days the run did not train on, by maximum likelihood (scikit-learn's
logistic regression on the one feature logit(p)); a segment with too few impressions or no click keeps
the identity.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression

from pinlift.core.clock import NEW_AD_DAYS

SEGMENTS = ("old_ad_seen_id", "old_ad_unseen_id", "new_ad_seen_id", "new_ad_unseen_id")
MIN_IMPRESSIONS, MIN_CLICKS = 200, 5
_EPS = 1e-6


def ad_segments(age_days, seen_id) -> np.ndarray:
    """Segment index of each row: 2 × (ad age < NEW_AD_DAYS) + (pin ID unseen in training)."""
    return 2 * (np.asarray(age_days) < NEW_AD_DAYS).astype(np.int64) + (~np.asarray(seen_id, bool)).astype(np.int64)


def _logit(p) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


@dataclass
class SegmentCalibration:
    """Platt parameters ``a``, ``b`` per segment, with the impressions, clicks and mean prediction
    before and after that fitted them (for the report)."""

    a: list[float]
    b: list[float]
    impressions: list[int]
    clicks: list[int]
    mean_before: list[float | None]
    mean_after: list[float | None]

    @classmethod
    def fit(cls, p, y, segment) -> SegmentCalibration:
        """Fit on predictions ``p``, outcomes ``y`` (0/1) and segment indices ``segment``."""
        p, y, segment = np.asarray(p, np.float64), np.asarray(y, np.float64), np.asarray(segment)
        a, b = [1.0] * len(SEGMENTS), [0.0] * len(SEGMENTS)
        n, c = [0] * len(SEGMENTS), [0] * len(SEGMENTS)
        for s in range(len(SEGMENTS)):
            on = segment == s
            n[s], c[s] = int(on.sum()), int(y[on].sum())
            if n[s] < MIN_IMPRESSIONS or c[s] < MIN_CLICKS or c[s] == n[s]:
                continue
            lr = LogisticRegression(C=1e8, tol=1e-10, max_iter=1000).fit(_logit(p[on])[:, None], y[on])
            a[s], b[s] = float(lr.coef_[0, 0]), float(lr.intercept_[0])
        out = cls(a, b, n, c, [], [])
        after = out.apply(p, segment)
        out.mean_before = [float(p[segment == s].mean()) if n[s] else None for s in range(len(SEGMENTS))]
        out.mean_after = [float(after[segment == s].mean()) if n[s] else None for s in range(len(SEGMENTS))]
        return out

    def apply(self, p, segment) -> np.ndarray:
        """Calibrated probabilities (NaN stays NaN)."""
        segment = np.asarray(segment)
        a, b = np.asarray(self.a)[segment], np.asarray(self.b)[segment]
        return 1.0 / (1.0 + np.exp(-(a * _logit(p) + b)))

    def to_dict(self) -> dict:
        return {"segments": list(SEGMENTS), **asdict(self)}
