"""Tower pretraining on annotation labels: the text tower learns, and PinCLIP starts from it."""

import json

import numpy as np
import pytest
import torch

from pinclip import cli as pinclip_cli
from pinclip.training.pretrain import PretrainConfig
from pinclip.training.train import Trainer, TrainConfig


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


def _interrupt_after_step(monkeypatch, pretrain_mod, stop_step):
    save = pretrain_mod._save_checkpoint

    def save_then_stop(out_dir, cfg, step, *rest):
        save(out_dir, cfg, step, *rest)
        if step == stop_step:
            raise KeyboardInterrupt

    monkeypatch.setattr(pretrain_mod, "_save_checkpoint", save_then_stop)
    return lambda: monkeypatch.setattr(pretrain_mod, "_save_checkpoint", save)


@pytest.mark.parametrize("tower", ["image", "text"])
def test_interrupted_pretraining_resumes(tiny_workdir, monkeypatch, tower):
    """The image tower resumes to exactly the uninterrupted result. The text tower resumes with the
    tokenizer its checkpoint learned: HF tokenizers' WordPiece training is not deterministic
    (huggingface/tokenizers#1794), so a retrained one would renumber the tokens."""
    from pinclip.training import pretrain as pretrain_mod

    W = str(tiny_workdir)
    cfg = dict(workdir=W, tower=tower, steps=6, batch_size=16, checkpoint_every=2, eval_pins=50, vocab_size=2000)
    out = tiny_workdir / "pinclip" / "pretrain" / f"{tower}_cut"
    restore = _interrupt_after_step(monkeypatch, pretrain_mod, 4)
    with pytest.raises(KeyboardInterrupt):
        pretrain_mod.pretrain(PretrainConfig(run=f"{tower}_cut", **cfg), progress=False)
    assert torch.load(out / pretrain_mod.CHECKPOINT, weights_only=True)["step"] == 4
    assert not (out / "report.json").exists()
    tokenizer = (out / "tokenizer.json").read_bytes() if tower == "text" else None
    restore()
    monkeypatch.setattr(pretrain_mod, "train_tokenizer", lambda *a: pytest.fail("tokenizer retrained on resume"))
    steps, schedule = [], pretrain_mod._schedule
    monkeypatch.setattr(pretrain_mod, "_schedule", lambda c, step: steps.append(step) or schedule(c, step))
    resumed = pretrain_mod.pretrain(PretrainConfig(run=f"{tower}_cut", **cfg), progress=False)
    assert steps == [4, 5]
    monkeypatch.setattr(pretrain_mod, "_schedule", schedule)
    assert not (out / pretrain_mod.CHECKPOINT).exists()   # a finished run keeps only its tower
    if tower == "text":
        assert (out / "tokenizer.json").read_bytes() == tokenizer and np.isfinite(resumed["final_loss"])
        return
    whole = pretrain_mod.pretrain(PretrainConfig(run="image_whole", **cfg), progress=False)
    assert resumed["mAP"] == whole["mAP"] and resumed["final_loss"] == whole["final_loss"]
    a = torch.load(tiny_workdir / "pinclip" / "pretrain" / "image_whole" / "image_tower.pt", weights_only=True)
    b = torch.load(out / "image_tower.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_pretraining_checkpoint_of_another_config_is_not_resumed(tiny_workdir, capsys):
    from pinclip.training import pretrain as pretrain_mod

    W = str(tiny_workdir)
    out = tiny_workdir / "pinclip" / "pretrain" / "image_other"
    out.mkdir(parents=True)
    torch.save({"config": "{}", "step": 2}, out / pretrain_mod.CHECKPOINT)
    report = pretrain_mod.pretrain(PretrainConfig(workdir=W, run="image_other", steps=2, batch_size=8, eval_pins=20),
                                   progress=False)
    assert "written under another config; starting over" in capsys.readouterr().err
    assert report["config"]["steps"] == 2


def test_unreadable_pretraining_checkpoint_is_a_one_line_error(tiny_workdir):
    from pinclip.training import pretrain as pretrain_mod

    out = tiny_workdir / "pinclip" / "pretrain" / "image_torn"
    out.mkdir(parents=True)
    (out / pretrain_mod.CHECKPOINT).write_bytes(b"PK\x03\x04 torn off mid-write")
    with pytest.raises(ValueError, match=r"image_torn/checkpoint.pt: not a readable checkpoint \(\w+\); delete it"):
        pretrain_mod.pretrain(PretrainConfig(workdir=str(tiny_workdir), run="image_torn", steps=2, batch_size=8,
                                             eval_pins=20), progress=False)
