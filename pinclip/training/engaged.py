"""Evaluation pairs from the logs (paper §4.1), on pins held out from training.

The held-out split is every pin created on or after the training cutoff T (training reads as-of-T views,
so it never sees them) plus, optionally, a random share of the earlier pins. That share is picked by a
hash of (seed, pin_id), so a pin's membership does not depend on T or on which other pins exist.
Training must then drop the held-out earlier pins too: filter them out of the text table and pass
``split.heldout`` as ``exclude`` to ``neighbor_candidates``.

Engaged pairs, each kept once with the first day it happened in ``[since, until)``:

* Related Pins: (query pin, a pin saved or clicked from that query's Related Pins slate), both held out;
* Search: (search query text, the held-out pin saved after it), from ``pin_search_queries``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from pinlift.core.vocabulary import CLICK, RELATED, REPIN
from pinworld.world import World


@dataclass(frozen=True)
class HeldOutSplit:
    """Pins kept out of training: created on/after ``cutoff_day``, plus ``random_share`` of the others."""

    cutoff_day: int
    random_share: float
    seed: int
    heldout: np.ndarray  # sorted pin ids


def _uniform_hash(pin_ids: np.ndarray, seed: int) -> np.ndarray:
    """A uniform [0, 1) number per pin id (splitmix64 finaliser of seed and id)."""
    x = pin_ids.astype(np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def heldout_split(world: World, cutoff_day: int, *, random_share: float = 0.0, seed: int = 0) -> HeldOutSplit:
    """The held-out pins for a model trained with cutoff ``cutoff_day`` (see the module docstring)."""
    if not 0.0 <= random_share < 1.0:
        raise ValueError(f"pinclip: random_share {random_share}: expected a value in [0, 1)")
    pins = world.table("pins").select("pin_id", "created_day")
    ids = pins["pin_id"].to_numpy()
    held = (pins["created_day"].to_numpy() >= cutoff_day) | (_uniform_hash(ids, seed) < random_share)
    return HeldOutSplit(cutoff_day, random_share, seed, np.sort(ids[held]))


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
