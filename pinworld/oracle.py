"""Oracle features: the true content latents of each pin as a dense vector — the ceiling a content
embedding can reach. Quality is not included: it is invisible in the content by construction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pinworld.render import STYLES
from pinworld.text import ATTRIBUTES
from pinworld.world import World


def oracle_feature_names(n_topics: int) -> list[str]:
    return ([f"topic_{t}" for t in range(n_topics)] + [f"style_{s}" for s in STYLES]
            + [f"attr_{a}" for a in ATTRIBUTES])


def oracle_features(world: World, pin_ids=None) -> np.ndarray:
    """float32 (n, n_topics + n_styles + n_attributes): one-hot topic, visual style and attribute."""
    truth = world.truth
    ids = np.arange(len(truth.pins)) if pin_ids is None else np.asarray(pin_ids)
    t, s = truth.n_topics, len(STYLES)
    out = np.zeros((len(ids), t + s + len(ATTRIBUTES)), np.float32)
    rows = np.arange(len(ids))
    out[rows, truth.pins.topic[ids]] = 1
    out[rows, t + truth.pins.style[ids]] = 1
    out[rows, t + s + truth.pins.attr[ids]] = 1
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
