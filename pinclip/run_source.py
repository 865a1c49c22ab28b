"""Publish a trained PinCLIP run's embeddings: batch inference over pins, the 64-d Matryoshka prefix
(``model.matryoshka(emb)[64]``) for fusion, image and — for pins with text — text, through the
publish contract. Texts are the descriptive sources known before ``as_of_day``, never later ones."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from pinclip.embeddings import open_embeddings
from pinclip.evaluate import Embedder, pin_texts
from pinclip.publish import EmbeddingBatch, PublishError, latest_version, publish
from pinclip.quantization import PUBLISHED_DIM
from pinclip.train import load_run
from pinworld.world import World


def publish_run(workdir: Path | str, run: str, name: str = "pinclip", *, as_of_day: int | None = None,
                since_day: int | None = None, batch_size: int = 256, progress: bool = True, on_part=None) -> dict:
    """Publish the pins created before ``as_of_day`` (all when None); with ``since_day`` an incremental
    version holding only the pins created since then that LATEST lacks."""
    world = World(workdir)
    model, tokenizer, saved = load_run(workdir, run)
    pins = world.pins(as_of=as_of_day)
    if since_day is not None:
        if latest_version(workdir, name) is None:
            raise PublishError(f"pinclip publish: --since-day {since_day}: nothing published under {name!r} yet")
        prev = open_embeddings(workdir, name)
        pins = pins.filter((pl.col("created_day") >= since_day) & ~pl.col("pin_id").is_in(prev.pin_ids))
    texts = pin_texts(pins)
    ids = texts["pin_id"].to_numpy()
    emb = Embedder(model, tokenizer, world, batch_size=batch_size, prefixes=(PUBLISHED_DIM,), progress=progress)
    vec = emb.embed_pins(ids, texts["text"].to_list())
    rows = vec.rows(ids)
    batch = EmbeddingBatch(ids, {kind: vec.vectors[kind][PUBLISHED_DIM][rows] for kind in ("fusion", "image", "text")},
                           present={"text": vec.has_text[rows]})
    source = {"kind": "pinclip", "run": run, "model": saved["train"]["model"],
              "generator_version": world.generator_version, "train_cutoff_day": saved["train"]["cutoff_day"]}
    return publish(workdir, name, batch, source=source, incremental=since_day is not None, as_of_day=as_of_day,
                   on_part=on_part)

