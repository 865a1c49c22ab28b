"""The ground-truth engagement model and the response API.

P(action | user, pin, surface, position, day) = examination(position) * sigmoid(base_action + s * logit),
where the logit sums the user's drifting topic taste, the user's preference for the pin's visual style
(pixel-only) and described attribute (text-only), the pin's hidden quality, the topic's trend on that
day, a novelty bump, and on Related Pins the relevance to the query pin; ads add a hidden ad quality.
Everything is vectorized over arrays of impressions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pinlift.core.vocabulary import ADS, CLICK, HIDE, PINWORLD, RELATED, REPIN, Vocabulary
from pinworld.config import EngagementConfig, WorldConfig
from pinworld.latents import PinLatents, UserLatents



@dataclass
class Responses:
    """Actions drawn for a batch of slates; arrays shaped like the slates (False on padding)."""

    repin: np.ndarray
    click: np.ndarray
    hide: np.ndarray


class GroundTruth:
    """The hidden state of a world and the engagement probabilities it implies."""

    def __init__(self, cfg: WorldConfig, pins: PinLatents, users: UserLatents, trend: np.ndarray):
        self.vocab: Vocabulary = PINWORLD.renamed(cfg.surface_names)   # the surfaces this world declares
        self.cfg = cfg
        self.e: EngagementConfig = cfg.engagement
        self.pins = pins
        self.users = users
        self.trend = trend
        self.n_topics = users.taste0.shape[1]

    def drift(self, day) -> np.ndarray:
        """Share of each user's taste that has moved from taste0 to taste1 by ``day``."""
        d = np.maximum(np.asarray(day, np.float32), 0.0)
        return self.cfg.taste_drift * (1.0 - np.exp(-d / max(self.cfg.days, 1)))

    def taste(self, user_ids, topics, day) -> np.ndarray:
        """The users' share of ``topics`` at ``day`` (broadcasting arrays)."""
        lam = self.drift(day)
        u = self.users
        return (1.0 - lam) * u.taste0[user_ids, topics] + lam * u.taste1[user_ids, topics]

    def affinity(self, user_ids, pin_ids, day) -> np.ndarray:
        """The content + popularity part of the logit, shared by all surfaces."""
        e, p, u = self.e, self.pins, self.users
        t = p.topic[pin_ids]
        share = self.taste(user_ids, t, day)
        d = np.clip(np.asarray(day), 0, self.trend.shape[1] - 1)
        age = np.maximum(np.asarray(day) - p.created_day[pin_ids], 0)
        return (
            e.w_topic * np.log(np.maximum(share * self.n_topics, 1e-2))
            + e.w_style * u.style_pref[user_ids, p.style[pin_ids]]
            + e.w_attr * u.attr_pref[user_ids, p.attr[pin_ids]]
            + e.w_quality * p.quality[pin_ids]
            + e.w_trend * self.trend[t, d]
            + e.w_novelty * np.exp(-age / e.tau_novelty)
        ).astype(np.float32)

    def relevance(self, query_pin_ids, pin_ids) -> np.ndarray:
        """Related Pins relevance of candidates to their query pin, centred so unrelated pins score -1."""
        p = self.pins
        same_topic = p.topic[query_pin_ids] == p.topic[pin_ids]
        qo, co = p.objects[query_pin_ids], p.objects[pin_ids]
        shared = ((qo[..., :, None] == co[..., None, :]) & (qo[..., :, None] >= 0)).any(axis=(-1, -2))
        return (same_topic * 1.0 + shared * 0.5 + (p.style[query_pin_ids] == p.style[pin_ids]) * 0.3
                + (p.attr[query_pin_ids] == p.attr[pin_ids]) * 0.3 - 1.0).astype(np.float32)

    def examination(self, positions) -> np.ndarray:
        return (1.0 / (1.0 + np.asarray(positions, np.float32)) ** self.e.position_decay).astype(np.float32)

    def probabilities(self, user_ids, pin_ids, positions, day, surface: str, query_pin_ids=None) -> dict[str, np.ndarray]:
        """P(repin), P(click), P(hide) for each impression (arrays broadcast together)."""
        kind = self.vocab.kind_of(surface)
        e = self.e
        logit = self.affinity(user_ids, pin_ids, day)
        if kind == RELATED:
            if query_pin_ids is None:
                raise ValueError(f"surface {surface!r} ({kind}) needs query_pin_ids")
            logit = logit + e.w_related * self.relevance(query_pin_ids, pin_ids)
        exam = self.examination(positions)
        if kind == ADS:
            click_logit = e.base_ad_click + 0.8 * logit + e.w_ad_quality * self.pins.ad_quality[pin_ids]
            repin_logit = e.base_repin - 1.0 + logit
        else:
            click_logit = e.base_click + 0.7 * logit
            repin_logit = e.base_repin + logit
        return {
            REPIN: exam * _sigmoid(repin_logit),
            CLICK: exam * _sigmoid(click_logit),
            HIDE: exam * _sigmoid(e.base_hide - 0.8 * logit),
        }

    def respond(self, user_ids, slates, day, surface: str, query_pin_ids=None, *, seed=None,
                rng: np.random.Generator | None = None, lift: dict[str, float] | None = None) -> Responses:
        """Draw actions for ranked slates.

        ``user_ids`` (R,), ``slates`` (R, K) pin ids with -1 padding (position = column), ``query_pin_ids``
        (R,) for Related Pins. ``lift`` multiplies action probabilities by (1 + delta), for validating
        an experiment analysis with a known injected effect.
        """
        slates = np.asarray(slates)
        if slates.ndim != 2:
            raise ValueError(f"slates must be 2-D (requests, positions), got shape {slates.shape}")
        rng = rng if rng is not None else np.random.default_rng(seed)
        valid = slates >= 0
        pins = np.where(valid, slates, 0)
        users = np.asarray(user_ids)[:, None]
        q = None if query_pin_ids is None else np.asarray(query_pin_ids)[:, None]
        positions = np.broadcast_to(np.arange(slates.shape[1]), slates.shape)
        probs = self.probabilities(users, pins, positions, day, surface, q)
        if lift:
            for k, delta in lift.items():
                probs[k] = np.clip(probs[k] * (1.0 + delta), 0.0, 1.0)
        hide = (rng.random(slates.shape, dtype=np.float32) < probs[HIDE]) & valid
        repin = (rng.random(slates.shape, dtype=np.float32) < probs[REPIN]) & valid & ~hide
        click = (rng.random(slates.shape, dtype=np.float32) < probs[CLICK]) & valid & ~hide
        return Responses(repin=repin, click=click, hide=hide)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))
