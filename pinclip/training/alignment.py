"""Alignment scores for filtering training pairs (paper §3.2, CLIPScore-style): the cosine between a
reference run's image embedding of a pin and its text embedding of each of the pin's text kinds.
``TrainConfig.align_reference`` / ``align_threshold`` drop the pairs scored below the threshold
(``pinclip.data.sources.drop_misaligned``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from pinclip.data.sources import KINDS
from pinclip.embedder import Embedder
from pinclip.loading import load_run
from pinworld.world import World


def alignment_scores(workdir: str | Path, reference: str, texts: pl.DataFrame, *, world: World | None = None,
                     batch_size: int = 256, progress: bool = True) -> pl.DataFrame:
    """``pin_id, kind, score`` for every non-null text of ``texts`` (``text_sources`` rows), scored by
    run ``reference`` at its largest Matryoshka prefix."""
    model, tokenizer, _ = load_run(workdir, reference)
    dim = max(model.cfg.matryoshka_dims)
    embedder = Embedder(model, tokenizer, world or World(workdir), batch_size=batch_size, prefixes=(dim,),
                        progress=progress)
    ids = texts["pin_id"].to_numpy()
    images = embedder.embed_pins(ids, [None] * len(ids), kinds=("image",))
    parts = []
    for kind in KINDS:
        rows = texts.filter(pl.col(kind).is_not_null())
        if rows.height == 0:
            continue
        t = _unit(embedder.embed_texts(rows[kind].to_list())[dim])
        i = _unit(images.get("image", dim, rows["pin_id"].to_numpy()))
        parts.append(pl.DataFrame({"pin_id": rows["pin_id"], "kind": kind, "score": (i * t).sum(1)}))
    empty = pl.DataFrame(schema={"pin_id": pl.Int64, "kind": pl.String, "score": pl.Float32})
    return pl.concat(parts) if parts else empty


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
