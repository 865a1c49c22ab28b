"""Ranking training: resume == uninterrupted, 2-process gloo run, CUDA plan, scoring API, CLI errors."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ranking import distributed, train
from ranking.features import dense_width
from ranking.model import ModelConfig, build_model
from ranking.score import Scorer

SMALL = train.TrainConfig(surfaces=("ads",), epochs=2, batch_size=512, model=ModelConfig(embedding_dim=8, dense_hidden=(32,),
                                                                                         over_hidden=(32,), dcn_low_rank=8))


def _cfg(workdir, **kw):
    return dataclasses.replace(SMALL, workdir=str(workdir), **kw)


def test_resume_equals_uninterrupted(tiny_workdir):
    never_stop = dict(patience=99)
    straight = train.Trainer(_cfg(tiny_workdir, run="straight", **never_stop)).fit(resume=False)
    first = train.Trainer(_cfg(tiny_workdir, run="resumed", epochs=1, **never_stop)).fit(resume=False)
    resumed = train.Trainer(_cfg(tiny_workdir, run="resumed", epochs=2, **never_stop)).fit(resume=True)
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
    saved = json.loads((runs / "straight" / "config.json").read_text())
    assert saved["surfaces"] == ["ads"] and saved["cutoff_day"] == 26
    # only the latest and the best checks are kept on disk
    kept = {d.name for d in (runs / "straight" / "checkpoints").iterdir() if d.is_dir()}
    assert kept == {straight["checks"][-1]["checkpoint"], straight["best_check"]["checkpoint"]}


def test_early_stopping_evaluates_the_best_check(tiny_workdir):
    """Training that overfits stops ``patience`` checks after the best one, and the evaluated (and served)
    model is that best check, not the last."""
    trainer = train.Trainer(_cfg(tiny_workdir, run="early", epochs=6, patience=1, lr_dense=0.03, lr_sparse=0.5))
    report = trainer.fit(resume=False)
    losses = [c["validation_loss"] for c in report["checks"]]
    best = int(np.argmin(losses))
    assert report["best_check"]["checkpoint"] == report["checks"][best]["checkpoint"]
    assert report["stopped_early"] and len(losses) - 1 - best == 1 and len(losses) < 6 * 4
    assert trainer.validation_loss() == pytest.approx(losses[best], rel=1e-6)
    assert report["validation_examples"] > 0 and "after" in train.format_report(report)


def test_two_process_gloo_run(tiny_workdir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
           "-m", "ranking.train", "--workdir", str(tiny_workdir), "--epochs", "1",
           "--batch-size", "1024", "--run-name", "ddp2", "--no-resume"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads((tiny_workdir / "ranking/runs/ddp2/eval.json").read_text())
    assert report["metrics"]["homefeed/repin"]["all"]["auc"] > 0.6
    assert "ads/click" in out.stdout and report["eval_examples"] == sum(
        m["all"]["n"] for k, m in report["metrics"].items() if k.endswith("click"))


def test_cuda_topology_is_planned_without_a_gpu():
    model = build_model({"user": 1000, "pin": 5000, "board": 3000, "advertiser": 50}, dense_width(True),
                        ModelConfig())
    plan = distributed.plan_for(model, world_size=2, compute_device="cuda")
    shards = plan.plan["sparse_arch.embedding_bag_collection"]
    assert set(shards) == {"t_user", "t_pin", "t_board", "t_advertiser"}
    # small tables may be replicated (data_parallel, no spec); sharded ones are placed on CUDA ranks
    sharded = [p for p in shards.values() if p.sharding_spec is not None]
    assert sharded and all(p.compute_kernel for p in shards.values())
    placements = {str(s.placement) for p in sharded for s in p.sharding_spec.shards}
    assert all("cuda" in p for p in placements)


def test_scorer_scores_slates(tiny_workdir, tiny_world):
    train.Trainer(_cfg(tiny_workdir, run="for_scoring", epochs=1, surfaces=("homefeed", "related", "ads"))).fit(resume=False)
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
    with pytest.raises(ValueError, match="unknown surface 'search'"):
        scorer.score([1], "search", slates[:1], day=35)
    # a run trained before the co-engagement features has a narrower dense input: refused by name
    old = tiny_workdir / "ranking" / "runs" / "before_coengagement"
    old.mkdir(parents=True)
    cfg = json.loads((tiny_workdir / "ranking" / "runs" / "for_scoring" / "config.json").read_text())
    del cfg["coengagement_dim"]
    (old / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="'before_coengagement' was trained without the co-engagement features"):
        Scorer(tiny_workdir, "before_coengagement")


def test_cli_bad_input(tiny_workdir, capsys):
    assert train.main(["--workdir", str(tiny_workdir), "--embeddings", "nope@v0009", "--surface", "ads"]) == 2
    assert "no version 'v0009' of 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        train.main(["--workdir", str(tiny_workdir), "--surface", "search"])
    assert exc.value.code == 2
    assert train.main(["--workdir", str(tiny_workdir), "--surface", "ads", "--cutoff-day", "500"]) == 2
    assert "expected impressions before and after day 500" in capsys.readouterr().err
    assert train.main(["--workdir", str(tiny_workdir), "--surface", "ads", "--validation-days", "30"]) == 2
    err = capsys.readouterr().err
    assert "validation_days 30: expected impressions before day -4" in err and err.count("\n") == 1
