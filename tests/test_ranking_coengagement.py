"""Co-engagement vectors: point in time, collaborative structure, missing ids, and their dense columns."""

from __future__ import annotations

import numpy as np
import pytest

from ranking.coengagement import CoEngagement
from pinlift.core.vocabulary import PINWORLD
from ranking.features import base_dense

COLUMNS = ("coeng_user_cosine", "coeng_query_cosine", "coeng_pin_known", "coeng_query_known")


def _two_communities(day_of_last: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Users 0-9 save pins 100-119 and users 10-19 save pins 200-219, each a random half of their group's
    pins, on days -5..-1; one more save (user 0, pin 200) on ``day_of_last``."""
    rng = np.random.default_rng(0)
    users, pins, days = [], [], []
    for group, base in ((range(10), 100), (range(10, 20), 200)):
        for u in group:
            for p in rng.choice(20, 10, replace=False):
                users.append(u), pins.append(base + p), days.append(int(rng.integers(-5, 0)))
    users.append(0), pins.append(200), days.append(day_of_last)
    return np.array(users), np.array(pins), np.array(days)


def test_pins_saved_by_the_same_people_point_the_same_way():
    ce = CoEngagement(*_two_communities(), dim=4, every=7)
    f = ce.features(user_id=[0, 0, 15], pin_id=[101, 101, 201], query_pin_id=[102, 202, 203], day=[0, 0, 0])
    same, across = f[0, 1], f[1, 1]
    assert same > 0.8 and abs(across) < 0.2
    assert f[0, 0] > 0.8 and f[2, 0] > 0.8          # user and pin of one community
    assert (f[:, 2] == 1).all() and (f[:, 3] == 1).all()


def test_snapshot_sees_only_saves_before_its_day():
    users, pins, days = _two_communities(day_of_last=3)
    ce = CoEngagement(users, pins, days, dim=4, every=7)
    assert ce.snapshot_day(np.array([-8, -1, 0, 6, 7, 13])).tolist() == [-14, -7, 0, 0, 7, 7]
    # the day-3 save lands in the day-7 snapshot only: removing it changes nothing before day 7
    keep = days < 3
    without = CoEngagement(users[keep], pins[keep], days[keep], dim=4, every=7)
    np.testing.assert_allclose(ce.snapshot(0).pins[ce.pins.rows(without.pins.ids)],
                               without.snapshot(0).pins[1:], atol=1e-6)
    user0 = ce.users.rows([0])[0]
    assert not np.allclose(ce.snapshot(7).users[user0], without.snapshot(7).users[user0], atol=1e-3)
    # before any save there is nothing: every feature is zero
    np.testing.assert_array_equal(ce.features([0], [101], [102], [-7]), np.zeros((1, 4)))
    # only the last two snapshots stay in memory, and an evicted one comes back the same
    first = ce.features([0, 0, 0], [101, 101, 101], [102, 102, 102], [0, 7, 14])
    assert len(ce._snapshots) == CoEngagement.KEEP
    np.testing.assert_array_equal(ce.features([0, 0, 0], [101, 101, 101], [102, 102, 102], [0, 7, 14]), first)


def test_unknown_ids_and_missing_query_give_zero_and_flags():
    ce = CoEngagement(*_two_communities(), dim=4, every=7)
    f = ce.features(user_id=[999, 0, 0], pin_id=[101, 555, 101], query_pin_id=[102, 102, -1], day=[0, 0, 0])
    assert f[0, 0] == 0 and f[0, 1] > 0.8 and f[0, 2] == 1
    assert f[1].tolist() == [0, 0, 0, 1]
    assert f[2, 1] == 0 and f[2, 3] == 0 and f[2, 2] == 1
    with pytest.raises(ValueError, match="snapshot interval"):
        CoEngagement([0], [1], [0], every=0)


def test_examples_carry_the_point_in_time_coengagement(tiny_world):
    from ranking.features import FeatureSource

    source = FeatureSource(tiny_world, coengagement_dim=8, coengagement_every=5)
    imp = tiny_world.impressions(since=25, as_of=27)
    ex = source.examples(imp)
    cols = [base_dense(PINWORLD).index(c) for c in COLUMNS]
    expected = source.coengagement.features(ex.user_id, ex.pin_id, ex.query_pin_id, ex.day)
    np.testing.assert_array_equal(ex.dense[:, cols], expected)
    # a pin's vector exists exactly when it was saved before the snapshot day (day 25 for days 25-26)
    edges = tiny_world.table("pin_board")
    saved = set(edges.filter(edges["day"] < 25)["pin_id"].to_list())
    known = ex.dense[:, base_dense(PINWORLD).index("coeng_pin_known")] == 1
    assert known.tolist() == [p in saved for p in ex.pin_id]
    assert 0 < known.mean() < 1
    related = ex.surface == 1
    assert (ex.dense[~related, base_dense(PINWORLD).index("coeng_query_cosine")] == 0).all()
