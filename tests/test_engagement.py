"""The ground-truth engagement model and the response API behave as specified."""

from __future__ import annotations

import copy

import numpy as np
import polars as pl
import pytest


@pytest.fixture(scope="module")
def truth(tiny_world):
    return tiny_world.truth


def _organic(truth, n=200):
    return np.flatnonzero(~truth.pins.is_ad)[:n]


def test_affinity_components_raise_engagement(truth):
    pins = _organic(truth)
    users = np.zeros_like(pins)
    base = truth.probabilities(users, pins, 0, 10, "homefeed")["repin"]
    for field, idx_of in (("style_pref", truth.pins.style), ("attr_pref", truth.pins.attr)):
        t2 = copy.copy(truth)
        t2.users = copy.copy(truth.users)
        arr = getattr(truth.users, field).copy()
        arr[0, idx_of[pins]] += 1.0
        setattr(t2.users, field, arr)
        up = t2.probabilities(users, pins, 0, 10, "homefeed")["repin"]
        assert (up > base).all(), field
    t3 = copy.copy(truth)
    t3.users = copy.copy(truth.users)
    for f in ("taste0", "taste1"):
        arr = getattr(truth.users, f).copy()
        arr[0] = 1.0 / truth.n_topics
        arr[0, truth.pins.topic[pins[0]]] += 0.5
        setattr(t3.users, f, arr / arr.sum(1, keepdims=True))
    p = t3.probabilities(users, pins, 0, 10, "homefeed")["repin"]
    same = truth.pins.topic[pins] == truth.pins.topic[pins[0]]
    assert p[same].mean() > 2 * p[~same].mean()


def test_position_bias_is_monotone(truth):
    pins = np.full(10, _organic(truth)[0])
    p = truth.probabilities(np.zeros(10, int), pins, np.arange(10), 10, "homefeed")
    for action in ("repin", "click", "hide"):
        assert (np.diff(p[action]) < 0).all()


def test_related_relevance_and_ads(truth):
    org = _organic(truth, 2000)
    q = org[0]
    same = org[truth.pins.topic[org] == truth.pins.topic[q]][1:]
    other = org[truth.pins.topic[org] != truth.pins.topic[q]][:200]
    users = np.zeros(1, int)
    p_same = truth.probabilities(users, same, 0, 10, "related", np.full(len(same), q))["click"]
    p_other = truth.probabilities(users, other, 0, 10, "related", np.full(len(other), q))["click"]
    assert p_same.mean() > p_other.mean()
    with pytest.raises(ValueError, match="query_pin_ids"):
        truth.probabilities(users, same, 0, 10, "related")
    with pytest.raises(ValueError, match="surface 'search': expected one of homefeed, related, ads"):
        truth.probabilities(users, same, 0, 10, "search")
    ads = np.flatnonzero(truth.pins.is_ad)[:100]
    hi = truth.probabilities(np.zeros(len(ads), int), ads, 0, 10, "ads")["click"]
    order = np.argsort(truth.pins.ad_quality[ads])
    assert hi[order[-20:]].mean() > hi[order[:20]].mean()


def test_responses_match_probabilities_and_are_seeded(truth):
    rng = np.random.default_rng(0)
    users = rng.integers(0, len(truth.users.activity), 4000)
    slates = rng.choice(_organic(truth, 2000), (4000, 10))
    slates[:, 8:] = -1
    r1 = truth.respond(users, slates, 12, "homefeed", seed=3)
    r2 = truth.respond(users, slates, 12, "homefeed", seed=3)
    assert all((getattr(r1, a) == getattr(r2, a)).all() for a in ("repin", "click", "hide"))
    assert r1.repin.shape == slates.shape and not r1.repin[:, 8:].any() and not r1.hide[:, 8:].any()
    p = truth.probabilities(users[:, None], slates[:, :8], np.arange(8), 12, "homefeed")
    # hides pre-empt repins: P(repin drawn) = P(repin) * (1 - P(hide))
    expected = (p["repin"] * (1 - p["hide"])).mean(0)
    observed = r1.repin[:, :8].mean(0)
    se = np.sqrt(expected * (1 - expected) / len(users))
    assert (np.abs(observed - expected) < 4 * se + 1e-3).all()


def test_injected_lift_scales_rates(truth):
    rng = np.random.default_rng(1)
    users = rng.integers(0, len(truth.users.activity), 20000)
    slates = rng.choice(_organic(truth, 2000), (20000, 10))
    base = truth.respond(users, slates, 12, "homefeed", seed=5).repin.mean()
    lifted = truth.respond(users, slates, 12, "homefeed", seed=5, lift={"repin": 0.2}).repin.mean()
    assert 1.15 < lifted / base < 1.25


def test_tastes_drift_over_time(truth):
    u = np.arange(len(truth.users.activity))
    t0 = truth.users.taste0
    top = t0.argmax(1)
    early = truth.taste(u, top, 0)
    late = truth.taste(u, top, truth.cfg.days)
    assert late.mean() < early.mean()
    np.testing.assert_allclose(early, t0[u, top], rtol=1e-6)


def test_logs_reflect_position_bias_and_affinity(tiny_world):
    imp = tiny_world.impressions(surfaces=["homefeed"])
    by_pos = imp.group_by("position").agg(pl.col("repin").mean().alias("r")).sort("position")["r"].to_numpy()
    assert by_pos[0] > 2 * by_pos[-1]
    truth = tiny_world.truth
    aff = truth.affinity(imp["user_id"].to_numpy(), imp["pin_id"].to_numpy(), imp["day"].to_numpy())
    rep = imp["repin"].to_numpy()
    q = np.quantile(aff, [0.2, 0.8])
    assert rep[aff > q[1]].mean() > 2 * rep[aff < q[0]].mean()
