"""Sample the hidden state of a world: pins' latent semantics, users' tastes, ads, topic trends.

Every component draws from its own seeded stream, so changing one knob leaves the others' draws alone.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from pinworld.config import WorldConfig
from pinworld.render import ARRANGEMENTS, COLOUR_NAMES, ROTATIONS, SCALES, STYLES
from pinworld.taxonomy import Taxonomy
from pinworld.text import ATTRIBUTES, TEXT_CLEAN, TEXT_IRRELEVANT, TEXT_MISSING, TEXT_NOISY, TEXT_TITLE_MISSING

MAX_OBJECTS = 3
SAME_TOPIC_OBJECT = 0.8  # a pin's second and third objects come from its own topic with this probability
TREND_HORIZON = 240  # topic trends are defined for days [0, days + TREND_HORIZON)

STREAMS = {"topics": 1, "pins": 2, "users": 4, "trend": 5, "text": 6, "logs": 7, "history": 8}


def stream(seed: int, name: str, *extra: int) -> np.random.Generator:
    """The random stream of one component of the world."""
    return np.random.default_rng(np.random.SeedSequence([seed, STREAMS[name], *extra]))


@dataclass
class PinLatents:
    topic: np.ndarray          # int16 (N,)
    objects: np.ndarray        # int16 (N, 3), -1 padded
    style: np.ndarray          # int8, pixel-only factor
    attr: np.ndarray           # int8, text-only factor
    quality: np.ndarray        # float32: visible_quality_share of its variance is visual_quality, the rest hidden
    created_day: np.ndarray    # int32
    is_ad: np.ndarray          # bool
    advertiser_id: np.ndarray  # int32, -1 for organic pins
    bid: np.ndarray            # float32 (cents per click), 0 for organic pins
    ad_end_day: np.ndarray     # int32, exclusive; 0 for organic pins
    ad_quality: np.ndarray     # float32
    language: np.ndarray       # int8 index into cfg.languages
    text_quality: np.ndarray   # int8 (TEXT_* bucket)
    colour: np.ndarray         # nuisance: background colour
    arrangement: np.ndarray
    scale: np.ndarray
    rotations: np.ndarray      # (N, 3)
    jitter: np.ndarray         # (N, 3, 2)
    visual_quality: np.ndarray  # float32: the part of quality the image shows (its sharpness and exposure)

    def __len__(self) -> int:
        return len(self.topic)

    def scene(self, sl: slice) -> dict[str, np.ndarray]:
        return {k: getattr(self, k)[sl] for k in ("objects", "style", "colour", "arrangement", "scale", "rotations", "jitter",
                                           "visual_quality")}


def visible_quality_z(visual_quality: np.ndarray, share: float) -> np.ndarray:
    """The visible quality in standard units (``PinLatents.visual_quality`` is it scaled by sqrt(share));
    zero in a world whose images show no quality."""
    if share == 0:
        return np.zeros_like(visual_quality)
    return visual_quality / np.sqrt(share)


@dataclass
class UserLatents:
    taste0: np.ndarray       # float32 (U, T): topic mixture at day 0
    taste1: np.ndarray       # float32 (U, T): the mixture the taste drifts toward
    style_pref: np.ndarray   # float32 (U, S)
    attr_pref: np.ndarray    # float32 (U, A)
    activity: np.ndarray     # float32 (U,): daily probability of being active
    signup_day: np.ndarray   # int32
    language: np.ndarray     # int8
    policy_taste: np.ndarray # float32 (U, T): the logging policy's stale, noisy estimate of taste0


def topic_popularity(cfg: WorldConfig, n_topics: int) -> np.ndarray:
    rng = stream(cfg.seed, "topics")
    w = 1.0 / (np.arange(n_topics) + 4.0) ** 0.9
    return (w[rng.permutation(n_topics)] / w.sum()).astype(np.float64)


def topic_posterior(cfg: WorldConfig, tx: Taxonomy, objects: np.ndarray) -> np.ndarray:
    """P(topic | the pin's objects), float64 (n, n_topics): what an exact reader of a pin's objects could
    know of its topic, inverting :func:`sample_pins`. The objects are taken as an unordered set (-1 padded,
    as ``PinLatents.objects``): each order is summed, the first object from the topic, each later one from
    the topic or, with probability 1 - ``SAME_TOPIC_OBJECT``, from a random topic of its category."""
    obj_topic = np.asarray(tx.object_topic())
    size = np.array([len(t.object_ids) for t in tx.topics], np.float64)
    category = np.array([t.category for t in tx.topics])
    first = np.zeros((tx.n_objects, tx.n_topics))
    first[np.arange(tx.n_objects), obj_topic] = 1 / size[obj_topic]
    same_category = category[:, None] == category[None, :]
    # a later object o from topic t: its own topic's draw, or t's category drew o's topic
    later = SAME_TOPIC_OBJECT * first + ((1 - SAME_TOPIC_OBJECT) / same_category.sum(1)[None, :]
                                         * same_category[obj_topic] / size[obj_topic][:, None])
    objects = np.asarray(objects)
    like = np.zeros((len(objects), tx.n_topics))
    for k in range(1, objects.shape[1] + 1):
        rows = np.flatnonzero((objects >= 0).sum(1) == k)
        for order in itertools.permutations(range(k)):
            term = first[objects[rows, order[0]]]
            for j in order[1:]:
                term = term * later[objects[rows, j]]
            like[rows] += term
    post = like * topic_popularity(cfg, tx.n_topics)[None, :]
    return post / post.sum(1, keepdims=True)


def sample_topic_trend(cfg: WorldConfig, n_topics: int) -> np.ndarray:
    """Topic popularity trend per day, a mean-reverting random walk: (T, days + horizon)."""
    rng = stream(cfg.seed, "trend")
    n_days = cfg.days + TREND_HORIZON
    trend = np.zeros((n_topics, n_days), np.float32)
    x = rng.normal(0, 0.5, n_topics)
    for d in range(n_days):
        x = 0.93 * x + rng.normal(0, 0.18, n_topics)
        trend[:, d] = x
    return trend


def sample_pins(cfg: WorldConfig, tx: Taxonomy) -> PinLatents:
    rng = stream(cfg.seed, "pins")
    n = cfg.n_pins
    n_ads = int(round(n * cfg.ad_share))
    n_org = n - n_ads
    topic = rng.choice(tx.n_topics, size=n, p=topic_popularity(cfg, tx.n_topics)).astype(np.int16)
    k = rng.choice([1, 2, 3], size=n, p=[0.45, 0.35, 0.20])
    objects = np.full((n, MAX_OBJECTS), -1, np.int16)
    cat_topics: dict[str, list[int]] = {}
    for t in tx.topics:
        cat_topics.setdefault(t.category, []).append(t.topic_id)
    obj_lists = [np.array(t.object_ids) for t in tx.topics]
    for i in range(n):
        t = int(topic[i])
        for j in range(k[i]):
            src = t if j == 0 or rng.random() < SAME_TOPIC_OBJECT else int(rng.choice(cat_topics[tx.topics[t].category]))
            objects[i, j] = obj_lists[src][rng.integers(len(obj_lists[src]))]
    # created days: organic back catalog before day 0, then a steady stream; ads over the whole span
    n_new = int(round(n_org * cfg.new_pin_share))
    created = np.concatenate([
        rng.integers(-cfg.backcatalog_days, 0, n_org - n_new),
        rng.integers(0, cfg.days, n_new),
        rng.integers(-60, cfg.days, n_ads),
    ]).astype(np.int32)
    is_ad = np.zeros(n, bool)
    is_ad[n_org:] = True
    perm = rng.permutation(n)  # interleave ads and organic pins in id order
    created, is_ad = created[perm], is_ad[perm]
    adv = np.where(is_ad, rng.integers(0, cfg.n_advertisers, n), -1).astype(np.int32)
    bid = np.where(is_ad, np.round(rng.lognormal(np.log(80), 0.5, n), 1), 0).astype(np.float32)
    lifetime = rng.integers(cfg.ad_lifetime_days[0], cfg.ad_lifetime_days[1] + 1, n)
    ad_end = np.where(is_ad, created + lifetime, 0).astype(np.int32)
    r = rng.random(n)
    shares = np.cumsum([cfg.text_missing_share, cfg.text_title_missing_share, cfg.text_irrelevant_share, cfg.text_noisy_share])
    text_quality = np.select(
        [r < shares[0], r < shares[1], r < shares[2], r < shares[3]],
        [TEXT_MISSING, TEXT_TITLE_MISSING, TEXT_IRRELEVANT, TEXT_NOISY], TEXT_CLEAN).astype(np.int8)
    langs = list(cfg.languages.values())
    # its own stream, so that worlds without visible quality keep every other draw
    visible = stream(cfg.seed, "pins", 1).normal(0, 1, n) * np.sqrt(cfg.visible_quality_share)
    return PinLatents(
        topic=topic, objects=objects,
        style=rng.choice(len(STYLES), size=n).astype(np.int8),
        attr=rng.choice(len(ATTRIBUTES), size=n).astype(np.int8),
        quality=(visible + rng.normal(0, 1, n) * np.sqrt(1.0 - cfg.visible_quality_share)).astype(np.float32),
        created_day=created, is_ad=is_ad, advertiser_id=adv, bid=bid, ad_end_day=ad_end,
        ad_quality=np.where(is_ad, rng.normal(0, 1, n), 0).astype(np.float32),
        language=rng.choice(len(langs), size=n, p=np.array(langs) / sum(langs)).astype(np.int8),
        text_quality=text_quality,
        colour=rng.integers(0, len(COLOUR_NAMES), n).astype(np.int8),
        arrangement=np.where(k == 1, 0, rng.integers(1, len(ARRANGEMENTS), n)).astype(np.int8),
        scale=rng.integers(0, len(SCALES), n).astype(np.int8),
        rotations=rng.choice(ROTATIONS, size=(n, MAX_OBJECTS)).astype(np.int16),
        jitter=rng.normal(0, 1, (n, MAX_OBJECTS, 2)).astype(np.float32),
        visual_quality=visible.astype(np.float32),
    )


def sample_users(cfg: WorldConfig, n_topics: int) -> UserLatents:
    rng = stream(cfg.seed, "users")
    u = cfg.n_users
    pop = topic_popularity(cfg, n_topics)
    alpha = cfg.taste_concentration * n_topics * pop
    taste0 = rng.dirichlet(alpha, size=u).astype(np.float32)
    taste1 = rng.dirichlet(alpha, size=u).astype(np.float32)
    # global appeal of each style / attribute plus personal preference
    style_mu = rng.normal(0, 0.4, len(STYLES))
    attr_mu = rng.normal(0, 0.4, len(ATTRIBUTES))
    style_pref = (style_mu + rng.normal(0, cfg.pref_spread, (u, len(STYLES)))).astype(np.float32)
    attr_pref = (attr_mu + rng.normal(0, cfg.pref_spread, (u, len(ATTRIBUTES)))).astype(np.float32)
    activity = np.clip(rng.lognormal(np.log(cfg.activity), 0.6, u), 0.02, 0.95).astype(np.float32)
    signup = np.where(rng.random(u) < 0.85, rng.integers(-400, 0, u), rng.integers(0, cfg.days, u)).astype(np.int32)
    langs = list(cfg.languages.values())
    language = rng.choice(len(langs), size=u, p=np.array(langs) / sum(langs)).astype(np.int8)
    noisy = taste0 * rng.lognormal(0, 0.7, taste0.shape)
    policy = 0.7 * noisy / noisy.sum(1, keepdims=True) + 0.3 / n_topics
    return UserLatents(taste0, taste1, style_pref, attr_pref, activity, signup, language, policy.astype(np.float32))
