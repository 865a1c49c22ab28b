"""Serving a ranking run: the scorer loads safetensors checked by sha256 (never the pickled DCP checkpoints),
computes the trainer's features and scores, and serves only the vectors the run was trained on (or an
incremental version of them from the same source)."""

from __future__ import annotations

import json
import os
import pickle
import shutil

import numpy as np
import pytest

from pinclip.embeddings import open_embeddings
from pinclip.publish import EmbeddingBatch, publish
from pinclip.vector_source import publish_vectors
from pinlift.core.errors import InputError
from pinworld.world import World
from ranking.features import check_same_space, embedding_record, make_batch
from ranking.score import Scorer
from ranking.train import TrainConfig, Trainer

SMALL = dict(epochs=1, batch_size=512, checks_per_epoch=1)


@pytest.fixture(scope="module")
def served_run(team_workdir) -> str:
    """A run on the team's own vectors, trained once."""
    Trainer(TrainConfig(embeddings="teamvec@v0001", **SMALL), team_workdir, "served_vec", quiet=True).fit()
    return "served_vec"


def test_scorer_features_and_scores_equal_the_trainers(team_workdir, served_run):
    world = World(team_workdir)
    scorer = Scorer(team_workdir, served_run, world=world)
    trainer = Trainer(TrainConfig(embeddings="teamvec@v0001", **SMALL), team_workdir, served_run, quiet=True)
    trainer.load_checkpoint()
    trainer._load(trainer.progress["best"])
    rows = np.arange(0, len(trainer.eval_ex), 7)
    ex = trainer.eval_ex
    imp = world.impressions(since=trainer.cfg.cutoff_day)[rows]
    served = scorer.source.examples(imp)
    mine = make_batch(served, np.arange(len(rows)), scorer.vocabs, scorer.content)
    theirs = trainer.batch(ex, rows)
    assert np.array_equal(mine.dense_features.numpy(), theirs.dense_features.numpy())
    assert np.array_equal(mine.sparse_features.values().numpy(), theirs.sparse_features.values().numpy())
    # the scorer's public API, at position 0, scores what the trainer predicts for the same (user, pin, day)
    top = np.flatnonzero(ex.dense[:, 0] == 0)[:50]
    predicted = trainer.predict(ex)[top, 0]
    for i, row in enumerate(top):
        got = scorer.score([ex.user_id[row]], "discover", [[ex.pin_id[row]]], int(ex.day[row]))
        assert got[0, 0] == pytest.approx(predicted[i], abs=1e-6)


def test_a_planted_pickle_does_not_run_when_served(team_workdir, served_run, tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    best = json.loads((team_workdir / "ranking/runs" / served_run / "config.json").read_text())["served"]["check"]
    for name in (".metadata", "__0_0.distcp"):
        (team_workdir / "ranking/runs" / served_run / "checkpoints" / best / name).write_bytes(pickle.dumps(Payload()))
    Scorer(team_workdir, served_run).score([0], "discover", [[1, 2]], 30)
    assert not marker.exists()


def test_served_weights_are_checked_before_loading(team_workdir, served_run):
    run = team_workdir / "ranking/runs/tampered"
    shutil.copytree(team_workdir / "ranking/runs" / served_run, run)
    with open(run / "weights.safetensors", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\0\0\0\1")
    with pytest.raises(InputError, match=r"weights.safetensors: sha256: expected [0-9a-f]{64} \(as config.json "
                                         r"records\), found [0-9a-f]{64}$"):
        Scorer(team_workdir, "tampered")


def test_other_vectors_are_refused(team_workdir, served_run, tmp_path):
    publish_vectors(team_workdir, team_workdir / "vectors.parquet", "teamvec_copy")   # same file, another name
    with pytest.raises(InputError, match="embeddings: expected teamvec@v0001 or an incremental version"):
        Scorer(team_workdir, served_run, embeddings="teamvec_copy")
    ids = Trainer(TrainConfig(empty_content=True, **SMALL), team_workdir, "served_ids", quiet=True)
    ids.fit()
    with pytest.raises(InputError, match="embeddings: expected none: run 'served_ids' is IDs only"):
        Scorer(team_workdir, "served_ids").set_embeddings(open_embeddings(team_workdir, "teamvec"))


def test_an_incremental_version_of_the_same_source_is_the_same_space(team_workdir, tmp_path):
    rng = np.random.default_rng(0)
    batch = lambda ids: EmbeddingBatch(ids, {"fusion": rng.normal(size=(len(ids), 64))})  # noqa: E731
    source = {"kind": "team", "model": "a"}
    W, elsewhere = tmp_path / "w", tmp_path / "elsewhere"
    publish(W, "grow", batch(np.arange(10)), source=source)
    trained = embedding_record(open_embeddings(W, "grow@v0001"))
    publish(W, "grow", batch(np.arange(10, 12)), source={**source, "pins": {"file": "new.parquet"}}, incremental=True)
    publish(W, "grow", batch(np.arange(12, 14)), source=source, incremental=True)
    check_same_space(trained, open_embeddings(W, "grow@v0003"), W)           # v0003 -> v0002 -> v0001
    publish(elsewhere, "grow", batch(np.arange(14)), source={**source, "lag_days": 1})
    check_same_space(trained, open_embeddings(elsewhere, "grow"), W)          # the simulator's daily copy
    publish(W, "grow", batch(np.arange(20)), source=source)                   # v0004: a new version, not a child
    publish(W, "grow", batch(np.arange(20, 22)), source={"kind": "team", "model": "b"}, incremental=True)
    for version in ("v0004", "v0005"):
        with pytest.raises(InputError, match=f"found grow@{version}"):
            check_same_space(trained, open_embeddings(W, f"grow@{version}"), W)
    publish(elsewhere, "grow", batch(np.arange(14, 16)), source={"kind": "team", "model": "b"}, incremental=True)
    with pytest.raises(InputError):
        check_same_space(trained, open_embeddings(elsewhere, "grow"), W)
