"""Requests and candidate pools for the experiment: the organic logging policy's candidate sources
(topic, fresh-in-topic, popular, random; Related Pins from the query's topic; live ads, as many per
ad slot as the experiment's ``ads_candidates_per_slot``), plus, for arms
that ask for it, Related Pins neighbours from an HNSW index over published embeddings (the paper's
Table 5 experiment).

Popularity (saves and clicks so far) is read from the world's organic tables strictly before each day:
the experiment's users are a small slice of traffic, the rest of production keeps logging.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from pinclip.embeddings import PublishedEmbeddings
from pinclip.index import CandidateIndex, HNSWConfig
from pinlift.core.clock import FRESH_DAYS
from pinlift.core.schema import ADS_TABLE
from pinlift.core.vocabulary import CLICK, FEED, RELATED
from pinworld.logs import LoggingPolicy
from pinworld.world import World


@dataclass
class Requests:
    """The requests of one surface on one day: who asked, the query pin (Related Pins), the pool."""

    surface: str
    kind: str                 # the surface's kind (feed | related | ads)
    user_ids: np.ndarray      # (R,)
    request_ids: np.ndarray   # (R,)
    pool: np.ndarray          # (R, M) candidate pin ids, may repeat
    query: np.ndarray | None  # (R,) query pin ids for Related Pins
    k: int                    # slate size

    def __len__(self) -> int:
        return len(self.user_ids)


class CandidateSource(LoggingPolicy):
    """The logging policy's candidate sources, returning pools instead of ranked slates."""

    def __init__(self, world: World, ads_per_slot: int):
        super().__init__(world.truth)
        self.vocab = world.vocabulary
        self.ads_per_slot = ads_per_slot
        pb = world.table("pin_board").select("pin_id", "day")
        self._saves = (pb["pin_id"].to_numpy(), pb["day"].to_numpy())
        clicks = world.scan("impressions").filter(pl.col(CLICK)).select("pin_id", "day").collect()
        self._clicks = (clicks["pin_id"].to_numpy(), clicks["day"].to_numpy())
        n = len(self.truth.pins.topic)
        self.bid = np.zeros(n, np.float64)
        if world.has(ADS_TABLE):
            ads = world.table(ADS_TABLE)
            self.bid[ads["pin_id"].to_numpy()] = ads["bid"].to_numpy()
            self.ad_start = np.full(n, np.iinfo(np.int32).max, np.int64)
            self.ad_end = np.zeros(n, np.int64)
            self.ad_start[ads["pin_id"].to_numpy()] = ads["created_day"].to_numpy()
            self.ad_end[ads["pin_id"].to_numpy()] = ads["end_day"].to_numpy()
        else:
            self.ad_start = np.full(n, np.iinfo(np.int32).max, np.int64)
            self.ad_end = np.zeros(n, np.int64)
        self.day: int | None = None

    def set_day(self, day: int) -> None:
        """Popularity as of the start of ``day`` (events on earlier days only)."""
        n = len(self.truth.pins.topic)
        pins, days = self._saves
        self.saves_so_far = np.bincount(pins[days < day], minlength=n).astype(np.float32)
        pins, days = self._clicks
        self.clicks_so_far = np.bincount(pins[days < day], minlength=n).astype(np.float32)
        self.day = day

    def requests(self, day: int, active_users: np.ndarray, surfaces, rng_for) -> dict[str, Requests]:
        """Requests of ``active_users`` on ``day``; ``rng_for(surface)`` gives each surface its stream."""
        if self.day != day:
            self.set_day(day)
        cfg = self.truth.cfg
        ctx = self.day_context(day)
        out = {}
        for surface in surfaces:
            rng = rng_for(surface)
            kind = self.vocab.kind_of(surface)
            if kind == FEED:
                users = np.repeat(active_users, rng.poisson(cfg.requests_homefeed, len(active_users)))
                out[surface] = Requests(surface, kind, users, np.zeros(0), self.homefeed_pool(ctx, users, rng), None,
                                        cfg.slate_homefeed)
            elif kind == RELATED:
                users = np.repeat(active_users, rng.poisson(cfg.requests_related, len(active_users)))
                query, pool = self.related_pool(ctx, users, rng)
                out[surface] = Requests(surface, kind, users, np.zeros(0), pool, query, cfg.slate_related)
            else:
                users = np.repeat(active_users, rng.poisson(cfg.requests_ads, len(active_users)))
                ads = np.flatnonzero((self.ad_start <= day) & (day < self.ad_end) & (self.bid > 0))
                if len(ads) == 0:
                    users = users[:0]
                    ads = np.zeros(1, np.int64)
                k = min(cfg.slate_ads, len(ads))
                pool = ads[rng.integers(0, len(ads), (len(users), self.ads_per_slot * k))]
                out[surface] = Requests(surface, kind, users, np.zeros(0), pool, None, k)
        return out

    # ---- features the logging-policy ranker uses -------------------------------------------------

    def policy_scores(self, req: Requests, pool: np.ndarray, day: int, gumbel: np.ndarray) -> np.ndarray:
        """The logging policy's score of each candidate (higher is better); ``gumbel`` is its
        exploration noise, one draw per candidate. For Ads: log of a pCTR-like quality (no bid)."""
        p, u = self.truth.pins, self.truth.users
        safe = np.maximum(pool, 0)
        if req.kind == FEED:
            return (np.log(u.policy_taste[req.user_ids[:, None], p.topic[safe]])
                    + 0.3 * np.log1p(self.saves_so_far[safe]) + gumbel
                    + 0.3 * (day - p.created_day[safe] < FRESH_DAYS))
        if req.kind == RELATED:
            score = (1.5 * (p.topic[safe] == p.topic[req.query][:, None])
                     + 0.3 * np.log1p(self.saves_so_far[safe]) + gumbel)
            return np.where(safe == req.query[:, None], -np.inf, score)
        return (np.log(u.policy_taste[req.user_ids[:, None], p.topic[safe]])
                + 0.3 * np.log1p(self.clicks_so_far[safe]) + 0.5 * gumbel)


class AnnCandidateSource:
    """Related Pins neighbours of the query pin from an HNSW index over a published embedding,
    updated incrementally as new versions arrive (new pins added, nothing rebuilt)."""

    def __init__(self, k: int, hnsw: HNSWConfig, is_ad: np.ndarray):
        self.k, self.hnsw, self.is_ad = k, hnsw, is_ad
        self.index: CandidateIndex | None = None
        self.emb: PublishedEmbeddings | None = None

    def update(self, emb: PublishedEmbeddings) -> None:
        if self.emb is not None and emb.version == self.emb.version:
            return
        if self.index is None:
            self.index = CandidateIndex.build(emb, self.hnsw)
        else:
            new = emb.pin_ids[~np.isin(emb.pin_ids, self.index.pin_ids)]
            look = emb.lookup(new, "fusion", dequantize_values=True)
            if look.found.any():
                self.index.index.add(np.ascontiguousarray(look.values[look.found], np.float32))
                self.index.pin_ids = np.concatenate([self.index.pin_ids, new[look.found]])
        self.emb = emb

    def related(self, query: np.ndarray) -> np.ndarray:
        """(R, k) organic neighbours of each query pin (-1 padding; all -1 for a query pin that has
        no embedding yet)."""
        out = np.full((len(query), self.k), -1, np.int64)
        if self.index is None or len(query) == 0:
            return out
        look = self.emb.lookup(query, "fusion", dequantize_values=True)
        rows = np.flatnonzero(look.found)
        if len(rows) == 0:
            return out
        _, ids = self.index.search(look.values[rows], 2 * self.k + 1)
        keep = (ids >= 0) & (ids != query[rows][:, None]) & ~self.is_ad[np.maximum(ids, 0)]
        # compact the kept ids to the left of each row, order preserved
        order = np.argsort(~keep, axis=1, kind="stable")
        ids = np.take_along_axis(np.where(keep, ids, -1), order, 1)[:, : self.k]
        out[rows, : ids.shape[1]] = ids
        return out
