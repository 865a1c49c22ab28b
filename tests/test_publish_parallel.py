"""Publishing in parallel: shards staged by separate processes and one commit give the version a
one-process publish gives; a missing, half-written or corrupt shard is refused and nothing is published."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pinclip import cli
from pinclip.embeddings import embeddings_dir, open_embeddings
from pinclip.publish import STAGING, EmbeddingBatch, Shard, commit_shards, publish, stage_shard, versions
from pinlift.core.errors import InputError

SOURCE = {"kind": "test"}


def _batch(ids, seed=0):
    rng = np.random.default_rng(seed)
    ids = np.asarray(ids, np.int64)
    return EmbeddingBatch(ids, {k: rng.normal(size=(len(ids), 64)) for k in ("fusion", "text")},
                          present={"text": rng.random(len(ids)) < 0.7})


def _same_content(a, b):
    assert a.kinds == b.kinds and np.array_equal(a.pin_ids, b.pin_ids)
    for kind in a.kinds:
        np.testing.assert_array_equal(a.data[kind], b.data[kind])
        np.testing.assert_array_equal(a.present[kind], b.present[kind])
    for field in ("source", "as_of_day", "rows", "parent", "dim", "quantization"):
        assert a.manifest[field] == b.manifest[field], field


def test_shards_partition_the_sorted_pins_on_batch_boundaries():
    for total, count, align in ((3000, 2, 256), (10, 3, 1), (5, 4, 4), (0, 2, 8), (1000, 7, 64)):
        shares = [Shard(i, count).rows(total, align) for i in range(count)]
        assert shares[0].start == 0 and shares[-1].stop == total
        assert all(a.stop == b.start for a, b in zip(shares, shares[1:]))
        assert all(s.start % align == 0 for s in shares if s.start < total)
    assert Shard.parse("1/2") == Shard(1, 2)
    for bad in ("2/2", "1", "-1/2", "a/b", "0/0"):
        with pytest.raises(InputError, match="--shard: expected I/N"):
            Shard.parse(bad)


def test_shard_from_torchrun_environment(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert Shard.parse("env") == Shard(3, 4)
    monkeypatch.delenv("RANK")
    with pytest.raises(InputError, match="found 'None/4'"):
        Shard.parse("env")


def test_commit_refuses_incomplete_shards_then_publishes_what_one_process_would(tmp_path):
    batch = _batch(np.random.default_rng(1).permutation(np.arange(0, 3000, 3)))
    order = np.argsort(batch.pin_ids)

    def stage(i, n=2):
        rows = order[Shard(i, n).rows(len(order), align=64)]
        sub = EmbeddingBatch(batch.pin_ids[rows], {k: v[rows] for k, v in batch.vectors.items()},
                             {"text": batch.present["text"][rows]})
        return stage_shard(tmp_path, "emb", sub, Shard(i, n), total_rows=len(order), source=SOURCE, as_of_day=7)

    with pytest.raises(InputError, match="none"):
        commit_shards(tmp_path, "emb")
    first = stage(0)
    build = embeddings_dir(tmp_path, "emb") / STAGING / first["key"]
    (build / ".tmp-shard-00001-of-00002-99").mkdir()
    with pytest.raises(InputError, match=r"shard 1/2: expected complete .*, found half-written"):
        commit_shards(tmp_path, "emb")
    second = stage(1)
    assert second["key"] == first["key"] and first["rows"] + second["rows"] == len(order)
    part = build / "shard-00001-of-00002" / second["parts"][0]["file"]
    good = part.read_bytes()
    part.write_bytes(good[: len(good) // 2])
    with pytest.raises(InputError, match="sha256: expected"):
        commit_shards(tmp_path, "emb")
    part.unlink()
    with pytest.raises(InputError, match="file: expected present, found missing"):
        commit_shards(tmp_path, "emb")
    assert versions(tmp_path, "emb") == []                          # nothing published by a refused commit
    part.write_bytes(good)
    stage(0, n=3)                                                   # another build: the commit must be told which
    with pytest.raises(InputError, match="--commit: expected one build"):
        commit_shards(tmp_path, "emb")
    manifest = commit_shards(tmp_path, "emb", first["key"])
    assert manifest["version"] == "v0001" and not build.exists()
    publish(tmp_path, "one", batch, source=SOURCE, as_of_day=7)
    _same_content(open_embeddings(tmp_path, "emb"), open_embeddings(tmp_path, "one"))


def test_two_shard_processes_publish_what_one_process_does(tiny_workdir, tiny_world, tiny_pinclip_run, capsys):
    common = ["publish", "--workdir", str(tiny_workdir), "--source", "run", "--run", tiny_pinclip_run,
              "--as-of-day", "1", "--quiet"]
    assert cli.main([*common, "--name", "whole"]) == 0
    capsys.readouterr()
    staged = []
    for i in (1, 0):                                                # any order
        assert cli.main([*common, "--name", "split", "--shard", f"{i}/2"]) == 0
        staged.append(json.loads(capsys.readouterr().out))
    assert staged[0]["key"] == staged[1]["key"] and staged[0]["rows"] > 0 and staged[1]["rows"] > 0
    assert versions(tiny_workdir, "split") == []                    # staged, not published
    assert cli.main(["publish", "--workdir", str(tiny_workdir), "--name", "split", "--commit", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    created = tiny_world.table("pins")["created_day"].to_numpy()
    assert out["version"] == "v0001" and out["rows"] == int((created < 1).sum())
    _same_content(open_embeddings(tiny_workdir, "split"), open_embeddings(tiny_workdir, "whole"))


@pytest.mark.parametrize("args, message", [
    (["--source", "parquet", "--vectors", "v.parquet", "--name", "x", "--shard", "0/2"], "--shard: expected --source run"),
    (["--source", "run", "--run", "r", "--pins", "new.parquet", "--shard", "0/2"], "found --source run --pins"),
    (["--source", "run", "--run", "r", "--since-day", "3", "--shard", "0/2"], "found --since-day 3"),
    (["--commit", "--shard", "0/2"], "--commit: expected no --shard"),
])
def test_shard_refused_where_it_does_not_apply(tmp_path, capsys, args, message):
    assert cli.main(["publish", "--workdir", str(tmp_path), "--quiet", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
