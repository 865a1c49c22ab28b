"""Oracle features: the true content latents of each pin as a dense vector — the ceiling a content
embedding can reach. Of the pin's quality only the part its image shows (``visible_quality_share``,
zero by default) is included; the rest is invisible in the content by construction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.linalg

from pinworld.latents import topic_posterior, visible_quality_z
from pinworld.render import STYLES
from pinworld.taxonomy import load_taxonomy
from pinworld.text import ATTRIBUTES
from pinworld.world import World


def oracle_feature_names(n_topics: int) -> list[str]:
    return ([f"topic_{t}" for t in range(n_topics)] + [f"style_{s}" for s in STYLES]
            + [f"attr_{a}" for a in ATTRIBUTES] + ["visual_quality"])


def oracle_features(world: World, pin_ids=None) -> np.ndarray:
    """float32 (n, n_topics + n_styles + n_attributes + 1): one-hot topic, visual style and attribute, then
    the visible part of the pin's quality."""
    truth = world.truth
    ids = np.arange(len(truth.pins)) if pin_ids is None else np.asarray(pin_ids)
    t, s = truth.n_topics, len(STYLES)
    out = np.zeros((len(ids), t + s + len(ATTRIBUTES) + 1), np.float32)
    rows = np.arange(len(ids))
    out[rows, truth.pins.topic[ids]] = 1
    out[rows, t + truth.pins.style[ids]] = 1
    out[rows, t + s + truth.pins.attr[ids]] = 1
    out[:, -1] = truth.pins.visual_quality[ids]
    return out


def topic_one_hot(world: World, pin_ids=None) -> np.ndarray:
    """The floor: only the topic part of the oracle."""
    return oracle_features(world, pin_ids)[:, : world.truth.n_topics]


def export_oracle(world: World, out: Path | str) -> Path:
    """Write ``pin_id`` + ``features`` (fixed-size float32 list) to a Parquet file, atomically."""
    out = Path(out)
    feats = oracle_features(world)
    table = pa.table({"pin_id": np.arange(len(feats), dtype=np.int64),
                      "features": pa.FixedSizeListArray.from_arrays(feats.reshape(-1), feats.shape[1])})
    tmp = out.with_suffix(out.suffix + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(out)
    return out


def topic_from_objects(world: World, pin_ids=None) -> np.ndarray:
    """The topic an exact reader of each pin's objects would name: the most probable one given the
    unordered object set (:func:`pinworld.latents.topic_posterior`). Unlike the true topic, which a second or
    third object from another topic of the same category can hide, this is what content can show of it."""
    truth = world.truth
    ids = np.arange(len(truth.pins)) if pin_ids is None else np.asarray(pin_ids)
    return topic_posterior(world.config, load_taxonomy(), truth.pins.objects[ids]).argmax(1)


ORACLE_EMBEDDING_DIM = 64
# what an oracle embedding holds: every content latent (the ceiling), the latent true topic alone (a
# reference no content reader observes), or the topic as the pin's objects show it (the floor)
ORACLE_KINDS = ("oracle", "topic", "topic_objects")
_TOPIC_DIMS, _STYLE_DIMS = 47, 8   # and one for the visible quality


def oracle_embeddings(world: World, pin_ids=None, kind: str = "oracle") -> dict[str, np.ndarray]:
    """The oracle as 64-d unit vectors in the published-embedding contract: a fixed near-orthogonal
    47-d code per topic, then style and attribute as rows of an 8x8 Hadamard matrix (orthogonal codes
    with small components, so int8 quantization clamps nothing), each block weighted to a third of the
    squared norm, then the visible quality (its z-score x 0.15, within +-0.45; zero when the images show
    none). ``image`` sees topic + style + visible quality, ``text`` topic + attribute. ``kind`` (one of
    ``ORACLE_KINDS``) ``topic`` keeps the topic block alone (unit norm) in every kind: the latent topic's
    one-hot in the same contract; ``topic_objects`` the same with the topic of :func:`topic_from_objects`,
    the floor a content embedding must beat."""
    if kind not in ORACLE_KINDS:
        raise ValueError(f"oracle embeddings: kind {kind!r}: expected one of {', '.join(ORACLE_KINDS)}")
    truth = world.truth
    ids = np.arange(len(truth.pins)) if pin_ids is None else np.asarray(pin_ids)
    codes = np.random.default_rng(20260).normal(size=(truth.n_topics, _TOPIC_DIMS)).astype(np.float32)
    codes /= np.linalg.norm(codes, axis=1, keepdims=True)
    topic = codes[topic_from_objects(world, ids) if kind == "topic_objects" else truth.pins.topic[ids]]
    hadamard = (scipy.linalg.hadamard(_STYLE_DIMS) / np.sqrt(_STYLE_DIMS)).astype(np.float32)
    style = hadamard[truth.pins.style[ids]]
    attr = hadamard[truth.pins.attr[ids]]
    zero_s, zero_a, zero_q = np.zeros_like(style), np.zeros_like(attr), np.zeros((len(ids), 1), np.float32)
    if kind != "oracle":
        only = np.concatenate([topic, zero_s, zero_a, zero_q], 1)
        return {"fusion": only, "image": only, "text": only}
    q = np.clip(0.15 * visible_quality_z(truth.pins.visual_quality[ids, None], world.config.visible_quality_share),
                -0.45, 0.45)
    w = np.float32(1 / np.sqrt(3))
    unit = lambda v: (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    return {
        "fusion": unit(np.concatenate([topic * w, style * w, attr * w, q], 1)),
        "image": unit(np.concatenate([topic, style, zero_a, q * np.sqrt(np.float32(2))], 1)),
        "text": unit(np.concatenate([topic, zero_s, attr, zero_q], 1)),
    }
