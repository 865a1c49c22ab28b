"""PinCLIP training: no look-ahead, resume == uninterrupted, LR schedule, 2-process torchrun with freezing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import polars as pl
import pytest
import torch

from pinclip import cli
from pinclip.loading import load_run
from pinclip.training.pretrain import annotation_vocab
from pinclip.settings import TrainConfig, load_train_config
from pinclip.training.train import Trainer, lr_factor

SMALL = dict(steps=6, batch_size=32, warmup_steps=2, checkpoint_every=3, vocab_size=2000)


def test_lr_schedule_warmup_then_cosine_to_zero():
    f = [lr_factor(s, 10, 100) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:])) and lr_factor(100, 10, 100) == pytest.approx(0.0)


def test_training_sees_nothing_from_cutoff_on(tiny_workdir, tiny_world):
    tr = Trainer(TrainConfig(workdir=str(tiny_workdir), run="lookahead", cutoff_day=20, **SMALL), progress=False)
    created = tiny_world.table("pins").select("pin_id", "created_day")
    train_pins = set(tr.image_text.pin_ids.tolist()) | set(tr.candidates["pin_id"].to_list()) \
        | set(tr.candidates["neighbor_id"].to_list())
    late = set(created.filter(pl.col("created_day") >= 20)["pin_id"].to_list())
    assert train_pins and not (train_pins & late)
    assert not (train_pins & set(tr.split.heldout))          # evaluation pins are disjoint from training
    # keyword texts come only from queries/annotations before T
    known = tiny_world.pins(as_of=20)
    row = tr.texts.join(known.select("pin_id", "search_queries"), on="pin_id")
    for kw, qs in zip(row["keyword"].to_list()[:200], row["search_queries"].to_list()[:200]):
        if qs:
            assert kw in qs


def test_resume_equals_uninterrupted(tiny_workdir):
    straight = Trainer(TrainConfig(workdir=str(tiny_workdir), run="p_straight", **SMALL), progress=False).fit()
    shared = dict(SMALL, tokenizer=str(tiny_workdir / "pinclip/runs/p_straight/tokenizer.json"))
    Trainer(TrainConfig(workdir=str(tiny_workdir), run="p_resumed", **shared), progress=False).fit()
    # a crash after the step-3 checkpoint: the step-6 one never got written
    ckpt = tiny_workdir / "pinclip/runs/p_resumed/checkpoints"
    (ckpt / "step-000006.pt").unlink()
    (ckpt / "LATEST").write_text("step-000003.pt")
    (tiny_workdir / "pinclip/runs/p_resumed/metrics.jsonl").unlink()
    resumed = Trainer(TrainConfig(workdir=str(tiny_workdir), run="p_resumed", **shared), progress=False).fit()
    assert [r["step"] for r in resumed] == [4, 5, 6]
    np.testing.assert_allclose([r["loss"] for r in straight[3:]], [r["loss"] for r in resumed], rtol=1e-5)
    a, _, _ = load_run(tiny_workdir, "p_straight")
    b, _, saved = load_run(tiny_workdir, "p_resumed")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
    assert saved["train"]["steps"] == 6 and saved["generator_version"] == "pinworld-1.1"
    metrics = (tiny_workdir / "pinclip/runs/p_straight/metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 6 and "pin_pin/64" in json.loads(metrics[0])


def test_frozen_tower_stays_put(tiny_workdir):
    tr = Trainer(TrainConfig(workdir=str(tiny_workdir), run="frozen", trainable_image_blocks=1,
                             grad_checkpointing=True, **{**SMALL, "steps": 2}), progress=False)
    frozen = {n: p.detach().clone() for n, p in tr.model.image.named_parameters() if not p.requires_grad}
    live = {n: p.detach().clone() for n, p in tr.model.image.named_parameters() if p.requires_grad}
    tr.fit()
    assert frozen and live
    after = dict(tr.model.image.named_parameters())
    assert all(torch.equal(after[n], v) for n, v in frozen.items())
    assert any(not torch.equal(after[n], v) for n, v in live.items())


def test_two_process_torchrun_with_frozen_tower(tiny_workdir):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29561",
           "-m", "pinclip.cli", "train", "tiny", "steps=3", "batch_size=16", "neighbor_batch_size=0", "warmup_steps=1",
           "vocab_size=2000", "trainable_image_blocks=2", "grad_checkpointing=true", "corpus_negatives=4",
           "annotation_weight=1.0", "annotation_labels=40",
           f"workdir={tiny_workdir}", "run=ddp",
           "--quiet", "--restart"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1])["steps"] == 3
    model, _, saved = load_run(tiny_workdir, "ddp")
    assert saved["train"]["trainable_image_blocks"] == 2 and saved["train"]["corpus_negatives"] == 4
    assert saved["train"]["annotation_weight"] == 1.0


def test_neighbor_batch_defaults_to_the_paper_ratio_or_is_set(tiny_workdir):
    for size, expect in ((0, 32 // 8), (5, 5)):
        tr = Trainer(TrainConfig(workdir=str(tiny_workdir), run=f"nb{size}", neighbor_batch_size=size, **SMALL),
                     progress=False)
        nb = tr._neighbor_batch(0)
        assert nb.query_images.shape[0] == nb.positive_images.shape[0] == expect


def test_neighbor_group_builds_seeded_local_batches(tiny_workdir):
    cfg = TrainConfig(workdir=str(tiny_workdir), run="group", neighbor_batch_size=8, neighbor_group=4, **SMALL)
    first, again = Trainer(cfg, progress=False), Trainer(cfg, progress=False)
    nb = first._neighbor_batch(1)
    assert len(set(nb.query_ids.tolist())) == 8
    assert torch.equal(nb.query_ids, again._neighbor_batch(1).query_ids)       # a resumed run draws the same
    assert not torch.equal(nb.query_ids, first._neighbor_batch(2).query_ids)


def test_corpus_negatives_are_seeded_training_pins_outside_the_batch(tiny_workdir):
    cfg = TrainConfig(workdir=str(tiny_workdir), run="corpus", neighbor_batch_size=5, corpus_negatives=6,
                      **{**SMALL, "steps": 2})
    first, again = Trainer(cfg, progress=False), Trainer(cfg, progress=False)
    nb = first._neighbor_batch(1)
    negatives = nb.negative_ids.tolist()
    assert len(set(negatives)) == 6 and nb.negative_images.shape[0] == nb.negative_text.input_ids.shape[0] == 6
    assert not set(negatives) & set(nb.query_ids.tolist() + nb.positive_ids.tolist())
    assert set(negatives) <= set(first.texts["pin_id"].to_list())          # before T, none held out
    assert torch.equal(nb.negative_ids, again._neighbor_batch(1).negative_ids)
    assert not torch.equal(nb.negative_ids, first._neighbor_batch(0).negative_ids)
    in_batch_only = Trainer(TrainConfig(workdir=str(tiny_workdir), run="corpus0", **SMALL), progress=False)
    assert in_batch_only._neighbor_batch(0).negative_ids is None
    log = first.fit()
    assert len(log) == 2 and all(np.isfinite(r["pin_pin/64"]) for r in log)


def test_annotation_loss_scores_the_fusion_prefix_against_annotations_before_t(tiny_workdir, tiny_world):
    cfg = TrainConfig(workdir=str(tiny_workdir), run="annot", annotation_weight=1.0, annotation_labels=40,
                      **{**SMALL, "steps": 2})
    tr = Trainer(cfg, progress=False)
    t = tr.cfg.cutoff_day
    ann = tiny_world.table("pin_annotations", as_of=t)
    vocab = annotation_vocab(tiny_world, t, 40)
    assert len(vocab) == 40 and tr.annotations.shape == (len(tr.image_text), 40)
    for row in (0, 7, len(tr.image_text) - 1):          # each row holds its own pin's scores, from before T
        pin = tr.image_text.pin_ids[row]
        mine = ann.filter(pl.col("pin_id") == pin)
        expect = np.zeros(40, np.float32)
        for term, score in zip(mine["annotation"], mine["score"]):
            if term in vocab:
                expect[vocab.index(term)] = max(expect[vocab.index(term)], score)
        np.testing.assert_allclose(tr.annotations[row], expect)
    log = tr.fit()
    assert all(np.isfinite(r["annotation"]) and np.isfinite(r["pin_pin/64"]) for r in log)
    assert tr.step_module.annotation.head.weight.abs().sum() > 0           # the head learns from zero
    plain = Trainer(TrainConfig(workdir=str(tiny_workdir), run="annot0", **SMALL), progress=False)
    assert plain.annotations is None and plain.step_module.annotation is None
    with pytest.raises(ValueError, match="field 'annotation_weight'.*fusion: false"):
        Trainer(TrainConfig(workdir=str(tiny_workdir), run="annot_nofusion", annotation_weight=1.0, fusion=False,
                            **SMALL), progress=False)


def test_config_errors_name_the_file_line_and_field(tmp_path, capsys):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("steps: 5\nlr: -1\n")
    assert cli.main(["train", str(recipe)]) == 2
    assert capsys.readouterr().err == f"pinclip train: {recipe}:2: lr: expected greater than 0, found -1\n"
    assert load_train_config(["tiny", "steps=7"]).steps == 7
    assert load_train_config(["tiny", "lr=6e-4"]).lr == 6e-4       # YAML 1.1 reads 6e-4 as a string
    for items, message in ((["nope"], r"config: expected a YAML file or a recipe \(base, demo, quick, tiny\), found 'nope'"),
                           (["tiny", "stepz=3"], "stepz: expected a known field"),
                           (["tiny", "lr=fast"], "lr: expected a valid number, found 'fast'"),
                           (["tiny", "neighbor_group=1"], "neighbor_group: expected 0 or an integer >= 2, found 1"),
                           (["tiny", "corpus_negatives=-1"], "corpus_negatives: expected greater than or equal to 0"),
                           (["tiny", "precision=fp16"], "precision: expected one of 'fp32' or 'bf16', found 'fp16'")):
        with pytest.raises(ValueError, match=f"^command line: {message}"):
            load_train_config(items)
    assert cli.main(["train", "tiny", "steps"]) == 2


def test_help_lists_every_key_with_type_and_default(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    out = capsys.readouterr().out
    for key in TrainConfig.model_fields:
        assert f"\n  {key} " in out, key
    assert any(line.split()[:3] == ["lr", "float", "0.0002"] for line in out.splitlines())
    assert any(line.split()[:3] == ["precision", "fp32", "|"] for line in out.splitlines())


def test_a_run_resumes_only_with_its_defining_settings(tiny_workdir, capsys):
    def run(*settings: str) -> int:
        return cli.main(["train", "tiny", "batch_size=16", "neighbor_batch_size=0", "warmup_steps=1", "vocab_size=2000",
                         *settings, "--workdir", str(tiny_workdir), "--run", "resume_rule", "--quiet"])

    metrics = tiny_workdir / "pinclip/runs/resume_rule/metrics.jsonl"
    assert run("steps=2") == 0
    capsys.readouterr()
    assert run("steps=2", "lr=1e-3") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "run 'resume_rule' was started with other settings (lr 0.0002 -> 0.001)" in err
    assert "--restart" in err
    assert run("steps=3", "checkpoint_every=1") == 0          # extending keys may change
    assert "resumed resume_rule at step 2" in capsys.readouterr().err
    assert len(metrics.read_text().splitlines()) == 3
    assert run("steps=1", "lr=1e-3", "--restart") == 0
    assert len(metrics.read_text().splitlines()) == 1
    saved = json.loads((tiny_workdir / "pinclip/runs/resume_rule/run.json").read_text())
    assert saved["config"]["lr"] == 1e-3 and saved["config"]["cutoff_day"] is not None


def test_tower_embeddings_do_not_collapse(tiny_workdir, tiny_world, tiny_pinclip_run):
    """Pooled image and text embeddings start (and stay) spread out, so the image-text loss can align
    pairs instead of falling into its collapsed optimum where every pair scores the same."""
    from pinclip.data.dataset import normalize_images
    from pinclip.data.sources import text_sources
    from pinclip.models.text import tokenize

    model, tok, _ = load_run(tiny_workdir, tiny_pinclip_run)
    model.train()                         # batch statistics for the centering
    texts = text_sources(tiny_world.pins(as_of=20)).head(64)
    ids, mask = tokenize(tok, texts["descriptive"].to_list())
    with torch.no_grad():
        out = model(["image", "text"], normalize_images(tiny_world.images(texts["pin_id"].to_numpy(), 64)), ids, mask)
    for kind in ("image", "text"):
        e = out[kind][256]
        sims = e @ e.T
        off = (sims.sum() - sims.trace()) / (len(e) * (len(e) - 1))
        assert off < 0.3, (kind, float(off))
