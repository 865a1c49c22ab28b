"""Ranking examples as Parquet shards: the in-memory features bit for bit, a stream that deals every row once,
and a model trained on the stream equal to the in-memory one when the order is the same."""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import polars as pl
import pytest
import torch

from pinlift.core.distributed import Env
from pinlift.core.errors import InputError
from pinworld.world import World
from ranking.counts import ImpressionCounts
from ranking.features import Examples, FeatureSource, Vocabs
from ranking.shards import Shards, split_days, write_shards
from ranking.train import TrainConfig, Trainer, main

CFG = dict(epochs=1, batch_size=256, checks_per_epoch=2, embedding_dim=8, dense_hidden=[32], over_hidden=[32],
           dcn_low_rank=8)


def _equal_bits(a: Examples, b: Examples) -> None:
    for f in dataclasses.fields(Examples):
        x, y = getattr(a, f.name), getattr(b, f.name)
        for u, v in zip(x, y) if isinstance(x, tuple) else [(x, y)]:
            assert u.dtype == v.dtype and u.shape == v.shape, f.name
            assert u.tobytes() == v.tobytes(), f.name   # NaN labels included, bit for bit


@pytest.fixture(scope="module")
def tiny_shards(tiny_world, tmp_path_factory):
    cfg = TrainConfig().resolved(tiny_world)
    out = tmp_path_factory.mktemp("shards")
    write_shards(tiny_world, cfg, out, days_per_shard=3, row_group_rows=700)
    return cfg, Shards(out, cfg, tiny_world)


def test_shards_hold_the_in_memory_examples_bit_for_bit(tiny_world, tiny_shards):
    cfg, shards = tiny_shards
    source = FeatureSource(tiny_world)
    for split, (first, end) in split_days(tiny_world, cfg).items():
        # the logs are partitioned by day: the shards hold their rows in day order, as this stable sort does
        imp = tiny_world.impressions(since=first, as_of=end).sort("day", maintain_order=True)
        expected = source.examples(imp)
        _equal_bits(shards.load(split), expected)
        if split == "train":
            vocabs, (ids, counts) = shards.fit()
            assert vocabs.to_arrays().keys() == Vocabs.fit(expected).to_arrays().keys()
            for k, v in Vocabs.fit(expected).to_arrays().items():
                np.testing.assert_array_equal(vocabs.to_arrays()[k], v)
            np.testing.assert_array_equal((ids, counts), np.unique(expected.pin_id, return_counts=True))
    assert len({g[0] for g in shards.groups("train")}) > 1 and len(shards.groups("train")) > 5


def test_one_surface_counts_every_surface_bit_for_bit(tiny_world, tmp_path):
    """Shards of one surface: the impression counts still include every surface's impressions, as in memory."""
    cfg = TrainConfig(surfaces=["related"]).resolved(tiny_world)
    write_shards(tiny_world, cfg, tmp_path, days_per_shard=4)
    shards, source = Shards(tmp_path, cfg, tiny_world), FeatureSource(tiny_world)
    for split, (first, end) in split_days(tiny_world, cfg).items():
        imp = tiny_world.impressions(since=first, as_of=end, surfaces=["related"]).sort("day", maintain_order=True)
        _equal_bits(shards.load(split), source.examples(imp))


def test_impression_counts_of_ranges_equal_the_whole_log(tiny_world):
    """Counts of ranges with days between and before them (counted by a query) equal ``History`` over the log."""
    memory, ranged = FeatureSource(tiny_world), FeatureSource(tiny_world, impressions=False)
    counts = ImpressionCounts(tiny_world)
    rng = np.random.default_rng(0)
    names = ("pin_impressions", "pin_repins", "pin_clicks", "user_impressions")
    for lo, hi in [(5, 8), (8, 9), (12, 15)]:
        imp = counts.day_range(ranged, lo, hi)
        assert imp.height and imp["day"].min() >= lo and imp["day"].max() < hi
        day = rng.integers(lo, hi + 1, 500)    # up to the range's end, for ids with and without impressions
        for name in names:
            ids = (imp["user_id"] if name.startswith("user") else imp["pin_id"]).to_numpy()
            entity = np.concatenate([rng.choice(ids, 400), rng.integers(0, 10 ** 6, 100)])
            want = getattr(memory, name).count_before(entity, day)
            got = getattr(ranged, name).count_before(entity, day)
            assert got.dtype == want.dtype and got.tobytes() == want.tobytes(), name
    with pytest.raises(ValueError, match="already counted"):
        counts.day_range(ranged, 14, 16)


@pytest.mark.parametrize("world_size", [1, 2])
def test_stream_deals_each_row_once_per_epoch(tiny_shards, world_size):
    """Each rank reads its own row groups, a small buffer at a time; every rank gets the same number of batches,
    and one epoch over all ranks covers each training row at most once (all of them on one rank)."""
    _, shards = tiny_shards
    train = shards.load("train")
    key = lambda ex, rows: list(zip(ex.user_id[rows], ex.pin_id[rows], ex.day[rows], ex.dense[rows, 0]))  # noqa: E731
    seen, per_rank = Counter(), []
    for rank in range(world_size):
        env = Env(rank, world_size, torch.device("cpu"), "gloo")
        got = list(shards.batches(256, env, [0, 0], buffer_rows=1000))
        assert all(len(rows) == 256 for _, rows in got[:-1])
        per_rank.append(len(got))
        for ex, rows in got:
            seen.update(key(ex, rows))
    assert per_rank == [shards.batches_per_rank(256, env)] * world_size
    everything = Counter(key(train, np.arange(len(train))))
    assert not seen - everything
    if world_size == 1:
        assert seen == everything
    else:
        assert seen.total() > len(train) - 256 * world_size - 2 * 700


def test_streamed_training_equals_in_memory(team_workdir, tmp_path):
    """The team's logs are in day order: one buffer of every row group is the in-memory row order, and the
    run trained on the stream is the in-memory run, check for check and prediction for prediction."""
    world = World(team_workdir)
    cfg = TrainConfig(**CFG)
    write_shards(world, cfg.resolved(world), tmp_path / "shards", row_group_rows=500)
    assert main(["--workdir", str(team_workdir), "--write-shards", str(tmp_path / "more"), "epochs=1"]) == 0
    memory = Trainer(cfg, team_workdir, "in_memory", restart=True, quiet=True).fit()
    streamed = Trainer(cfg, team_workdir, "streamed", restart=True, quiet=True, shards=tmp_path / "shards",
                       shuffle_rows=10 ** 9).fit()
    assert memory["train_examples"] == streamed["train_examples"]
    assert [c["validation_loss"] for c in memory["checks"]] == [c["validation_loss"] for c in streamed["checks"]]
    runs = team_workdir / "ranking" / "runs"
    np.testing.assert_array_equal(np.load(runs / "in_memory" / "eval_predictions.npy"),
                                  np.load(runs / "streamed" / "eval_predictions.npy"))
    assert memory["metrics"] == streamed["metrics"]
    # a small buffer: another order, a model of the same quality
    small = Trainer(cfg, team_workdir, "streamed_small", restart=True, quiet=True, shards=tmp_path / "shards",
                    shuffle_rows=1000).fit()
    assert abs(small["checks"][-1]["validation_loss"] - memory["checks"][-1]["validation_loss"]) < 0.05


def test_shards_of_other_settings_are_refused(tiny_world, tiny_shards, tmp_path):
    _, shards = tiny_shards
    other = TrainConfig(max_history=3).resolved(tiny_world)
    with pytest.raises(InputError, match="max_history: expected 3 .*found 10"):
        Shards(shards.dir, other, tiny_world)
    with pytest.raises(InputError, match="manifest"):
        Shards(tmp_path, other, tiny_world)
    with pytest.raises(InputError, match="a new or empty directory"):
        write_shards(tiny_world, other, shards.dir)
    assert pl.read_parquet(shards.dir / shards.groups("eval")[0][0]).height > 0
    assert main(["--workdir", str(tiny_world.workdir), "--write-shards", str(tmp_path / "w"),
                 "--shards", str(shards.dir)]) == 2          # write, then train: never both at once
    assert not (tmp_path / "w").exists()
