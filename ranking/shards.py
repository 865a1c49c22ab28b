"""Training examples on disk: Parquet shards per day range, and a trainer's stream of them.

``python -m ranking.train [settings] --workdir W --write-shards DIR`` writes the examples of a run's
settings (cutoff, validation days, surfaces, feature settings) one day range at a time, as
``DIR/<split>/days-<first>-<end>.parquet`` (splits ``train``, ``validation``, ``eval``), with
``DIR/manifest.json``: the settings, and per shard its days, rows and row groups. Each range's features are
``FeatureSource.examples`` of that range's impressions, so they are the in-memory ones bit for bit
(everything is as of strictly before each example's day); the impression counts are ``ranking.counts``'
(totals per pin and per user over the days before the range plus the range's own), so only one range of the
impression log is in memory at a time. ``python -m ranking.train --shards DIR`` then
trains on them: each rank reads its own row groups, a buffer of them at a time, and shuffles within
the buffer, so its memory holds a buffer and the validation and evaluation days, not the training logs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from pinlift.core.distributed import Env
from pinlift.core.errors import input_error
from pinworld.files import write_text_atomic
from pinworld.world import World
from ranking.counts import ImpressionCounts
from ranking.features import Examples, FeatureSource, Vocabs
from ranking.history import gather_jagged

MANIFEST = "manifest.json"
SPLITS = ("train", "validation", "eval")
# the run settings examples depend on: a run trains on shards only when its own values equal these
SHARD_SETTINGS = ("cutoff_day", "surfaces", "validation_days", "max_boards", "max_history", "coengagement_dim",
                  "coengagement_every")
IDS = ("user_id", "pin_id", "query_pin_id", "advertiser_id", "surface", "day", "created_day", "is_ad")
JAGGED = ("boards", "history")


def to_table(ex: Examples) -> pa.Table:
    """One row per example; dense and labels as fixed-size lists, boards and history as lists."""
    cols = {k: getattr(ex, k) for k in IDS}
    for k in ("dense", "labels"):
        m = getattr(ex, k)
        cols[k] = pa.FixedSizeListArray.from_arrays(m.reshape(-1), m.shape[1])
    for k in JAGGED:
        values, offsets = getattr(ex, k)
        cols[k] = pa.LargeListArray.from_arrays(offsets, values)
    return pa.table(cols)


def _matrix(table: pa.Table, k: str) -> np.ndarray:
    """A fixed-size list column as an (n, size) array."""
    col = table.column(k).combine_chunks()
    return col.flatten().to_numpy().reshape(len(col), col.type.list_size)


def from_table(table: pa.Table) -> Examples:
    """The examples ``to_table`` wrote."""
    cols = {k: table.column(k).to_numpy() for k in IDS}
    for k in ("dense", "labels"):
        cols[k] = _matrix(table, k)
    for k in JAGGED:
        col = table.column(k).combine_chunks()
        offsets = col.offsets.to_numpy()
        cols[k] = col.flatten().to_numpy(), offsets - offsets[0]
    return Examples(**cols)


def take(ex: Examples, rows: np.ndarray) -> Examples:
    """The examples at ``rows``, in that order."""
    jagged = {}
    for k in JAGGED:
        values, lengths = gather_jagged(*getattr(ex, k), rows)
        jagged[k] = values, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return Examples(**{k: getattr(ex, k)[rows] for k in (*IDS, "dense", "labels")}, **jagged)


def concat(parts: list[Examples]) -> Examples:
    """The examples of ``parts``, one after another."""
    jagged = {}
    for k in JAGGED:
        starts = np.cumsum([0] + [len(getattr(p, k)[0]) for p in parts[:-1]])
        jagged[k] = (np.concatenate([getattr(p, k)[0] for p in parts]),
                     np.concatenate([[0]] + [getattr(p, k)[1][1:] + s for p, s in zip(parts, starts)]).astype(np.int64))
    return Examples(**{k: np.concatenate([getattr(p, k) for p in parts]) for k in (*IDS, "dense", "labels")},
                    **jagged)


def split_days(world: World, cfg) -> dict[str, tuple[int, int]]:
    """Days [first, end) of each split of a resolved ``TrainConfig``, as ``ranking.train`` splits them."""
    first, end = world.log_window
    split = cfg.cutoff_day - max(cfg.validation_days, 0)
    days = {"train": (first, split), "validation": (split, cfg.cutoff_day), "eval": (cfg.cutoff_day, end)}
    return {k: v for k, v in days.items() if v[0] < v[1]}


def write_shards(world: World, cfg, out: Path | str, days_per_shard: int = 1, row_group_rows: int = 65536) -> dict:
    """Write the examples of a resolved ``TrainConfig`` per ``days_per_shard`` days into ``out`` (a new or
    empty directory) and return the manifest."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise input_error(out, "shards", "a new or empty directory", "files in it")
    if days_per_shard < 1 or row_group_rows < 1:
        raise input_error(out, "shards", "days per shard and rows per row group >= 1", (days_per_shard, row_group_rows))
    source = FeatureSource(world, cfg.max_boards, cfg.max_history, cfg.coengagement_dim, cfg.coengagement_every,
                           impressions=False)
    counts = ImpressionCounts(world)
    splits = {}
    for split, (first, end) in split_days(world, cfg).items():
        (out / split).mkdir(parents=True, exist_ok=True)
        shards = []
        for lo in range(first, end, days_per_shard):
            hi = min(lo + days_per_shard, end)
            imp = counts.day_range(source, lo, hi).filter(pl.col("surface").is_in(list(cfg.surfaces)))
            # in day order (a stable sort): the logs' files may list day=10 before day=9
            imp = imp.sort("day", maintain_order=True)
            if imp.height == 0:
                continue
            name = f"{split}/days-{lo:04d}-{hi:04d}.parquet"
            pq.write_table(to_table(source.examples(imp)), out / name, row_group_size=row_group_rows)
            meta = pq.ParquetFile(out / name).metadata
            shards.append({"file": name, "days": [lo, hi], "rows": meta.num_rows,
                           "row_groups": [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]})
        if not shards:
            raise ValueError(f"ranking: {world.workdir / 'logs'}: expected impressions on days [{first}, {end}) "
                             f"({split}) on {list(cfg.surfaces)}, found none")
        splits[split] = shards
    manifest = {"settings": {k: getattr(cfg, k) for k in SHARD_SETTINGS},
                "vocabulary": world.vocabulary.model_dump(mode="json"),
                "generator_version": world.generator_version, "splits": splits}
    write_text_atomic(out / MANIFEST, json.dumps(manifest, indent=2))
    return manifest


class Shards:
    """Shards written by ``write_shards``, checked against a run's resolved settings."""

    def __init__(self, directory: Path | str, cfg, world: World):
        self.dir = Path(directory)
        path = self.dir / MANIFEST
        if not path.is_file():
            raise input_error(path, "shards", f"a manifest (write it with --write-shards {self.dir})", "no such file")
        self.manifest = json.loads(path.read_text())
        found = {**self.manifest["settings"], "vocabulary": self.manifest["vocabulary"]}
        want = {**{k: getattr(cfg, k) for k in SHARD_SETTINGS}, "vocabulary": world.vocabulary.model_dump(mode="json")}
        for k in want:
            if found[k] != want[k]:
                raise input_error(path, k, f"{want[k]!r} (the run's setting)", repr(found[k]))

    def groups(self, split: str) -> list[tuple[str, int, int]]:
        """The row groups of a split in shard order: (file, index in it, rows)."""
        return [(s["file"], i, n) for s in self.manifest["splits"].get(split, [])
                for i, n in enumerate(s["row_groups"])]

    def rows(self, split: str) -> int:
        return sum(n for _, _, n in self.groups(split))

    def read(self, groups: list[tuple[str, int, int]], first: Examples | None = None) -> Examples:
        """The examples of ``groups`` (after ``first``, when given), in that order."""
        files: dict[str, pq.ParquetFile] = {}
        return concat([first] * (first is not None)
                      + [from_table(files.setdefault(f, pq.ParquetFile(self.dir / f)).read_row_group(i))
                         for f, i, _ in groups])

    def load(self, split: str) -> Examples | None:
        """A whole split in memory (None if the shards have none)."""
        groups = self.groups(split)
        return self.read(groups) if groups else None

    def keys(self, split: str) -> Examples | None:
        """A whole split without its features (ids, days and labels; no dense, board or history values): what
        evaluation reads beside the predictions ``chunks`` give (None if the shards have none)."""
        groups = self.groups(split)
        if not groups:
            return None
        files: dict[str, pq.ParquetFile] = {}
        table = pa.concat_tables([files.setdefault(f, pq.ParquetFile(self.dir / f)).read_row_group(
            i, columns=[*IDS, "labels"]) for f, i, _ in groups])
        n = table.num_rows
        none = (np.zeros(0, np.int64), np.zeros(n + 1, np.int64))
        return Examples(**{k: table.column(k).to_numpy() for k in IDS}, dense=np.zeros((n, 0), np.float32),
                        labels=_matrix(table, "labels"), boards=none, history=none)

    def chunks(self, split: str) -> Iterator[Examples]:
        """A split's examples with their features, one row group at a time, in shard order."""
        for group in self.groups(split):
            yield self.read([group])

    def fit(self) -> tuple[Vocabs, tuple[np.ndarray, np.ndarray]]:
        """``Vocabs.fit`` of the training examples and their pin ids with counts, one row group at a time."""
        vocabs, ids, counts = None, np.zeros(0, np.int64), np.zeros(0, np.int64)
        for group in self.groups("train"):
            ex = self.read([group])
            part = Vocabs.fit(ex)
            vocabs = part if vocabs is None else vocabs.union(part)
            ids, inverse = np.unique(np.concatenate([ids, ex.pin_id]), return_inverse=True)
            counts = np.bincount(inverse, np.concatenate([counts, np.ones(len(ex), np.int64)])).astype(np.int64)
        return vocabs, (ids, counts)

    def batches_per_rank(self, batch_size: int, env: Env) -> int:
        """Training batches of every rank per epoch: what the rank with the fewest rows has (lockstep)."""
        groups = self.groups("train")
        return min(-(-sum(n for _, _, n in groups[r::env.world_size]) // batch_size) for r in range(env.world_size))

    def batches(self, batch_size: int, env: Env, seed: list[int],
                buffer_rows: int) -> Iterator[tuple[Examples, np.ndarray]]:
        """This rank's training batches of an epoch as (the batch's examples, all their rows): its row groups (every
        ``world_size``-th) in a random order, ``buffer_rows`` at a time, each buffer's rows in shard
        order and then permuted by ``default_rng(seed)``; rows short of a batch carry over to the next
        buffer. One buffer of every row group on one rank gives ``ranking.train``'s in-memory order."""
        rng = np.random.default_rng(seed)
        groups = self.groups("train")
        mine = list(range(env.rank, len(groups), env.world_size))
        visit = [mine[k] for k in np.random.default_rng([*seed, env.rank, 1]).permutation(len(mine))]
        left, carry = self.batches_per_rank(batch_size, env), None
        while visit and left:
            take_n = np.searchsorted(np.cumsum([groups[g][2] for g in visit]), buffer_rows) + 1
            chosen, visit = sorted(visit[:take_n]), visit[take_n:]
            buf = self.read([groups[g] for g in chosen], first=carry)
            order = rng.permutation(len(buf))
            full = len(buf) if not visit else len(buf) - len(buf) % batch_size
            for i in range(0, full, batch_size):
                if not left:
                    return
                rows = order[i:i + batch_size]
                yield take(buf, rows), np.arange(len(rows))   # the batch alone: no buffer outlives its turn
                left -= 1
            carry = take(buf, order[full:]) if full < len(buf) else None
            buf = None   # released before the next buffer is read
