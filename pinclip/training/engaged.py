"""Evaluation pairs from the logs (paper §4.1), on pins held out from training.

The held-out split is every pin created on or after the training cutoff T (training reads as-of-T views,
so it never sees them) plus, optionally, a random share of the earlier pins. That share is picked by a
hash of (seed, pin_id), so a pin's membership does not depend on T or on which other pins exist.
Training must then drop the held-out earlier pins too: filter them out of the text table and pass
``split.heldout`` as ``exclude`` to ``neighbor_candidates``.

A supplied split (``supplied_split``) replaces the random share: a table of ``pin_id, split`` (train,
validation or test) or a column of the pins table; every pin not in ``train`` is held out.

Engaged pairs, each kept once with the first day it happened in ``[since, until)``:

* Related Pins: (query pin, a pin saved or clicked from that query's Related Pins slate), both held out;
* Search: (search query text, the held-out pin saved after it), from ``pin_search_queries``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from pinlift.core.config import COMMAND_LINE
from pinlift.core.errors import input_error
from pinlift.core.hashing import uniform_hash
from pinlift.core.vocabulary import CLICK, RELATED, REPIN
from pinworld.world import World


SPLITS = ("train", "validation", "test")
SPLIT_FILES = (".parquet", ".csv", ".txt")


@dataclass(frozen=True)
class HeldOutSplit:
    """Pins kept out of training: created on/after ``cutoff_day``, plus ``random_share`` of the others, or
    every pin outside the ``train`` rows of a ``supplied`` split."""

    cutoff_day: int
    random_share: float
    seed: int
    heldout: np.ndarray  # sorted pin ids
    supplied: str = ""   # the split file or pins column, if any
    late: int = 0        # how many of them were created on/after the cutoff

    def describe(self, pins: int) -> str:
        """One line: how many of the ``pins`` are held out and why."""
        earlier = len(self.heldout) - self.late
        why = (f"{earlier:,} not in the train rows of split {self.supplied!r}" if self.supplied else
               f"{earlier:,} of the earlier ones at random (heldout_share {self.random_share:g}, seed {self.seed})")
        return (f"holding out {len(self.heldout):,} of {pins:,} pins ({len(self.heldout) / max(pins, 1):.1%}): "
                f"{self.late:,} created on/after the cutoff day {self.cutoff_day}, {why}")


def heldout_split(world: World, cutoff_day: int, *, random_share: float = 0.0, seed: int = 0,
                  split: str = "") -> HeldOutSplit:
    """The held-out pins for a model trained with cutoff ``cutoff_day`` (see the module docstring); with a
    supplied ``split`` (``supplied_split``), every pin not in its train rows instead of the random share."""
    if not 0.0 <= random_share < 1.0:
        raise ValueError(f"pinclip: random_share {random_share}: expected a value in [0, 1)")
    pins = world.table("pins").select("pin_id", "created_day")
    ids = pins["pin_id"].to_numpy()
    late = pins["created_day"].to_numpy() >= cutoff_day
    if split:
        train = supplied_split(world, split).filter(pl.col("split") == "train")["pin_id"].to_numpy()
        if not len(train):
            raise input_error(split, "split", "rows of the train split to train on", "none")
        return HeldOutSplit(cutoff_day, 0.0, seed, np.sort(ids[late | ~np.isin(ids, train)]), split, int(late.sum()))
    held = late | (uniform_hash(ids, seed) < random_share)
    return HeldOutSplit(cutoff_day, random_share, seed, np.sort(ids[held]), late=int(late.sum()))


def _read_split_table(path: Path) -> pl.DataFrame:
    try:
        if path.suffix == ".parquet":
            return pl.read_parquet(path)
        if path.suffix == ".txt":
            return pl.read_csv(path, has_header=False, new_columns=["pin_id"])
        return pl.read_csv(path)
    except Exception as exc:   # polars' many read errors: one line naming the file
        raise input_error(path, "file", "a table of pin_id[, split]", str(exc).splitlines()[0]) from None


def supplied_split(world: World, spec: str) -> pl.DataFrame:
    """``pin_id, split`` from ``spec``: a Parquet or CSV file with those columns, a file listing pin ids
    (CSV or Parquet with only ``pin_id``, or .txt, one id a line: split null), or a column of the pins table.
    Values are train, validation or test; null puts a pin in no split. Unknown pins, a pin listed twice or
    another value is an InputError."""
    pins = world.table("pins")
    path = Path(spec)
    if path.is_file():
        where, df = path, _read_split_table(path)
        if "pin_id" not in df.columns:
            raise input_error(where, "pin_id", "a column of pin ids", f"columns {df.columns}")
        df = df.select("pin_id", pl.col("split") if "split" in df.columns else pl.lit(None, pl.String).alias("split"))
    elif spec in pins.columns:
        where, df = world.workdir / "world" / "pins.parquet", pins.select("pin_id", pl.col(spec).alias("split"))
    else:
        raise input_error(COMMAND_LINE, "split", f"an existing {', '.join(SPLIT_FILES)} file or a column of the "
                          "pins table", repr(spec))
    if not df.schema["pin_id"].is_integer() or df["pin_id"].null_count():
        raise input_error(where, "pin_id", "integer pin ids", f"{df.schema['pin_id']} with "
                          f"{df['pin_id'].null_count()} nulls")
    if df.schema["split"] not in (pl.String, pl.Categorical, pl.Null):
        raise input_error(where, "split", "train, validation or test", f"a column of {df.schema['split']}")
    df = df.with_columns(pl.col("pin_id").cast(pl.Int64), pl.col("split").cast(pl.String))
    twice = df.filter(pl.col("pin_id").is_duplicated())["pin_id"].unique().sort()
    if len(twice):
        raise input_error(where, "pin_id", "each pin once", f"{len(twice)} pins more than once, e.g. {twice[0]}")
    unknown = df.filter(~pl.col("pin_id").is_in(pins["pin_id"].implode()))["pin_id"].sort()
    if len(unknown):
        raise input_error(where, "pin_id", "pins of the pins table", f"{len(unknown)} unknown, e.g. {unknown[0]}")
    bad = df.filter(pl.col("split").is_not_null() & ~pl.col("split").is_in(SPLITS))["split"].unique().sort()
    if len(bad):
        raise input_error(where, "split", "train, validation or test", ", ".join(map(repr, bad[:3].to_list())))
    return df.sort("pin_id")


def _days(df: pl.DataFrame, since: int | None, until: int | None) -> pl.DataFrame:
    if since is not None:
        df = df.filter(pl.col("day") >= since)
    if until is not None:
        df = df.filter(pl.col("day") < until)
    return df


def related_pairs(world: World, heldout, since: int | None = None, until: int | None = None, *,
                  actions: tuple[str, ...] = (REPIN, CLICK)) -> pl.DataFrame:
    """``query_pin_id, pin_id, day``: a held-out pin engaged (any of ``actions``) from a held-out query
    pin's Related Pins slate (the workspace's surfaces of kind related) on days ``[since, until)``, once per
    pair at its first day."""
    held = pl.Series(np.asarray(heldout, np.int64)).implode()
    related = [s.name for s in world.vocabulary.of_kind(RELATED)]
    imp = world.impressions(as_of=until, since=since, surfaces=related)
    return (imp.filter(pl.any_horizontal(actions) & pl.col("query_pin_id").is_in(held)
                       & pl.col("pin_id").is_in(held) & (pl.col("pin_id") != pl.col("query_pin_id")))
            .group_by("query_pin_id", "pin_id").agg(pl.col("day").min().cast(pl.Int64))
            .sort("query_pin_id", "pin_id"))


def search_pairs(world: World, heldout, since: int | None = None, until: int | None = None) -> pl.DataFrame:
    """``query, pin_id, day``: a search query and the held-out pin saved after it on days
    ``[since, until)``, once per pair at its first day."""
    held = pl.Series(np.asarray(heldout, np.int64)).implode()
    saves = _days(world.table("pin_search_queries"), since, until)
    return (saves.filter(pl.col("pin_id").is_in(held))
            .group_by("query", "pin_id").agg(pl.col("day").min().cast(pl.Int64))
            .sort("query", "pin_id"))
