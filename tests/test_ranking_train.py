"""Ranking training: resume == uninterrupted, 2-process gloo run, CUDA plan, scoring API, CLI errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from pinlift.core.vocabulary import PINWORLD
from ranking import distributed, train
from ranking.features import Vocabs, dense_width
from ranking.metrics import interval, load_resamples
from ranking.model import ModelConfig, build_model
from ranking.score import Scorer
from ranking.vocab import Vocab

SMALL = train.TrainConfig(surfaces=["ads"], epochs=2, batch_size=512, embedding_dim=8, dense_hidden=[32],
                          over_hidden=[32], dcn_low_rank=8)


def _trainer(workdir, run, restart=True, **kw):
    return train.Trainer(train.TrainConfig.model_validate({**SMALL.model_dump(), **kw}), workdir, run, restart=restart)


def test_resume_equals_uninterrupted(tiny_workdir):
    never_stop = dict(patience=99)
    straight = _trainer(tiny_workdir, "straight", **never_stop).fit()
    first = _trainer(tiny_workdir, "resumed", epochs=1, **never_stop).fit()
    resumed = _trainer(tiny_workdir, "resumed", restart=False, epochs=2, **never_stop).fit()
    assert [c["epochs"] for c in first["checks"]][-1] == 1 and len(first["checks"]) == 4
    assert [c["checkpoint"] for c in resumed["checks"]] == [c["checkpoint"] for c in straight["checks"]]
    np.testing.assert_allclose([c["validation_loss"] for c in resumed["checks"]],
                               [c["validation_loss"] for c in straight["checks"]], rtol=1e-5)
    runs = tiny_workdir / "ranking" / "runs"
    a = np.load(runs / "straight" / "eval_predictions.npy")
    b = np.load(runs / "resumed" / "eval_predictions.npy")
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    m = straight["metrics"]["ads/click"]["all"]
    assert 0.5 < m["auc"] < 1 and m["n"] == straight["eval_examples"]
    # each slice with its rows, positives, users and the AUC's interval from resampled users, seeded
    assert m["auc_ci"][0] < m["auc"] < m["auc_ci"][1] and 0 < m["positives"] < m["n"] and 0 < m["users"] < m["n"]
    a, b = load_resamples(runs / "straight"), load_resamples(runs / "resumed")
    assert a.keys() == b.keys() and ("ads/click", "all") in a
    for k in a:
        assert a[k][1] == b[k][1]   # the same rows
        np.testing.assert_allclose(a[k][0], b[k][0], atol=1e-4)
    np.testing.assert_allclose(interval(a["ads/click", "all"][0]), m["auc_ci"])
    saved = json.loads((runs / "straight" / "config.json").read_text())
    assert saved["surfaces"] == ["ads"] and saved["cutoff_day"] == 26
    # only the latest and the best checks are kept on disk
    kept = {d.name for d in (runs / "straight" / "checkpoints").iterdir() if d.is_dir()}
    assert kept == {straight["checks"][-1]["checkpoint"], straight["best_check"]["checkpoint"]}


def test_early_stopping_evaluates_the_best_check(tiny_workdir, capsys):
    """Training that overfits stops ``patience`` checks after the best one, and the evaluated (and served)
    model is that best check, not the last."""
    trainer = _trainer(tiny_workdir, "early", epochs=6, patience=1, lr_dense=0.03, lr_sparse=0.5)
    report = trainer.fit()
    losses = [c["validation_loss"] for c in report["checks"]]
    best = int(np.argmin(losses))
    assert report["best_check"]["checkpoint"] == report["checks"][best]["checkpoint"]
    assert report["stopped_early"] and len(losses) - 1 - best == 1 and len(losses) < 6 * 4
    assert trainer.validation_loss() == pytest.approx(losses[best], rel=1e-6)
    assert report["validation_examples"] > 0 and "after" in train.format_report(report)
    # one validation day of the tiny world's ads: too small to pick a check on, and said so
    assert report["validation_warning"].startswith("ranking: warning: the validation days hold 216 rows and ")
    assert capsys.readouterr().err.count(report["validation_warning"] + "\n") == 1
    printed = train.format_report(report)
    assert "on 216 rows" in printed and "too few to pick on" in printed
    assert "ads/click         all" in printed and f"{report['metrics']['ads/click']['all']['auc_ci'][0]:.4f}, " in printed


def test_two_process_gloo_run(tiny_workdir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
           "-m", "ranking.train", "--workdir", str(tiny_workdir), "--epochs", "1",
           "--batch-size", "1024", "--run-name", "ddp2", "--restart"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads((tiny_workdir / "ranking/runs/ddp2/eval.json").read_text())
    assert report["metrics"]["homefeed/repin"]["all"]["auc"] > 0.6
    assert "ads/click" in out.stdout and report["eval_examples"] == sum(
        m["all"]["n"] for k, m in report["metrics"].items() if k.endswith("click"))


def test_cuda_topology_is_planned_without_a_gpu():
    model = build_model({"user": 1000, "pin": 5000, "board": 3000, "advertiser": 50}, dense_width(PINWORLD, True),
                        ModelConfig(), len(PINWORLD.tasks))
    plan = distributed.plan_for(model, world_size=2, compute_device="cuda")
    shards = plan.plan["sparse_arch.embedding_bag_collection"]
    assert set(shards) == {"t_user", "t_pin", "t_board", "t_advertiser"}
    # small tables may be replicated (data_parallel, no spec); sharded ones are placed on CUDA ranks
    sharded = [p for p in shards.values() if p.sharding_spec is not None]
    assert sharded and all(p.compute_kernel for p in shards.values())
    placements = {str(s.placement) for p in sharded for s in p.sharding_spec.shards}
    assert all("cuda" in p for p in placements)


def test_scorer_scores_slates(tiny_workdir, tiny_world):
    _trainer(tiny_workdir, "for_scoring", epochs=1, surfaces=["homefeed", "related", "ads"]).fit()
    scorer = Scorer(tiny_workdir, "for_scoring")
    pins = tiny_world.table("pins")
    organic = pins.filter(~pins["is_ad"])["pin_id"].to_numpy()[:40]
    slates = organic.reshape(4, 10).copy()
    slates[3, 5:] = -1
    s = scorer.score([1, 2, 3, 4], "homefeed", slates, day=35)
    assert s.shape == (4, 10) and np.isnan(s[3, 5:]).all() and np.isfinite(s[:3]).all()
    assert ((s[:3] > 0) & (s[:3] < 1)).all()
    np.testing.assert_allclose(s[:3], scorer.score([1, 2, 3], "homefeed", slates[:3], day=35), rtol=1e-5)
    rel = scorer.score([1, 2], "related", slates[:2], day=35, query_pin_ids=[organic[0], organic[1]])
    assert rel.shape == (2, 10) and not np.allclose(rel, s[:2])
    with pytest.raises(ValueError, match="surface 'search': expected one of homefeed, related, ads"):
        scorer.score([1], "search", slates[:1], day=35)
    # a run trained before the co-engagement features has a narrower dense input: refused by name
    old = tiny_workdir / "ranking" / "runs" / "before_coengagement"
    old.mkdir(parents=True)
    cfg = json.loads((tiny_workdir / "ranking" / "runs" / "for_scoring" / "config.json").read_text())
    del cfg["coengagement_dim"]
    (old / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="'before_coengagement' was trained without the co-engagement features"):
        Scorer(tiny_workdir, "before_coengagement")


def test_unknown_row_is_trained(tiny_workdir):
    """A hashed share of the ids seen in training maps to the unknown row in training and serving alike, so
    that row, where every id first seen after training is served, is trained like any other."""
    vocabs = Vocabs(*(Vocab(np.arange(1, 20_001)) for _ in range(4)))
    held = vocabs.holding_out(0.1)
    for full, kept in zip(vocabs.tables(), held.tables()):
        assert 0.09 < 1 - (len(kept) - 1) / (len(full) - 1) < 0.11
        out = np.setdiff1d(full.ids, kept.ids)
        assert (kept.rows(out) == 0).all() and (kept.rows(kept.ids) > 0).all()
    assert not np.array_equal(held.user.ids, held.pin.ids)   # each table its own hash
    assert vocabs.holding_out(0.0) is vocabs
    _trainer(tiny_workdir, "unknown_row", epochs=1, surfaces=["homefeed"]).fit()
    scorer = Scorer(tiny_workdir, "unknown_row")
    state = scorer.model.state_dict()
    for table in ("t_pin", "t_user"):
        w = next(v for k, v in state.items() if k.endswith(f"{table}.weight"))
        w = w.local_shards()[0].tensor if hasattr(w, "local_shards") else w
        norms = w.norm(dim=1)
        assert norms[0] > 0.3 * norms[1:].median(), table   # untrained, it keeps its initial ~1/sqrt(rows) scale


def test_cli_bad_input(tiny_workdir, capsys):
    assert train.main(["--workdir", str(tiny_workdir), "--embeddings", "nope@v0009", "--surface", "ads"]) == 2
    assert "no version 'v0009' of 'nope'" in capsys.readouterr().err
    assert train.main(["--workdir", str(tiny_workdir), "--surface", "search"]) == 2
    assert "surface 'search': expected one of homefeed, related, ads" in capsys.readouterr().err
    # a run name of its own: the default one may hold another test's run, which would refuse to resume first
    bad = ["--run-name", "bad_input"]
    assert train.main(["--workdir", str(tiny_workdir), *bad, "--surface", "ads", "--cutoff-day", "500"]) == 2
    assert "cutoff_day: expected a day inside the log window (1 to 39), found 500" in capsys.readouterr().err
    assert train.main(["--workdir", str(tiny_workdir), *bad, "--surface", "ads", "--validation-days", "30"]) == 2
    err = capsys.readouterr().err
    assert "validation_days 30: expected impressions before day -4" in err and err.count("\n") == 1


def test_help_lists_every_key_with_type_and_default(capsys):
    with pytest.raises(SystemExit) as exc:
        train.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    keys = out.split("keys (key=value; type, default):\n")[1]
    rows = {line.split()[0]: line.split()[1:3] for line in keys.splitlines()}
    assert set(rows) == set(train.TrainConfig.model_fields) >= {"lr_dense", "lr_sparse", "embedding_dim", "dcn_layers"}
    assert rows["lr_dense"] == ["float", "0.002"] and rows["lr_sparse"] == ["float", "0.05"]
    assert rows["embedding_dim"] == ["int", "16"] and rows["dense_hidden"] == ["list[int]", "[128]"]
    assert rows["epochs"] == ["int", "2"] and rows["cutoff_day"] == ["int", "|"]   # "int | None  None"
    # and a --key option per setting, the model's shape included
    assert all(f"--{k} " in out for k in ("lr-dense", "lr-sparse", "embedding-dim", "over-hidden", "validation-days"))


def test_resume_only_with_the_settings_it_started_with(tiny_workdir, tmp_path, capsys):
    small = tmp_path / "small.yaml"
    small.write_text("surfaces: [ads]\nchecks_per_epoch: 1\nbatch_size: 4096\nembedding_dim: 4\ndense_hidden: [8]\n"
                     "over_hidden: [8]\ndcn_low_rank: 4\n")
    cmd = [str(small), "--workdir", str(tiny_workdir), "--run-name", "cli_resume", "--epochs", "1"]
    run = tiny_workdir / "ranking" / "runs" / "cli_resume"
    assert train.main(cmd) == 0
    saved = json.loads((run / "run.json").read_text())
    assert saved["config"]["embedding_dim"] == 4 and saved["config"]["cutoff_day"] == 26
    assert json.loads((run / "config.json").read_text())["model"]["dense_hidden"] == [8]   # as the scorer reads it
    capsys.readouterr()
    # a defining key changed (a learning rate, the model's shape): refused in one line naming it, nothing written
    assert train.main([*cmd, "lr_dense=0.01"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ranking: run 'cli_resume' was started with other settings (lr_dense 0.002 -> 0.01); "
                          "pass --restart") and err.count("\n") == 1
    assert train.main([*cmd, "--embedding-dim", "8"]) == 2
    assert "(embedding_dim 4 -> 8)" in capsys.readouterr().err
    assert json.loads((run / "run.json").read_text()) == saved
    # more epochs only extend the run: it resumes after the first epoch's check
    assert train.main([*cmd, "--epochs", "2"]) == 0
    assert "ranking: resumed cli_resume at check-001" in capsys.readouterr().err
    report = json.loads((run / "eval.json").read_text())
    assert [c["checkpoint"] for c in report["checks"]] == ["check-001", "check-002"]
    # --restart starts over with the new settings
    assert train.main([*cmd, "lr_dense=0.01", "--restart"]) == 0
    assert "resumed" not in capsys.readouterr().err
    saved = json.loads((run / "run.json").read_text())
    assert saved["config"]["lr_dense"] == 0.01 and saved["config"]["epochs"] == 1
    assert [c["checkpoint"] for c in json.loads((run / "eval.json").read_text())["checks"]] == ["check-001"]


@pytest.mark.parametrize("name", ["../outside", "a/b"])
def test_run_name_is_a_name_not_a_path(tiny_workdir, capsys, name):
    assert train.main(["--workdir", str(tiny_workdir), "--surface", "ads", "--run-name", name]) == 2
    assert capsys.readouterr().err == (f"ranking: --run-name: expected a name of letters, digits and -_. (not a path), "
                                       f"found {name!r}\n")
    assert not (tiny_workdir / "ranking" / "outside").exists()
    assert not (tiny_workdir / "ranking" / "runs" / "a").exists()


def test_bad_settings_say_where(tiny_workdir, tmp_path, capsys):
    w = ["--workdir", str(tiny_workdir)]
    assert train.main([*w, "lr_dense=abc"]) == 2
    assert capsys.readouterr().err == "ranking: command line: lr_dense: expected a valid number, found 'abc'\n"
    assert train.main([*w, "--lr-sparse", "-1"]) == 2
    assert capsys.readouterr().err == "ranking: command line: lr_sparse: expected greater than 0, found -1\n"
    assert train.main([*w, "lr=0.1"]) == 2
    assert capsys.readouterr().err == "ranking: command line: lr: expected a known field, found unknown field 'lr'\n"
    assert train.main([*w, "shuffle_embeddings=true"]) == 2
    assert "command line: shuffle_embeddings: expected embeddings to shuffle" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 1\n# the model's shape\nembedding_dim: 8\ndense_hidden: [32, -1]\n")
    assert train.main([str(bad), *w]) == 2
    assert capsys.readouterr().err == f"ranking: {bad}:4: dense_hidden: expected layer widths > 0, found [32, -1]\n"
    bad.write_text("epochs: 1\nlr_dense: fast\n")
    assert train.main([str(bad), *w]) == 2
    assert capsys.readouterr().err == f"ranking: {bad}:2: lr_dense: expected a valid number, found 'fast'\n"
    # an override of the file's key is the command line's error
    assert train.main([str(bad), *w, "lr_dense=abc"]) == 2
    assert capsys.readouterr().err.startswith("ranking: command line: lr_dense:")
