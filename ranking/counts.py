"""Impression counts as of a day without the impression log in memory, for examples written a day range at a time.

``FeatureSource`` counts a pin's impressions, repins and clicks and a user's impressions before an example's day
from ``History`` objects over the whole log. Here the counts before day d of a range [lo, hi) are the totals over
the days before ``lo`` (one row per pin and per user, however many impressions) plus the count over days
[lo, d) of the range's own impressions. Ranges are read in day order and each one's impressions are added to the
totals after it, so the log is read once and only a range of it is ever in memory. The counts are integers,
so they equal the in-memory ones bit for bit.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from pinlift.core.vocabulary import CLICK, REPIN
from pinworld.world import World
from ranking.features import FeatureSource
from ranking.history import History

PIN_COUNTS = ("impressions", REPIN, CLICK)


class Totals:
    """Integer sums per entity: sorted ids and their sums (n, width), one row per entity however many events."""

    def __init__(self, ids: np.ndarray, sums: np.ndarray):
        self.ids, self.sums = ids, sums

    @classmethod
    def empty(cls, width: int) -> "Totals":
        return cls(np.zeros(0, np.int64), np.zeros((0, width), np.int64))

    def plus(self, ids: np.ndarray, sums: np.ndarray) -> "Totals":
        """These totals with the sums (n, width) of distinct ``ids`` added (a new object: lookups made from this
        one keep their values)."""
        merged, inverse = np.unique(np.concatenate([self.ids, ids]), return_inverse=True)
        out = np.zeros((len(merged), self.sums.shape[1]), np.int64)
        n = len(self.ids)
        out[inverse[:n]] = self.sums
        out[inverse[n:]] += sums   # each part's ids are distinct: no row is added to twice
        return Totals(merged, out)

    def of(self, ids) -> np.ndarray:
        """The sums (n, width) of ``ids``; zero for an id never added."""
        ids = np.asarray(ids, np.int64)
        if len(self.ids) == 0:
            return np.zeros((len(ids), self.sums.shape[1]), np.int64)
        pos = np.minimum(np.searchsorted(self.ids, ids), len(self.ids) - 1)
        return np.where((self.ids[pos] == ids)[:, None], self.sums[pos], 0)


class CountBefore:
    """``History.count_before`` of events over the days before a range (a column of ``totals``) and in it
    (``history``)."""

    def __init__(self, totals: Totals, column: int, history: History):
        self.totals, self.column, self.history = totals, column, history

    def count_before(self, entity, day) -> np.ndarray:
        """The entity's events on days < ``day``, for days in the range."""
        return self.totals.of(entity)[:, self.column] + self.history.count_before(entity, day)


class ImpressionCounts:
    """The impression counts of a ``FeatureSource`` built with ``impressions=False``, set for one day range at a
    time, ranges in increasing day order."""

    def __init__(self, world: World):
        self.world = world
        self.pins, self.users = Totals.empty(len(PIN_COUNTS)), Totals.empty(1)
        self.end: int | None = None   # the totals cover the days before it (None: nothing counted yet)

    def _plus(self, impressions: pl.LazyFrame) -> tuple[Totals, Totals]:
        """The pin and user totals with ``impressions`` added, grouped by pin and by user in the query."""
        pins = impressions.group_by("pin_id").agg(pl.len().alias("impressions"), pl.col(REPIN).sum(),
                                                  pl.col(CLICK).sum()).collect(engine="streaming")
        users = impressions.group_by("user_id").agg(pl.len().alias("impressions")).collect(engine="streaming")
        return (self.pins.plus(pins["pin_id"].to_numpy(), pins.select(PIN_COUNTS).to_numpy().astype(np.int64)),
                self.users.plus(users["user_id"].to_numpy(), users.select("impressions").to_numpy().astype(np.int64)))

    def day_range(self, source: FeatureSource, lo: int, hi: int) -> pl.DataFrame:
        """The impressions of days [lo, hi) on every surface, with ``source``'s impression counts set for them."""
        if self.end is not None and lo < self.end:
            raise ValueError(f"ranking: impression counts: days [{lo}, {hi}) start before day {self.end}, "
                             "already counted")
        log = self.world.scan("impressions")
        if self.end is None or self.end < lo:
            # days before the range not read as a range (all of them, the first time): grouped in a query
            skipped = pl.col("day") < lo if self.end is None else pl.col("day").is_between(self.end, lo, closed="left")
            self.pins, self.users = self._plus(log.filter(skipped))
        imp = log.filter(pl.col("day").is_between(lo, hi, closed="left")).collect()
        d, u, p = imp["day"].to_numpy(), imp["user_id"].to_numpy(), imp["pin_id"].to_numpy()
        source.pin_impressions = CountBefore(self.pins, 0, History(p, d))
        source.pin_repins = CountBefore(self.pins, 1, History(p, d, weight=imp[REPIN].to_numpy()))
        source.pin_clicks = CountBefore(self.pins, 2, History(p, d, weight=imp[CLICK].to_numpy()))
        source.user_impressions = CountBefore(self.users, 0, History(u, d))
        # the source's counts keep the totals before the range; the next range's include this one
        self.pins, self.users = self._plus(imp.lazy())
        self.end = hi
        return imp
