"""Pretrained towers shipped with pinclip: exported from a pretrain run, and started from by name."""

from __future__ import annotations

import json

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
