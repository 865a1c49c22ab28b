"""Training curves: every trainer's scalars read back from its TensorBoard event files, curves.png, and the
under-training rule that pinlift.summary flags."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from pinlift.core.curves import CURVES, TRAIN_LOSS, Curves, read_scalars, training_check
from pinlift.readouts import summary

PNG = b"\x89PNG\r\n\x1a\n"


def _steps(scalars, tag):
    return [s for s, _ in scalars[tag]]


def test_pinclip_training_curves(tiny_workdir, tiny_pinclip_run):
    run = tiny_workdir / "pinclip" / "runs" / tiny_pinclip_run
    scalars = read_scalars(run)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert _steps(scalars, TRAIN_LOSS) == [m["step"] for m in metrics] == list(range(1, 9))
    np.testing.assert_allclose([v for _, v in scalars[TRAIN_LOSS]], [m["loss"] for m in metrics], rtol=1e-6)
    np.testing.assert_allclose([v for _, v in scalars["lr/model"]], [m["lr"] for m in metrics], rtol=1e-6)
    for tag in ("loss/image_descriptive/64", "loss/pin_pin/128", "temperature/image_descriptive/64",
                "bias/image_keyword/256", "lr/text", "lr/loss"):
        assert _steps(scalars, tag) == list(range(1, 9)), tag
    assert scalars["temperature/image_descriptive/64"][0][1] == pytest.approx(10, rel=0.1)   # starts at t = 10
    assert (run / CURVES).read_bytes().startswith(PNG)


def test_pretraining_curves(tiny_workdir):
    from pinclip.settings import PretrainConfig
    from pinclip.training.pretrain import pretrain

    report = pretrain(PretrainConfig(workdir=str(tiny_workdir), tower="image", run="curves", steps=4, batch_size=8,
                                     eval_pins=20), progress=False)
    run = tiny_workdir / "pinclip" / "pretrain" / "curves"
    scalars = read_scalars(run)
    assert _steps(scalars, TRAIN_LOSS) == _steps(scalars, "lr/model") == [1, 2, 3, 4]
    assert scalars["eval/mAP"] == [(4, pytest.approx(report["mAP"], rel=1e-6))]
    assert (run / CURVES).read_bytes().startswith(PNG)


def test_ranking_curves(tiny_workdir):
    from ranking import train

    cfg = train.TrainConfig(surfaces=["ads"], epochs=1, batch_size=1024, embedding_dim=8, dense_hidden=[16],
                            over_hidden=[16], dcn_low_rank=4, patience=99)
    trainer = train.Trainer(cfg, tiny_workdir, "curves", restart=True)
    report = trainer.fit()
    scalars = read_scalars(trainer.run_dir)
    assert _steps(scalars, TRAIN_LOSS) == list(range(1, trainer.steps_done() + 1))
    checks = _steps(scalars, "loss/validation")
    assert len(checks) == len(report["checks"]) == 4 and checks[-1] == trainer.steps_done()
    np.testing.assert_allclose([v for _, v in scalars["loss/validation"]],
                               [c["validation_loss"] for c in report["checks"]], rtol=1e-6)
    auc = report["metrics"]["ads/click"]["all"]["auc"]
    assert scalars["eval_auc/ads/click/all"] == [(checks[-1], pytest.approx(auc))]
    assert (trainer.run_dir / CURVES).read_bytes().startswith(PNG)


def test_a_resumed_run_appends_without_repeating_steps(tmp_path):
    first = Curves(tmp_path)
    for step in range(1, 6):
        first.log(step, {TRAIN_LOSS: 1.0})
    first.close()
    time.sleep(1.1)   # event files are ordered by their names, which start with the second they were opened
    resumed = Curves(tmp_path, start_step=3)   # its checkpoint was at step 3: steps 4 and 5 are done again
    for step in range(4, 8):
        resumed.log(step, {TRAIN_LOSS: 2.0})
    resumed.close()
    assert read_scalars(tmp_path)[TRAIN_LOSS] == [(1, 1.0), (2, 1.0), (3, 1.0), (4, 2.0), (5, 2.0), (6, 2.0), (7, 2.0)]
    assert len(list((tmp_path / "tb").iterdir())) == 2 and (tmp_path / CURVES).is_file()


def test_the_under_training_rule():
    rng = np.random.default_rng(0)
    steps = np.arange(200)
    falling = 2 * np.exp(-steps / 80) + 0.3 + rng.normal(0, 0.01, 200)
    flat = 1.0 + rng.normal(0, 0.02, 200)
    record = training_check(list(falling), 200, 200)
    assert record["still_learning"] and not record["short"] and record["under_trained"]
    assert "still falling" in record["reason"]
    assert not training_check(list(flat), 200, 200)["under_trained"]
    short = training_check(list(flat[:60]), 60, 200)
    assert short["short"] and short["reason"] == "stopped at 60 of 200 steps"
    assert not training_check(list(flat[:150]), 150, 200)["under_trained"]          # past half its steps
    # the motivating run: 30 steps of a recipe warming up for 100, its loss flat
    assert training_check(list(flat[:30]), 30, 30, warmup=100)["reason"] == "stopped inside its 100-step LR warmup"
    assert not training_check([], 0, 0, warmup=100)["under_trained"]      # an untrained baseline (steps=0)
    # ranking: fewer checks than configured is short, unless it stopped early (and then never "still learning")
    assert training_check(list(flat), 6, 8, unit="checks", min_share=1.0)["short"]
    assert not training_check(list(falling), 6, 8, unit="checks", stopped_early=True, min_share=1.0)["under_trained"]


def test_summary_flags_an_under_trained_run(tmp_path, capsys):
    run = tmp_path / "pinclip" / "runs" / "short"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"config": {"steps": 1500, "warmup_steps": 10}}))
    curves = Curves(run)
    for step in range(1, 31):
        curves.log(step, {TRAIN_LOSS: 3.0 - 0.05 * step})
    curves.close()
    [(name, record)] = summary.training_checks(tmp_path)
    assert name == "pinclip/runs/short" and record["short"] and record["still_learning"]
    assert summary.main(["--workdir", str(tmp_path)]) == 0
    assert ("under-trained: pinclip/runs/short: stopped at 30 of 1500 steps; training loss still falling"
            in capsys.readouterr().out)
