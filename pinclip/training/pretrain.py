"""Tower pretraining: weakly-supervised multi-label classification of pins on their annotations, the
paper's recipe for the image tower before contrastive training (`pinclip pretrain-image`), and the same
for the text tower (`pinclip pretrain-text`).

The paper starts from pretrained towers on both sides (its text encoders are pretrained SigLIP ones,
trained at 10x lower LR). No pretrained multilingual text encoder can be downloaded here, so the tiny
text tower is pretrained on the corpus itself: its descriptive and keyword texts classified into the
same annotation terms. Measured on the demo world before this existed, a from-scratch text tower
trained only through the image–text loss encoded the topic of 26% of pins (linear probe, 88 topics;
a TF-IDF bag of words on the same texts: 86%) and the described attribute not at all (chance).

Labels are the most frequent annotation terms known before the cutoff T; a pin's target for a term is
the annotation's score (0 where absent). The tower plus a linear head on its attention-pooled
embedding is trained with BCE; held-out pins (created on or after T) give the mAP, over all labels and
over the most frequent ones (the macro mAP over every label is dominated by rare terms and, for the
image tower, by the described attributes, which are text-only by construction).

The optimizer is AdamW with linear warmup then cosine: measured on the demo world, the from-scratch
image tower under Lion at 1e-4..5e-4 for 200-400 steps stayed at the label prior (loss and mAP), while
AdamW at 1e-3 learned; PinCLIP training itself keeps Lion, as the paper does.

Runs checkpoint every ``checkpoint_every`` steps and resume from the last checkpoint only with the settings
they were started with, except the keys that only extend them (``EXTENDS``; ``--restart`` starts over). A
step's batch depends only on the seed and the step, so a resumed run draws the batches an uninterrupted one
would; a text run that resumes keeps the tokenizer its checkpoint was trained with.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import polars as pl
import torch
from sklearn.metrics import average_precision_score
from torch import nn
from tqdm import tqdm

from pinclip.data.dataset import normalize_images
from pinclip.data.sources import text_sources
from pinclip.loading import read_checkpoint
from pinclip.models.config import load_config
from pinclip.models.fusion import attention_pooler, key_padding_bias
from pinclip.models.image import FunnelViT
from pinclip.models.text import TextTower, load_tokenizer, tokenize, train_tokenizer
from pinclip.settings import EXTENDS, PretrainConfig
from pinlift.core.config import dump_settings
from pinlift.core.curves import TRAIN_LOSS, Curves
from pinlift.core.errors import input_error
from pinlift.core.runs import RunDir
from pinworld.world import World


class ImageClassifier(nn.Module):
    def __init__(self, model_name: str, n_labels: int):
        super().__init__()
        cfg = load_config(model_name)
        self.img_size = cfg.image.img_size
        self.tower = FunnelViT(cfg.image)
        self.pool = attention_pooler(self.tower.width, cfg.embed_dim, cfg.pool_heads)
        self.head = nn.Linear(cfg.embed_dim, n_labels)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.tower(images)))


class TextClassifier(nn.Module):
    def __init__(self, model_name: str, n_labels: int, tokenizer: Path, vocab_size: int):
        super().__init__()
        cfg = load_config(model_name)
        self.text_cfg = dataclasses.replace(cfg.text, tokenizer=str(tokenizer), vocab_size=vocab_size)
        self.tower = TextTower(self.text_cfg)
        self.pool = attention_pooler(self.tower.width, cfg.embed_dim, cfg.pool_heads)
        self.head = nn.Linear(cfg.embed_dim, n_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        tokens = self.tower(input_ids, attention_mask)
        return self.head(self.pool(tokens, attn_mask=key_padding_bias(attention_mask.bool(), tokens.dtype)))


def annotation_vocab(world: World, as_of: int, n: int) -> list[str]:
    """The ``n`` most frequent annotation terms before ``as_of`` (ties by name): the label vocabulary."""
    ann = world.table("pin_annotations", as_of=as_of)
    counts = ann.group_by("annotation").len().sort(["len", "annotation"], descending=[True, False])
    return counts["annotation"].to_list()[:n]


def label_matrix(world: World, pins: np.ndarray, vocab: list[str], as_of: int | None) -> np.ndarray:
    """Targets (pins, labels): the annotation score of each vocabulary term, from annotations before T
    (every annotation with ``as_of`` None)."""
    ann = world.table("pin_annotations", as_of=as_of).filter(pl.col("annotation").is_in(vocab) & pl.col("pin_id").is_in(pins))
    rows = np.searchsorted(pins, ann["pin_id"].to_numpy())
    col_of = {a: j for j, a in enumerate(vocab)}
    cols = np.array([col_of[a] for a in ann["annotation"].to_list()], np.int64)
    y = np.zeros((len(pins), len(vocab)), np.float32)
    np.maximum.at(y, (rows, cols), ann["score"].to_numpy().astype(np.float32))
    return y


def _schedule(cfg: PretrainConfig, step: int) -> float:
    return float(cfg.lr * min(1.0, (step + 1) / max(cfg.warmup_steps, 1)) * 0.5 * (1 + np.cos(np.pi * step / cfg.steps)))


def pretrain(cfg: PretrainConfig, progress: bool = True, restart: bool = False) -> dict:
    """Pretrain ``cfg.tower`` on annotation labels; save it (``image_tower.pt``, or ``text_tower.pt`` with the
    ``tokenizer.json`` it reads) and ``report.json`` with the held-out mAP under pinclip/pretrain/<run>/.
    Resumes from the run's checkpoint when its defining settings match (else InputError), or starts it over
    with ``restart``."""
    torch.manual_seed(cfg.seed)
    world = World(cfg.workdir)
    cfg = cfg.model_copy(update={"cutoff_day": world.cutoff(cfg.cutoff_day)})
    t = cfg.cutoff_day
    vocab = annotation_vocab(world, t, cfg.labels)
    if not vocab:
        raise input_error(world.workdir / "world" / "pin_annotations.parquet", "annotation",
                          f"annotations before the cutoff day {t} (the labels pretraining learns)", "none")
    run = RunDir(Path(cfg.workdir) / "pinclip" / "pretrain", cfg.run, f"pinclip pretrain-{cfg.tower}", EXTENDS)
    run.start(dump_settings(cfg), restart)
    train_pins = np.sort(world.table("pins", as_of=t)["pin_id"].to_numpy())
    later = world.table("pins").filter(pl.col("created_day") >= t)["pin_id"].to_numpy()
    rng = np.random.default_rng(cfg.seed)
    out_dir = run.path
    resume = _load_checkpoint(out_dir)
    # train_inputs(rows of ``examples``) and eval_inputs(pin ids): the model's positional inputs
    if cfg.tower == "image":
        model = ImageClassifier(cfg.model, len(vocab))
        examples = train_pins

        def eval_inputs(pins):
            return (normalize_images(world.images(pins, model.img_size)),)

        def train_inputs(rows):
            return eval_inputs(examples[rows])
    else:
        # every descriptive and keyword text known before T is one example of its pin's labels
        texts = text_sources(world.pins(as_of=t))
        pairs = pl.concat([texts.select("pin_id", pl.col(c).alias("text")) for c in ("descriptive", "keyword")]
                          ).drop_nulls("text")
        if resume is None or not (out_dir / "tokenizer.json").is_file():   # token ids must match the checkpoint
            train_tokenizer(pairs["text"].to_list(), cfg.vocab_size, out_dir / "tokenizer.json")
        model = TextClassifier(cfg.model, len(vocab), out_dir / "tokenizer.json", cfg.vocab_size)
        tokenizer = load_tokenizer(model.text_cfg)
        examples = pairs["pin_id"].to_numpy()
        example_text = pairs["text"].to_list()
        # held-out pins are scored on their own descriptive text
        text_of = dict(zip(*text_sources(world.pins()).select("pin_id", "descriptive").drop_nulls().get_columns()))
        later = np.array([p for p in later if p in text_of], np.int64)

        def eval_inputs(pins):
            return tokenize(tokenizer, [text_of[p] for p in pins])

        def train_inputs(rows):
            return tokenize(tokenizer, [example_text[r] for r in rows])
    eval_pins = np.sort(rng.choice(later, min(cfg.eval_pins, len(later)), replace=False))
    y_train = label_matrix(world, train_pins, vocab, t)
    y_eval = label_matrix(world, eval_pins, vocab, None) > 0   # their annotations, for scoring only
    example_rows = np.searchsorted(train_pins, examples)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start, losses = 0, []
    if resume is not None:
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        torch.set_rng_state(resume["torch_rng"])
        start, losses = int(resume["step"]), list(resume["losses"])
        if progress:
            print(f"pinclip: resumed pretrain-{cfg.tower} {cfg.run} at step {start}", file=sys.stderr)
    bar = tqdm(range(start, cfg.steps), desc=f"pretrain-{cfg.tower} {cfg.run}", unit="step", disable=not progress,
               file=sys.stderr, initial=start, total=cfg.steps)
    curves = Curves(out_dir, start)

    for step in bar:
        rows = np.random.default_rng([cfg.seed, step]).integers(0, len(examples), cfg.batch_size)
        for g in opt.param_groups:
            g["lr"] = _schedule(cfg, step)
        logits = model(*train_inputs(rows))
        loss = nn.functional.binary_cross_entropy_with_logits(logits, torch.from_numpy(y_train[example_rows[rows]]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses = [*losses[-19:], loss.item()]
        bar.set_postfix(loss=f"{np.mean(losses):.4f}")
        curves.log(step + 1, {TRAIN_LOSS: losses[-1], "lr/model": opt.param_groups[0]["lr"]})
        if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
            curves.flush()
            _save_checkpoint(out_dir, step + 1, model, opt, losses)
    model.eval()
    with torch.no_grad():
        scores = np.concatenate([np.zeros((0, len(vocab)), np.float32)]
                                + [torch.sigmoid(model(*eval_inputs(eval_pins[i:i + 256]))).numpy()
                                   for i in range(0, len(eval_pins), 256)])
    valid = y_eval.any(0) & ~y_eval.all(0)
    # a catalog's default cutoff knows every pin: no later pin to score, so no mAP (null)
    ap = average_precision_score(y_eval[:, valid], scores[:, valid], average=None) if valid.any() else np.zeros(0)
    prevalence = y_eval[:, valid].mean(0) if valid.any() else np.zeros(0)   # the AP of a scorer that knows nothing
    top = slice(0, min(cfg.top_labels, int(valid.sum())))   # vocab is by frequency, most frequent first

    def mean(a: np.ndarray) -> float | None:
        return float(a.mean()) if len(a) else None

    torch.save(model.tower.state_dict(), out_dir / f"{cfg.tower}_tower.pt")
    report = {"config": dump_settings(cfg), "tower": cfg.tower, "cutoff_day": t, "labels": len(vocab),
              "eval_pins": int(len(eval_pins)), "labels_scored": int(valid.sum()), "mAP": mean(ap),
              "mAP_chance": mean(prevalence), "mAP_top": mean(ap[top]),
              "mAP_top_chance": mean(prevalence[top]), "top_labels": top.stop,
              "final_loss": float(np.mean(losses)) if losses else float("nan"), "generator_version": world.generator_version}
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    curves.log(cfg.steps, {f"eval/{k}": report[k] for k in ("mAP", "mAP_chance", "mAP_top", "mAP_top_chance")
                           if report[k] is not None})
    curves.close()
    (out_dir / CHECKPOINT).unlink(missing_ok=True)
    return report


CHECKPOINT = "checkpoint.pt"


def _save_checkpoint(out_dir: Path, step: int, model: nn.Module, opt, losses: list) -> None:
    tmp = out_dir / f".{CHECKPOINT}.tmp"
    torch.save({"step": step, "model": model.state_dict(), "optimizer": opt.state_dict(),
                "torch_rng": torch.get_rng_state(), "losses": losses}, tmp)
    tmp.replace(out_dir / CHECKPOINT)


def _load_checkpoint(out_dir: Path) -> dict | None:
    """The run's checkpoint, or None before its first."""
    path = out_dir / CHECKPOINT
    if not path.is_file():
        return None
    return read_checkpoint(path)
