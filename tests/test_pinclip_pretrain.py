"""Tower pretraining on annotation labels: the text tower learns, and PinCLIP starts from it."""

import json

import pytest
import torch

from pinclip import cli as pinclip_cli
from pinclip.pretrain import PretrainConfig
from pinclip.train import Trainer, TrainConfig


def test_text_pretraining_learns_and_pinclip_starts_from_it(tiny_workdir):
    W = str(tiny_workdir)
    assert pinclip_cli.main(["pretrain-text", "--workdir", W, "--steps", "80", "--batch-size", "64",
                             "--vocab-size", "2000", "--run", "text_test", "--quiet"]) == 0
    out = tiny_workdir / "pinclip" / "pretrain" / "text_test"
    report = json.loads((out / "report.json").read_text())
    # texts name their objects and attributes: the labels are learnable from them, unlike chance
    assert report["tower"] == "text" and report["mAP"] > 1.5 * report["mAP_chance"]
    trainer = Trainer(TrainConfig(workdir=W, run="from_text", steps=1, batch_size=16, vocab_size=2000,
                                  pretrained_text="text_test"), progress=False)
    saved = torch.load(out / "text_tower.pt", weights_only=True)
    assert all(torch.equal(v, saved[k]) for k, v in trainer.model.text.state_dict().items())
    assert (trainer.run_dir / "tokenizer.json").read_bytes() == (out / "tokenizer.json").read_bytes()
    with pytest.raises(FileNotFoundError, match=r"pretrained_text: .* not found \(run `pinclip pretrain-text`\)"):
        Trainer(TrainConfig(workdir=W, run="no_text", vocab_size=2000, pretrained_text="absent"), progress=False)


def test_pretrain_config_rejects_unknown_tower():
    with pytest.raises(ValueError, match="tower 'audio': expected one of image, text"):
        PretrainConfig(tower="audio")
