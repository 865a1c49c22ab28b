"""Tower pretraining on annotation labels: the text tower learns, and PinCLIP starts from it."""

import json

import numpy as np
import pytest
import torch

from pinclip import cli as pinclip_cli
from pinclip.settings import PretrainConfig, TrainConfig, load_recipe
from pinclip.training.train import Trainer


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


def test_pretrain_config_errors_name_the_file_line_and_field(tmp_path, capsys):
    with pytest.raises(ValueError, match="^command line: tower: expected one of 'image' or 'text', found 'audio'"):
        load_recipe(PretrainConfig, "pretrain", ["tower=audio"])
    recipe = tmp_path / "pre.yaml"
    recipe.write_text("steps: 5\nbatch_size: 0\n")
    assert pinclip_cli.main(["pretrain-image", str(recipe)]) == 2
    assert capsys.readouterr().err == (f"pinclip pretrain-image: {recipe}:2: batch_size: expected greater than or "
                                       "equal to 1, found 0\n")
    assert pinclip_cli.main(["pretrain-image", "--steps", "many"]) == 2
    assert capsys.readouterr().err.startswith("pinclip pretrain-image: command line: steps: expected a valid integer")


def test_pretrain_help_lists_every_key_with_type_and_default(capsys):
    with pytest.raises(SystemExit):
        pinclip_cli.main(["pretrain-image", "--help"])
    out = capsys.readouterr().out
    for key in set(PretrainConfig.model_fields) - {"tower"}:
        assert f"\n  {key} " in out, key
    assert any(line.split()[:3] == ["cutoff_day", "int", "|"] for line in out.splitlines())
    assert any(line.split()[:3] == ["lr", "float", "0.001"] for line in out.splitlines())


def _interrupt_after_step(monkeypatch, pretrain_mod, stop_step):
    save = pretrain_mod._save_checkpoint

    def save_then_stop(out_dir, step, *rest):
        save(out_dir, step, *rest)
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


def test_a_pretraining_run_resumes_only_with_its_defining_settings(tiny_workdir, capsys):
    def run(*settings: str) -> int:
        return pinclip_cli.main(["pretrain-image", *settings, "--workdir", str(tiny_workdir), "--run", "image_rule",
                                 "--batch-size", "8", "--eval-pins", "20", "--quiet"])

    assert run("steps=2") == 0
    capsys.readouterr()
    assert run("steps=2", "lr=0.01") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "run 'image_rule' was started with other settings (lr 0.001 -> 0.01)" in err
    assert run("steps=3") == 0                        # extending keys may change
    assert run("steps=2", "lr=0.01", "--restart") == 0
    report = json.loads((tiny_workdir / "pinclip/pretrain/image_rule/report.json").read_text())
    assert report["config"]["lr"] == 0.01 and report["config"]["cutoff_day"] == report["cutoff_day"]


def test_unreadable_pretraining_checkpoint_is_a_one_line_error(tiny_workdir):
    from pinclip.training import pretrain as pretrain_mod

    out = tiny_workdir / "pinclip" / "pretrain" / "image_torn"
    out.mkdir(parents=True)
    (out / pretrain_mod.CHECKPOINT).write_bytes(b"PK\x03\x04 torn off mid-write")
    with pytest.raises(ValueError, match=r"image_torn/checkpoint.pt: checkpoint: expected a complete torch checkpoint"):
        pretrain_mod.pretrain(PretrainConfig(workdir=str(tiny_workdir), run="image_torn", steps=2, batch_size=8,
                                             eval_pins=20), progress=False)
