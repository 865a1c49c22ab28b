"""Segment-wise Platt calibration against statsmodels' unpenalized logistic regression."""

import numpy as np
import pytest
import statsmodels.api as sm

from ranking.calibration import MIN_IMPRESSIONS, SEGMENTS, SegmentCalibration, ad_segments


def test_segments_by_ad_age_and_seen_id():
    got = ad_segments([0, 13, 14, 100], [True, False, True, False])
    assert [SEGMENTS[s] for s in got] == ["new_ad_seen_id", "new_ad_unseen_id", "old_ad_seen_id", "old_ad_unseen_id"]


def test_platt_fit_matches_reference_and_fixes_an_overrated_segment():
    rng = np.random.default_rng(0)
    n = 20_000
    segment = rng.integers(0, 3, n)                     # segment 3 never occurs
    true_p = rng.uniform(0.01, 0.2, n)
    y = (rng.random(n) < true_p).astype(float)
    # segment 2 is overrated 2x, segment 0 is right, segment 1 is compressed toward its mean
    p = np.where(segment == 2, np.minimum(2 * true_p, 0.99), np.where(segment == 1, 0.5 * true_p + 0.05, true_p))
    cal = SegmentCalibration.fit(p, y, segment)
    for s in range(3):
        on = segment == s
        logit = np.log(p[on] / (1 - p[on]))
        ref = sm.Logit(y[on], sm.add_constant(logit)).fit(disp=0).params
        assert cal.b[s] == pytest.approx(ref[0], abs=1e-3) and cal.a[s] == pytest.approx(ref[1], abs=1e-3)
        # maximum likelihood with an intercept matches the mean exactly
        assert cal.mean_after[s] == pytest.approx(y[on].mean(), rel=1e-3)
        assert cal.impressions[s] == on.sum() and cal.clicks[s] == y[on].sum()
    assert cal.mean_before[2] > 1.6 * y[segment == 2].mean()
    assert (cal.a[3], cal.b[3], cal.impressions[3], cal.mean_before[3]) == (1.0, 0.0, 0, None)


def test_small_or_clickless_segments_keep_the_identity():
    p = np.full(3 * MIN_IMPRESSIONS, 0.1)
    segment = np.repeat([0, 1, 2], MIN_IMPRESSIONS)
    segment[-1] = 3                                     # segment 2 one short, segment 3 a single row
    y = np.zeros_like(p)
    y[:40] = 1                                          # clicks only in segment 0; segment 1 has none
    cal = SegmentCalibration.fit(p, y, segment)
    assert cal.a[1:] == [1.0, 1.0, 1.0] and cal.b[1:] == [0.0, 0.0, 0.0] and cal.a[0] != 1.0
    np.testing.assert_allclose(cal.apply(p, segment)[segment > 0], 0.1)
    assert np.isnan(cal.apply(np.array([np.nan]), np.array([0])))[0]
