"""Embeddings published during an experiment, with a lag: new pins get their embedding ``lag`` days
after they are created, as a new incremental version each day.

An ``EmbeddingPublisher`` publishes into the experiment's own directory (``<exp>/embeddings/<name>/``)
through the ordinary publishing contract (pinclip.publish: versions, manifest, checksums, LATEST), so
the experiment records exactly which version served which day and re-running it reproduces it. The
publisher for an embedding name is chosen by the source kind of the workspace's LATEST version of that
name: ``oracle``, ``topic`` and ``pinclip`` (a trained run) are implemented here; other sources
register theirs with ``register_publisher``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import polars as pl

from pinlift.core.errors import InputError
from pinclip.embeddings import PublishedEmbeddings, open_embeddings
from pinclip.publish import EmbeddingBatch, embeddings_dir, latest_version, publish
from pinworld.oracle import ORACLE_KINDS, oracle_embeddings
from pinworld.text import TEXT_MISSING
from pinworld.world import World


class EmbeddingPublisher(Protocol):
    """Publishes the embeddings of every pin created up to ``day - lag`` and returns that version."""

    name: str
    lag: int

    def publish_until(self, day: int) -> PublishedEmbeddings:
        """Publish (incrementally) what is visible on ``day`` and return the version to serve with."""
        ...


def visible_before(day: int, lag: int) -> int:
    """Pins created on days < this have embeddings on ``day`` (created ≤ day − lag)."""
    return day - lag + 1


class DailyPublisher:
    """Publishes, each day, the pins that became visible since the last version (created <= day - lag),
    as an incremental version in the experiment's own directory; subclasses say how to embed them."""

    def __init__(self, world: World, out_workdir: Path | str, name: str, lag: int):
        self.world, self.out_workdir, self.name, self.lag = world, Path(out_workdir), name, lag
        pins = world.table("pins").select("pin_id", "created_day").sort("pin_id")
        self._ids, self._created = pins["pin_id"].to_numpy(), pins["created_day"].to_numpy()
        self._as_of: int | None = None
        self._current: PublishedEmbeddings | None = None
        self.history: list[dict] = []

    def embed(self, ids: np.ndarray, as_of: int, first: bool) -> EmbeddingBatch:
        raise NotImplementedError

    @property
    def source(self) -> dict:
        raise NotImplementedError

    def publish_until(self, day: int) -> PublishedEmbeddings:
        as_of = visible_before(day, self.lag)
        if self._as_of is not None and as_of <= self._as_of:
            return self._current
        new = self._created < as_of
        if self._as_of is not None:
            new &= self._created >= self._as_of
        ids = self._ids[new]
        if self._current is None or len(ids):
            manifest = publish(self.out_workdir, self.name, self.embed(ids, as_of, self._current is None),
                               source={**self.source, "lag_days": self.lag},
                               incremental=self._current is not None, as_of_day=as_of)
            self._current = open_embeddings(self.out_workdir, f"{self.name}@{manifest['version']}")
        self._as_of = as_of
        self.history.append({"day": day, "as_of_day": as_of, "version": self._current.version,
                             "rows": len(self._current), "added": int(len(ids))})
        return self._current


class OracleEmbeddingPublisher(DailyPublisher):
    """pinworld's oracle (or a topic code alone: ``kind`` from ``pinworld.oracle.ORACLE_KINDS``) embeddings,
    published day by day like a production pipeline."""

    def __init__(self, world: World, out_workdir: Path | str, name: str, lag: int, *, kind: str = "oracle"):
        super().__init__(world, out_workdir, name, lag)
        self.kind = kind

    @classmethod
    def from_manifest(cls, world: World, out_workdir: Path | str, name: str, lag: int,
                      manifest: dict) -> OracleEmbeddingPublisher:
        """The publisher of the kind the workspace's version was published as."""
        return cls(world, out_workdir, name, lag, kind=manifest["source"]["kind"])

    @property
    def source(self) -> dict:
        return {"kind": self.kind, "generator_version": self.world.generator_version}

    def embed(self, ids: np.ndarray, as_of: int, first: bool) -> EmbeddingBatch:
        vectors = oracle_embeddings(self.world, ids, kind=self.kind)
        return EmbeddingBatch(ids, vectors, {"text": self.world.truth.pins.text_quality[ids] != TEXT_MISSING})


class PinCLIPRunPublisher(DailyPublisher):
    """A PinCLIP run's embeddings, published day by day: the first version takes the pins visible then
    from the workspace's published version of the same run (its int8 rows, unchanged); every later
    day embeds only the pins created since, with the run's model and the texts known that day."""

    def __init__(self, world: World, out_workdir: Path | str, name: str, lag: int, manifest: dict):
        from pinclip.run_source import RunEmbedder   # loads torch: only when a PinCLIP run is published

        super().__init__(world, out_workdir, name, lag)
        self.base = open_embeddings(world.workdir, f"{name}@{manifest['version']}")
        self.embedder = RunEmbedder(world.workdir, manifest["source"]["run"], world=world, progress=False)

    @property
    def source(self) -> dict:
        return self.embedder.source

    def embed(self, ids: np.ndarray, as_of: int, first: bool) -> EmbeddingBatch:
        if first:
            return EmbeddingBatch(ids, {k: self.base.lookup(ids, k).values for k in self.base.kinds},
                                  present={k: self.base.lookup(ids, k).found for k in self.base.kinds})
        return self.embedder.batch(self.world.pins(as_of=as_of).filter(pl.col("pin_id").is_in(ids)))


PublisherFactory = Callable[[World, Path, str, int, dict], EmbeddingPublisher]
PUBLISHERS: dict[str, PublisherFactory] = {
    **dict.fromkeys(ORACLE_KINDS, OracleEmbeddingPublisher.from_manifest),
    "pinclip": PinCLIPRunPublisher,
}


def register_publisher(kind: str, factory: PublisherFactory) -> None:
    """Make ``abtest simulate`` publish embeddings whose LATEST source kind is ``kind``."""
    PUBLISHERS[kind] = factory


def source_manifest(workdir: Path | str, name: str) -> dict:
    """The manifest of the workspace's LATEST version of embedding ``name``."""
    version = latest_version(workdir, name)
    if version is None:
        raise InputError(f"{embeddings_dir(workdir, name)}: LATEST: expected a published version of {name!r}, "
                          "found none")
    return json.loads((embeddings_dir(workdir, name) / version / "manifest.json").read_text())


def make_publisher(world: World, out_workdir: Path, name: str, lag: int) -> EmbeddingPublisher:
    """The publisher for embedding ``name``, by the source kind of its LATEST version."""
    manifest = source_manifest(world.workdir, name)
    kind = manifest.get("source", {}).get("kind")
    if kind not in PUBLISHERS:
        raise InputError(f"{embeddings_dir(world.workdir, name)}: source kind: expected one with an "
                          f"EmbeddingPublisher ({', '.join(sorted(PUBLISHERS))}; register others with "
                          f"abtest.publishers.register_publisher), found {kind!r}")
    return PUBLISHERS[kind](world, Path(out_workdir), name, lag, manifest)


def new_pin_ids(previous: np.ndarray | None, current: PublishedEmbeddings) -> np.ndarray:
    """Pins of ``current`` missing from ``previous`` (sorted ids), for incremental index updates."""
    if previous is None:
        return current.pin_ids
    return current.pin_ids[~np.isin(current.pin_ids, previous)]
