"""Publish a trained PinCLIP run's embeddings: batch inference over pins, the 64-d Matryoshka prefix
(``model.matryoshka(emb)[64]``) for fusion, image and — for pins with text — text, through the
publish contract. Texts are the descriptive sources known before ``as_of_day``, never later ones.
New content outside the workspace (a table of new pins) is published as an incremental version."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from pinclip.embed import NewPins
from pinclip.embedder import Embedder, ImageSource, pin_texts
from pinclip.embeddings import open_embeddings
from pinclip.loading import load_run
from pinclip.publish import EmbeddingBatch, PublishError, Shard, latest_version, publish, stage_shard
from pinclip.quantization import PUBLISHED_DIM
from pinlift.core.errors import input_error
from pinlift.core.runs import RunDir
from pinworld.world import World


class RunEmbedder:
    """A trained run, loaded once, turning pins into publishable 64-d embedding batches."""

    def __init__(self, workdir: Path | str, run: str, *, world: World | None = None,
                 images: ImageSource | None = None, batch_size: int = 256, progress: bool = True):
        """``images``: where the pins' images are read (default: the world's)."""
        self.world = world or World(workdir)
        self.run = run
        model, tokenizer, self.saved = load_run(workdir, run)
        self.config_hash = (RunDir(Path(workdir) / "pinclip" / "runs", run, "pinclip").saved() or {}).get("hash")
        self.embedder = Embedder(model, tokenizer, images or self.world, batch_size=batch_size,
                                 prefixes=(PUBLISHED_DIM,), progress=progress)

    @property
    def source(self) -> dict:
        return {"kind": "pinclip", "run": self.run, "model": self.saved["train"]["model"],
                "generator_version": self.world.generator_version,
                "train_cutoff_day": self.saved["train"]["cutoff_day"], "config_hash": self.config_hash}

    def batch(self, pins: pl.DataFrame) -> EmbeddingBatch:
        """Embeddings of ``pins`` (rows of ``World.pins(as_of=...)``, so texts known by then, or
        ``NewPins.pins``)."""
        texts = pin_texts(pins)
        ids = texts["pin_id"].to_numpy()
        vec = self.embedder.embed_pins(ids, texts["text"].to_list())
        rows = vec.rows(ids)
        return EmbeddingBatch(ids, {kind: vec.vectors[kind][PUBLISHED_DIM][rows] for kind in ("fusion", "image", "text")},
                              present={"text": vec.has_text[rows]})


def publish_run(workdir: Path | str, run: str, name: str = "pinclip", *, as_of_day: int | None = None,
                since_day: int | None = None, shard: Shard | None = None, batch_size: int = 256,
                progress: bool = True, on_part=None) -> dict:
    """Publish the pins created before ``as_of_day`` (all when None); with ``since_day`` an incremental
    version holding only the pins created since then that LATEST lacks. With ``shard`` only its share of
    the pins is embedded and staged (its record is returned); ``commit_shards`` publishes the version."""
    if shard is not None and since_day is not None:
        raise input_error("pinclip publish", "--shard", "a full publish (incremental ones are not sharded)",
                          f"--since-day {since_day}")
    embedder = RunEmbedder(workdir, run, batch_size=batch_size, progress=progress)
    pins = embedder.world.pins(as_of=as_of_day)
    if shard is not None:
        pins = pins.sort("pin_id")
        share = shard.rows(len(pins), align=batch_size)
        return stage_shard(workdir, name, embedder.batch(pins[share]), shard, total_rows=len(pins),
                           source=embedder.source, as_of_day=as_of_day, on_part=on_part)
    if since_day is not None:
        if latest_version(workdir, name) is None:
            raise PublishError(f"pinclip publish: --since-day {since_day}: nothing published under {name!r} yet")
        prev = open_embeddings(workdir, name)
        pins = pins.filter((pl.col("created_day") >= since_day) & ~pl.col("pin_id").is_in(prev.pin_ids))
    return publish(workdir, name, embedder.batch(pins), source=embedder.source, incremental=since_day is not None,
                   as_of_day=as_of_day, on_part=on_part)


def publish_new_pins(workdir: Path | str, run: str, pins: Path | str, name: str = "pinclip", *,
                     batch_size: int = 256, progress: bool = True, on_part=None) -> dict:
    """Publish a table of new pins (``pinclip.embed.NewPins``) as an incremental version on top of LATEST;
    pins LATEST already has are refused."""
    table = NewPins(pins)
    if latest_version(workdir, name) is None:
        raise PublishError(f"pinclip publish: --pins {pins}: nothing published under {name!r} yet to add them to")
    embedder = RunEmbedder(workdir, run, images=table, batch_size=batch_size, progress=progress)
    return publish(workdir, name, embedder.batch(table.pins), source={**embedder.source, "pins": table.source},
                   incremental=True, on_part=on_part)
