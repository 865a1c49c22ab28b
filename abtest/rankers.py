"""What an arm serves: a ranker scores each request's candidates; organic surfaces show the top K,
Ads run a second-price auction on pCTR × bid.

Rankers
  * ``RunRanker``: a frozen ranking run (ranking.score.Scorer): P(repin) on Homefeed and Related Pins,
    P(click) (pCTR) on Ads. An arm with embeddings swaps in each day's published version.
  * ``LoggingPolicyRanker``: the organic logging policy's own scores (topic interest, popularity,
    freshness, Gumbel exploration): a legitimate baseline arm that needs no training.

Both score each request independently of the others in the batch, so a user's slate does not depend
on who else is in the experiment (and the same rows get the same noise in every arm).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Protocol

import numpy as np

from abtest.candidates import CandidateSource, Requests
from pinclip.embeddings import PublishedEmbeddings
from pinlift.core.vocabulary import ADS

if TYPE_CHECKING:   # torch and TorchRec load only when a ranking run is used
    from ranking.score import Scorer

SCORE_CHUNK = 4096   # requests per Scorer call, bounding memory on large worlds


class Ranker(Protocol):
    def set_embeddings(self, emb: PublishedEmbeddings) -> None:
        """Serve with this published version from now on."""

    def scores(self, req: Requests, rows: np.ndarray, pool: np.ndarray, day: int, rng_key) -> np.ndarray:
        """Scores (len(rows), M) of ``pool`` (the pools of requests ``rows``; -1 padding scores -inf).
        On Ads a positive pCTR estimate; elsewhere any 'higher is better' score."""


class RunRanker:
    def __init__(self, scorer: Scorer):
        self.scorer = scorer
        self.uses_content = bool(scorer.cfg.get("embeddings"))

    def set_embeddings(self, emb: PublishedEmbeddings) -> None:
        if self.uses_content:
            self.scorer.set_embeddings(emb)   # refuses vectors other than the run's

    def scores(self, req: Requests, rows: np.ndarray, pool: np.ndarray, day: int, rng_key) -> np.ndarray:
        out = np.full(pool.shape, -np.inf)
        for lo in range(0, len(rows), SCORE_CHUNK):
            r = rows[lo:lo + SCORE_CHUNK]
            chunk = pool[lo:lo + SCORE_CHUNK]
            query = None if req.query is None else req.query[r]
            s = self.scorer.score(req.user_ids[r], req.surface, chunk, day, query_pin_ids=query)
            out[lo:lo + SCORE_CHUNK] = np.where(np.isfinite(s), s, -np.inf)
        if req.query is not None:
            out[pool == req.query[rows][:, None]] = -np.inf
        return out


class LoggingPolicyRanker:
    def __init__(self, source: CandidateSource):
        self.source = source

    def set_embeddings(self, emb: PublishedEmbeddings) -> None:
        pass

    def scores(self, req: Requests, rows: np.ndarray, pool: np.ndarray, day: int, rng_key) -> np.ndarray:
        # Noise is drawn for every request of the day and then indexed by row, so a row's noise does
        # not depend on which rows this arm serves. Extra (ANN) columns get their own stream.
        base_m = req.pool.shape[1]
        noise = np.random.default_rng([*rng_key, 0]).gumbel(size=req.pool.shape)[rows]
        if pool.shape[1] > base_m:
            extra = np.random.default_rng([*rng_key, 1]).gumbel(size=(len(req), pool.shape[1] - base_m))[rows]
            noise = np.concatenate([noise, extra], 1)
        sub = replace(req, user_ids=req.user_ids[rows], request_ids=req.request_ids[rows], pool=pool,
                      query=None if req.query is None else req.query[rows])
        s = self.source.policy_scores(sub, pool, day, noise)
        if req.kind == ADS:
            s = np.exp(s)   # a positive pCTR-like quality for the auction
        return np.where(pool >= 0, s, -np.inf)


def _dedup_scores(pool: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Scores with every repeat of a pin in a row (all but its best-scored copy) and padding at -inf."""
    score = np.where((pool >= 0) & ~np.isnan(score), score, -np.inf).astype(np.float64)
    order = np.lexsort((-score, pool), axis=-1)
    sp = np.take_along_axis(pool, order, 1)
    dup_sorted = np.zeros(pool.shape, bool)
    dup_sorted[:, 1:] = sp[:, 1:] == sp[:, :-1]
    dup = np.zeros(pool.shape, bool)
    np.put_along_axis(dup, order, dup_sorted, 1)
    return np.where(dup, -np.inf, score)


def rank_slates(pool: np.ndarray, score: np.ndarray, k: int) -> np.ndarray:
    """Top-``k`` distinct pins of each row by score (-1 where fewer than k are eligible)."""
    score = _dedup_scores(pool, score)
    top = np.argsort(-score, axis=1, kind="stable")[:, :k]
    slate = np.take_along_axis(pool, top, 1)
    return np.where(np.isfinite(np.take_along_axis(score, top, 1)), slate, -1)


def auction(pool: np.ndarray, pctr: np.ndarray, bid: np.ndarray, k: int,
            reserve: float) -> tuple[np.ndarray, np.ndarray]:
    """Generalised second-price auction per request: rank ads by eCPM = pCTR × bid; the ad in slot j
    pays per click the least bid that keeps its slot, eCPM_{j+1} / pCTR_j, at least ``reserve`` and at
    most its bid. Ads bidding below the reserve are not eligible. Returns (slates, cost per click),
    both (R, k), with -1 / NaN where a slot stays empty."""
    pctr = np.where((pool >= 0) & (bid >= reserve), pctr, -np.inf)
    ecpm = _dedup_scores(pool, np.where(np.isfinite(pctr), pctr * bid, -np.inf))
    order = np.argsort(-ecpm, axis=1, kind="stable")[:, : k + 1]
    ranked_ecpm = np.take_along_axis(ecpm, order, 1)
    if ranked_ecpm.shape[1] < k + 1:
        pad = np.full((len(pool), k + 1 - ranked_ecpm.shape[1]), -np.inf)
        ranked_ecpm = np.concatenate([ranked_ecpm, pad], 1)
    slot = order[:, :k]
    slates = np.take_along_axis(pool, slot, 1)
    slot_pctr = np.take_along_axis(pctr, slot, 1)
    slot_bid = np.take_along_axis(bid, slot, 1)
    filled = np.isfinite(ranked_ecpm[:, :k])
    with np.errstate(divide="ignore", invalid="ignore"):
        runner_up = np.where(np.isfinite(ranked_ecpm[:, 1:k + 1]), ranked_ecpm[:, 1:k + 1], 0.0)
        price = np.clip(runner_up / slot_pctr, reserve, slot_bid)
    return np.where(filled, slates, -1), np.where(filled, price, np.nan)
