"""Organic traffic: a logging policy serves Homefeed, Related Pins and Ads day by day; the ground truth
answers. Also the saves that happened before the log window (the back catalog's history).

The logging policy sees what a production system would: the topic labels of pins, popularity so far,
freshness, and a stale noisy estimate of each user's interests. It never sees style, attribute or
quality, and it explores (Gumbel noise on its scores), so the logs carry signal about all of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pinlift.core.clock import FRESH_DAYS
from pinlift.core.vocabulary import ACTIONS, SURFACE_KINDS
from pinworld.engagement import GroundTruth
from pinworld.latents import stream

POOL_FACTOR = 3  # candidates per slate slot before the policy ranks them


@dataclass
class Saves:
    """Repins as (user, pin, day) rows, plus whether the save came from a search."""

    user_id: list = field(default_factory=list)
    pin_id: list = field(default_factory=list)
    day: list = field(default_factory=list)
    from_search: list = field(default_factory=list)

    def add(self, users, pins, day, from_search):
        self.user_id.append(np.asarray(users, np.int64))
        self.pin_id.append(np.asarray(pins, np.int64))
        self.day.append(np.full(len(pins), day, np.int32) if np.isscalar(day) else np.asarray(day, np.int32))
        self.from_search.append(np.asarray(from_search, bool))

    def arrays(self):
        cat = lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt)  # noqa: E731
        return (cat(self.user_id, np.int64), cat(self.pin_id, np.int64), cat(self.day, np.int32),
                cat(self.from_search, bool))


def history_saves(truth: GroundTruth, saves: Saves) -> None:
    """Saves of back-catalog organic pins before day 0, by users whose tastes match the pin."""
    cfg, p, u = truth.cfg, truth.pins, truth.users
    rng = stream(cfg.seed, "history")
    back = np.flatnonzero((p.created_day < 0) & ~p.is_ad)
    n_saves = rng.poisson(cfg.history_saves_per_pin * np.exp(0.5 * p.quality[back]))
    pref = np.exp(u.style_pref[:, :, None] + u.attr_pref[:, None, :])  # (U, S, A)
    key = (p.topic[back].astype(np.int64) * pref.shape[1] + p.style[back]) * pref.shape[2] + p.attr[back]
    order = np.argsort(key, kind="stable")
    keys, starts = np.unique(key[order], return_index=True)
    bounds = np.append(starts, len(order))
    for k, lo, hi in zip(keys, bounds[:-1], bounds[1:]):
        t, rest = divmod(int(k), pref.shape[1] * pref.shape[2])
        s, a = divmod(rest, pref.shape[2])
        idx = order[lo:hi]
        pins = np.repeat(back[idx], n_saves[idx])
        if len(pins) == 0:
            continue
        cum = np.cumsum(u.taste0[:, t] * pref[:, s, a])
        users = np.minimum(np.searchsorted(cum, rng.random(len(pins)) * cum[-1]), len(cum) - 1)
        days = rng.integers(p.created_day[pins], 0)
        saves.add(users, pins, days, rng.random(len(pins)) < cfg.search_save_share)


class LoggingPolicy:
    """Candidate sources and a noisy ranker over the pins live on a day."""

    def __init__(self, truth: GroundTruth):
        self.truth = truth
        p = truth.pins
        self.organic = np.flatnonzero(~p.is_ad)
        self.by_topic = self.organic[np.lexsort((p.created_day[self.organic], p.topic[self.organic]))]
        t_sorted = p.topic[self.by_topic]
        self.topic_start = np.searchsorted(t_sorted, np.arange(truth.n_topics + 1))
        self.created_sorted = p.created_day[self.by_topic]
        self.taste_cum = np.cumsum(truth.users.policy_taste, axis=1)
        self.saves_so_far = np.zeros(len(p.topic), np.float32)
        self.clicks_so_far = np.zeros(len(p.topic), np.float32)

    def _topic_ranges(self, day: int):
        live_hi = np.empty(self.truth.n_topics, np.int64)
        fresh_lo = np.empty(self.truth.n_topics, np.int64)
        for t in range(self.truth.n_topics):
            lo, hi = self.topic_start[t], self.topic_start[t + 1]
            seg = self.created_sorted[lo:hi]
            live_hi[t] = lo + np.searchsorted(seg, day, side="right")
            fresh_lo[t] = lo + np.searchsorted(seg, day - FRESH_DAYS + 1, side="left")
        return self.topic_start[:-1], fresh_lo, live_hi

    def _sample_topics(self, users, rng):
        r = rng.random(len(users))[:, None] * self.taste_cum[users, -1:]
        return np.minimum((self.taste_cum[users] < r).sum(1), self.truth.n_topics - 1)

    def _from_topics(self, topics, lo, hi, rng, fallback):
        n = hi[topics] - lo[topics]
        idx = lo[topics] + (rng.random(len(topics)) * np.maximum(n, 1)).astype(np.int64)
        out = self.by_topic[np.minimum(idx, len(self.by_topic) - 1)]
        return np.where(n > 0, out, fallback)

    def _ranked(self, pool, score, k):
        score = score.copy()
        order = np.argsort(pool, axis=1, kind="stable")
        sp = np.take_along_axis(pool, order, 1)
        dup = np.zeros_like(pool, bool)
        dup[:, 1:] = sp[:, 1:] == sp[:, :-1]
        undo = np.empty_like(order)
        np.put_along_axis(undo, order, np.arange(pool.shape[1])[None, :].repeat(len(pool), 0), 1)
        score[np.take_along_axis(dup, undo, 1)] = -np.inf
        top = np.argsort(-score, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(pool, top, 1)

    def day_context(self, day: int) -> "DayContext":
        """What the candidate sources need for ``day``: live ranges per topic, live organic pins and
        the popularity distribution over them."""
        lo, fresh_lo, live_hi = self._topic_ranges(day)
        live_org = self.organic[self.truth.pins.created_day[self.organic] <= day]
        return DayContext(day, lo, fresh_lo, live_hi, live_org, np.cumsum(self.saves_so_far[live_org] + 1.0))

    def _random_live(self, ctx: "DayContext", n: int, rng) -> np.ndarray:
        return ctx.live_org[rng.integers(0, len(ctx.live_org), n)]

    def _popular(self, ctx: "DayContext", n: int, rng) -> np.ndarray:
        w = ctx.popularity
        return ctx.live_org[np.minimum(np.searchsorted(w, rng.random(n) * w[-1]), len(ctx.live_org) - 1)]

    def homefeed_pool(self, ctx: "DayContext", users: np.ndarray, rng) -> np.ndarray:
        """Candidates (R, k * POOL_FACTOR): topic (55%), fresh-in-topic (20%), popular (15%), random."""
        m = self.truth.cfg.slate_homefeed * POOL_FACTOR
        flat_u = np.repeat(users, m)
        topics = self._sample_topics(flat_u, rng)
        fallback = self._random_live(ctx, len(flat_u), rng)
        src = rng.random(len(flat_u))
        return np.where(src < 0.55, self._from_topics(topics, ctx.lo, ctx.live_hi, rng, fallback),
               np.where(src < 0.75, self._from_topics(topics, ctx.fresh_lo, ctx.live_hi, rng, fallback),
               np.where(src < 0.9, self._popular(ctx, len(flat_u), rng), fallback))).reshape(len(users), m)

    def related_pool(self, ctx: "DayContext", users: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
        """A query pin per request from the user's interests, and candidates (R, k * POOL_FACTOR):
        the query's topic (60%), popular (20%), random."""
        m = self.truth.cfg.slate_related * POOL_FACTOR
        query = self._from_topics(self._sample_topics(users, rng), ctx.lo, ctx.live_hi, rng,
                                  self._random_live(ctx, len(users), rng))
        flat_q = np.repeat(query, m)
        fallback = self._random_live(ctx, len(flat_q), rng)
        src = rng.random(len(flat_q))
        pool = np.where(src < 0.6, self._from_topics(self.truth.pins.topic[flat_q], ctx.lo, ctx.live_hi, rng, fallback),
               np.where(src < 0.8, self._popular(ctx, len(flat_q), rng), fallback)).reshape(len(users), m)
        return query, pool

    def serve_day(self, day: int, rng: np.random.Generator) -> dict[str, tuple]:
        """Requests for every surface on ``day``: {surface: (user_ids, slates, query_pin_ids)}."""
        cfg, p, u = self.truth.cfg, self.truth.pins, self.truth.users
        ctx = self.day_context(day)
        active = np.flatnonzero((u.signup_day <= day) & (rng.random(len(u.activity)) < u.activity))
        out = {}
        feed, related, ads_surface = (self.truth.vocab.of_kind(kind)[0].name for kind in SURFACE_KINDS)

        def pin_score(pool):
            return 0.3 * np.log1p(self.saves_so_far[pool]) + rng.gumbel(size=pool.shape)

        users = np.repeat(active, rng.poisson(cfg.requests_homefeed, len(active)))
        if len(users):
            pool = self.homefeed_pool(ctx, users, rng)
            score = (np.log(u.policy_taste[users[:, None], p.topic[pool]]) + pin_score(pool)
                     + 0.3 * (day - p.created_day[pool] < FRESH_DAYS))
            out[feed] = (users, self._ranked(pool, score, cfg.slate_homefeed), None)

        users = np.repeat(active, rng.poisson(cfg.requests_related, len(active)))
        if len(users):
            query, pool = self.related_pool(ctx, users, rng)
            score = 1.5 * (p.topic[pool] == p.topic[query][:, None]) + pin_score(pool)
            score[pool == query[:, None]] = -np.inf
            out[related] = (users, self._ranked(pool, score, cfg.slate_related), query)

        # Ads: active ads scored by estimated interest x bid
        users = np.repeat(active, rng.poisson(cfg.requests_ads, len(active)))
        ads = np.flatnonzero(p.is_ad & (p.created_day <= day) & (day < p.ad_end_day))
        if len(users) and len(ads):
            k = min(cfg.slate_ads, len(ads))
            pool = ads[rng.integers(0, len(ads), (len(users), 4 * k))]
            score = (np.log(u.policy_taste[users[:, None], p.topic[pool]]) + np.log(p.bid[pool])
                     + 0.3 * np.log1p(self.clicks_so_far[pool]) + 0.5 * rng.gumbel(size=pool.shape))
            out[ads_surface] = (users, self._ranked(pool, score, k), None)
        return out


@dataclass
class DayContext:
    day: int
    lo: np.ndarray
    fresh_lo: np.ndarray
    live_hi: np.ndarray
    live_org: np.ndarray
    popularity: np.ndarray   # cumulative (saves so far + 1) over live_org


def simulate_organic_logs(truth: GroundTruth, log_dir: Path, saves: Saves, progress=None) -> dict[str, int]:
    """Serve and answer every day of the window; write impressions partitioned by day and surface."""
    cfg = truth.cfg
    policy = LoggingPolicy(truth)
    _, hist_pins, _, _ = saves.arrays()
    np.add.at(policy.saves_so_far, hist_pins, 1)  # popularity carries over from before the window
    next_request = 0
    counts = {s: 0 for s in truth.vocab.names}
    for day in range(cfg.days):
        rng = stream(cfg.seed, "logs", day)
        served = policy.serve_day(day, rng)
        for surface, (users, slates, query) in served.items():
            resp = truth.respond(users, slates, day, surface, query, rng=rng)
            r, k = slates.shape
            req = np.arange(next_request, next_request + r, dtype=np.int64)
            next_request += r
            table = pa.table({
                "request_id": np.repeat(req, k),
                "day": np.full(r * k, day, np.int32),
                "surface": pa.array([surface] * (r * k), pa.string()),
                "user_id": np.repeat(users.astype(np.int64), k),
                "query_pin_id": pa.array(np.repeat(query, k) if query is not None else np.zeros(r * k, np.int64),
                                         pa.int64(), mask=None if query is not None else np.ones(r * k, bool)),
                "pin_id": slates.reshape(-1).astype(np.int64),
                "position": np.tile(np.arange(k, dtype=np.int16), r),
                **{a: getattr(resp, a).reshape(-1) for a in ACTIONS},
            })
            part = log_dir / "impressions" / f"day={day}" / f"surface={surface}"
            part.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, part / "part-0.parquet")
            counts[surface] += r * k
            hit = resp.repin.reshape(-1)
            rp = slates.reshape(-1)[hit]
            policy.saves_so_far[rp] += 1
            policy.clicks_so_far[slates.reshape(-1)[resp.click.reshape(-1)]] += 1
            saves.add(np.repeat(users, k)[hit], rp, day, rng.random(len(rp)) < cfg.search_save_share)
        if progress is not None:
            progress(day)
    return counts
