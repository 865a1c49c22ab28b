"""Publish pinworld's oracle features through the embedding contract (the ranking ceiling arm)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pinclip.embeddings import open_embeddings
from pinclip.publish import EmbeddingBatch, PublishError, latest_version, publish
from pinworld.oracle import oracle_embeddings
from pinworld.text import TEXT_MISSING
from pinworld.world import World


def publish_oracle(workdir: Path | str, name: str = "oracle", *, as_of_day: int | None = None,
                   since_day: int | None = None, kind: str = "oracle", on_part=None) -> dict:
    """Publish oracle embeddings of the pins created before ``as_of_day`` (all when None); with
    ``since_day``, an incremental version adding the pins created since then that LATEST lacks.
    ``kind`` (``pinworld.oracle.ORACLE_KINDS``) ``topic`` or ``topic_objects`` publishes a topic code alone
    instead: the latent true topic's (a reference) or the topic the pin's objects show (the floor)."""
    world = World(workdir)
    pins = world.table("pins", as_of=as_of_day).select("pin_id", "created_day")
    ids = pins["pin_id"].to_numpy()
    incremental = since_day is not None
    if incremental:
        if latest_version(workdir, name) is None:
            raise PublishError(f"pinclip publish: --since-day {since_day}: nothing published under {name!r} yet")
        prev = open_embeddings(workdir, name)
        ids = ids[(pins["created_day"].to_numpy() >= since_day) & ~np.isin(ids, prev.pin_ids)]
    vectors = oracle_embeddings(world, ids, kind=kind)
    has_text = world.truth.pins.text_quality[ids] != TEXT_MISSING
    batch = EmbeddingBatch(ids, vectors, present={"text": has_text})
    source = {"kind": kind, "generator_version": world.generator_version}
    return publish(workdir, name, batch, source=source, incremental=incremental, as_of_day=as_of_day,
                   on_part=on_part)
