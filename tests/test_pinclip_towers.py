"""Pretrained towers shipped with pinclip: exported from a pretrain run, and started from by name."""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import load_file

from pinclip import cli
from pinclip.loading import TOWERS_DIR, read_checkpoint, read_shipped_tower, shipped_towers
from pinclip.models.factory import create_model
from pinclip.settings import TrainConfig
from pinclip.training.train import Trainer


def test_export_round_trips_in_half_precision(loop_workdir, tmp_path, capsys):
    out = tmp_path / "mine.safetensors"
    assert cli.main(["export-tower", "--workdir", str(loop_workdir), "--run", "image", "--out", str(out), "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["tower"] == str(out)
    original = read_checkpoint(loop_workdir / "pinclip/pretrain/image/image_tower.pt")
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["tower"] == "image" and report["config"]["steps"] == 20
    back = load_file(out)
    assert set(back) == set(original)
    for k, v in original.items():
        torch.testing.assert_close(back[k].float(), v.half().float())


def test_the_shipped_image_tower_fits_the_tiny_model_and_training_starts_from_it(tiny_workdir):
    assert "image_pinworld" in shipped_towers()
    made = json.loads((TOWERS_DIR / "image_pinworld.json").read_text())
    assert made["tower"] == "image" and made["mAP"] > 5 * made["mAP_chance"]
    state = read_shipped_tower("image_pinworld")
    create_model("tiny").image.load_state_dict(state)        # every key and shape of the tiny image tower
    trainer = Trainer(TrainConfig(workdir=str(tiny_workdir), run="from_shipped", steps=0, vocab_size=2000,
                                  pretrained_image="image_pinworld"), progress=False, restart=True)
    for k, v in trainer.model.image.state_dict().items():
        torch.testing.assert_close(v, state[k])


def test_a_whole_model_exported_and_started_from(loop_workdir, tmp_path, monkeypatch, capsys):
    """`pinclip export-model` writes a trained run's weights, tokenizer and the losses' scales; `pretrained=NAME`
    starts a run of another workspace from exactly them (the annotation head, one world's labels, left out)."""
    monkeypatch.setattr("pinclip.loading.TOWERS_DIR", tmp_path)
    out = tmp_path / "mine.safetensors"
    assert cli.main(["export-model", "--workdir", str(loop_workdir), "--run", "tiny", "--out", str(out), "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == str(out)
    made = json.loads(out.with_suffix(".json").read_text())
    assert made["kind"] == "model" and made["steps"] == 20 and made["world"]["preset"] == "tiny"
    assert shipped_towers("model") == ["mine"] and "mine" not in shipped_towers()
    latest = (loop_workdir / "pinclip/runs/tiny/checkpoints/LATEST").read_text().strip()
    trained = read_checkpoint(loop_workdir / "pinclip/runs/tiny/checkpoints" / latest)["model"]
    back = load_file(out)
    assert back and set(back) == {k for k in trained if k.startswith(("model.", "loss."))}
    trainer = Trainer(TrainConfig(workdir=str(loop_workdir), run="from_model", steps=0, pretrained="mine",
                                  trainable_image_blocks=2), progress=False, restart=True)
    started = trainer.step_module.state_dict()
    for k, v in back.items():
        torch.testing.assert_close(started[k], v.float() if v.is_floating_point() else v)
    assert trainer.tokenizer_path.read_text() == (loop_workdir / "pinclip/runs/tiny/tokenizer.json").read_text()
    for bad, says in ((dict(pretrained="nope"), "expected a PinCLIP model shipped in pinclip/towers/ (mine), found 'nope'"),
                      (dict(pretrained="mine", pretrained_text="text"), "expected no pretrained_text beside it")):
        with pytest.raises(ValueError, match=re.escape(says)):
            TrainConfig(workdir=str(loop_workdir), **bad)
