"""PinCLIP training (`pinclip train CONFIG [key=value ...]`).

Each step mixes an image–text batch and a neighbor-pair batch (8 : 1, the paper's 32,768 : 4,096), and
optimises the sigmoid image–descriptive and image–keyword losses plus the Pin-to-Pin loss on fusion
embeddings, each Matryoshka-weighted (``pinclip.losses``); with ``annotation_weight`` > 0, also an
auxiliary annotation loss (not in the paper) on the 64-d fusion prefix of the image–text batch's pins.
Lion (timm's, or AdamW: ``optimizer``) with warmup then cosine to 0, the text tower at 10x lower LR with its
own weight decay, optional partial freezing of the image tower and activation checkpointing. Runs in one
process or under ``torchrun`` (DDP; the sigmoid loss is chunked across ranks). Only pins, text sources, annotations and
Pin–Board behaviour from days before the cutoff T are used, and a held-out share of older pins (or every
pin outside the train rows of a supplied ``split``) is excluded too, so evaluation pins are disjoint from
training; the run prints and records how many. A pin missing one kind of text keeps its other pair (the
loss masks the missing one). Without Pin–Board edges (a catalog alone), Pin-to-Pin is skipped with a note;
without any keyword text, the image–keyword term is. Training images are augmented as ``augment_*`` say.
A run (``W/pinclip/runs/<run>``) resumes from its latest checkpoint only with the settings it was started
with (``pinclip.settings.TrainConfig``), except the keys that only extend it (``EXTENDS``); ``--restart``
starts it over.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch
import torch.distributed as dist
from timm.optim import create_optimizer_v2
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from pinclip.data.dataset import (Augment, CorpusPins, ImageTextCollate, ImageTextDataset, NeighborCollate,
                                  NeighborPairDataset, neighbor_batch_size)
from pinclip.data.sources import KINDS, drop_misaligned, text_sources
from pinlift.core.distributed import Env, setup
from pinclip.loading import read_checkpoint, read_shipped_model, read_shipped_tower, shipped_towers
from pinclip.losses import MATRYOSHKA_WEIGHTS, AnnotationLoss, PinCLIPLoss
from pinclip.models.factory import PinCLIP, create_model
from pinclip.models.text import load_tokenizer, tokenize, train_tokenizer
from pinclip.settings import EXTENDS, TrainConfig
from pinclip.training.alignment import alignment_scores
from pinclip.training.engaged import heldout_split
from pinclip.training.neighbors import LocalBatches, WalkConfig, neighbor_candidates, sample_positives, session_pairs
from pinclip.training.pretrain import annotation_vocab, label_matrix
from pinlift.core.config import dump_settings
from pinlift.core.curves import TRAIN_LOSS, Curves
from pinlift.core.errors import input_error
from pinlift.core.runs import RunDir
from pinworld.world import World


class TrainStep(nn.Module):
    """Model + loss as one module, so DDP sees a single forward per step (and syncs the temperatures).

    With an ``annotation`` loss, the image–text batch's pins also get fusion embeddings (image and descriptive
    text), whose 64-d prefix is scored against ``annotations`` (B, labels), weighted by ``annotation_weight``.
    """

    def __init__(self, model: PinCLIP, loss: PinCLIPLoss, use_fusion: bool, use_pin_pin: bool,
                 annotation: AnnotationLoss | None = None, annotation_weight: float = 0.0, use_keyword: bool = True):
        super().__init__()
        self.model, self.loss = model, loss
        self.use_fusion, self.use_pin_pin, self.use_keyword = use_fusion, use_pin_pin, use_keyword
        self.annotation, self.annotation_weight = annotation, annotation_weight

    def forward(self, it, nb, annotations: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        kinds = ["image", "text"] + (["fusion"] if self.annotation is not None else [])
        image = self.model(kinds, it.images, it.descriptive.input_ids, it.descriptive.attention_mask)
        keyword = None
        if self.use_keyword:
            keyword = self.model(["text"], None, it.keyword.input_ids, it.keyword.attention_mask)["text"]
        query = positive = negative = None
        if self.use_fusion and self.use_pin_pin:
            query = self.model(["fusion"], nb.query_images, nb.query_text.input_ids,
                               nb.query_text.attention_mask)["fusion"]
            positive = self.model(["fusion"], nb.positive_images, nb.positive_text.input_ids,
                                  nb.positive_text.attention_mask)["fusion"]
            if nb.negative_images is not None:
                negative = self.model(["fusion"], nb.negative_images, nb.negative_text.input_ids,
                                      nb.negative_text.attention_mask)["fusion"]
        total, parts = self.loss(image["image"], image["text"], keyword, query, positive, negative,
                                 descriptive_mask=it.has_descriptive, keyword_mask=it.has_keyword)
        if self.annotation is not None:
            parts["annotation"] = self.annotation(image["fusion"][self.annotation.dim], annotations)
            total = total + self.annotation_weight * parts["annotation"]
        return total, parts


# the optimizer's parameter groups, in order: (name, LR multiplier setting or None, weight decay setting)
PARAM_GROUPS = (("model", None, "weight_decay"), ("text", "text_lr_scale", "text_weight_decay"),
                ("loss", "loss_lr_scale", None), ("image", "image_lr_scale", "weight_decay"))


def _param_group(name: str) -> str:
    """The group of a ``TrainStep`` parameter: the losses' temperatures and biases, the text tower, the image
    tower, or the rest (poolers, fusion, heads)."""
    for prefix, group in (("loss.", "loss"), ("model.text.", "text"), ("model.image.", "image")):
        if name.startswith(prefix):
            return group
    return "model"


def _param_groups(step: TrainStep, cfg: TrainConfig) -> list[dict]:
    params: dict[str, list] = {name: [] for name, _, _ in PARAM_GROUPS}
    for name, p in step.named_parameters():
        if p.requires_grad:
            params[_param_group(name)].append(p)
    groups = []
    for name, scale, decay in PARAM_GROUPS:
        lr = cfg.lr * (getattr(cfg, scale) if scale else 1.0)
        groups.append({"params": params[name], "lr": lr, "base_lr": lr,
                       "weight_decay": getattr(cfg, decay) if decay else 0.0})
    return groups


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warmup to 1, then cosine to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / max(warmup, 1)
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class EpochBatches:
    """Batch indices for (step, rank): a fresh seeded permutation per epoch, so any step can be
    reproduced exactly on resume without replaying earlier ones."""

    def __init__(self, n: int, batch_size: int, env: Env, seed: int, key: str = "batch_size",
                 examples: str = "examples"):
        """``key`` and ``examples``: the setting that asks for ``batch_size`` and what is batched, for the
        error when there is less than one global batch."""
        self.n, self.batch, self.env, self.seed = n, batch_size, env, seed
        self.per_epoch = n // (batch_size * env.world_size)
        if self.per_epoch == 0:
            raise input_error("pinclip train", key, f"at most {n // env.world_size} ({n} {examples} over "
                              f"{env.world_size} rank(s))", batch_size)
        self._epoch, self._order = -1, None

    def epoch_of(self, step: int) -> int:
        return step // self.per_epoch

    def indices(self, step: int) -> np.ndarray:
        epoch, offset = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            self._epoch, self._order = epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n)
        start = (offset * self.env.world_size + self.env.rank) * self.batch
        return self._order[start:start + self.batch]


class Trainer:
    """Builds data, model, loss and optimizer for a config; ``fit`` trains with checkpoints."""

    def __init__(self, cfg: TrainConfig, env: Env | None = None, progress: bool = True, restart: bool = False):
        """Resumes ``W/pinclip/runs/<run>`` when its defining settings match (else InputError), or starts it
        over with ``restart``."""
        self.env = env or setup()
        self.world = World(cfg.workdir)
        self.cfg = cfg.resolved(self.world)
        self.progress = progress and self.env.is_main
        record = RunDir(Path(cfg.workdir) / "pinclip" / "runs", self.cfg.run, "pinclip train", EXTENDS)
        self.run_dir = record.path
        if not restart:   # every rank refuses alike, before anything is written
            record.check_resume(dump_settings(self.cfg))
        if self.env.is_main:
            record.start(dump_settings(self.cfg), restart)
        dist.barrier()
        torch.manual_seed(self.cfg.seed)
        t = self.cfg.cutoff_day
        self.split = heldout_split(self.world, t, random_share=self.cfg.heldout_share, seed=self.cfg.seed,
                                   split=self.cfg.split)
        held = np.asarray(sorted(self.split.heldout), np.int64)
        self.total_pins = self.world.table("pins").height
        self.notes: list[str] = []
        self._note(f"pinclip train: {self.split.describe(self.total_pins)}")
        pins = self.world.pins(as_of=t).filter(~pl.col("pin_id").is_in(held))
        texts = text_sources(pins)
        self.dropped_misaligned = 0
        if self.cfg.align_reference:
            scores = alignment_scores(cfg.workdir, self.cfg.align_reference, texts, world=self.world,
                                      progress=self.progress)
            kept = drop_misaligned(texts, scores, self.cfg.align_threshold)
            self.dropped_misaligned = sum(texts[k].count() - kept[k].count() for k in KINDS)
            texts = kept
        self.texts = texts
        self.tokenizer_path = self.run_dir / "tokenizer.json"
        shipped = read_shipped_model(self.cfg.pretrained) if self.cfg.pretrained else None
        given = (self.cfg.tokenizer or (str(shipped[2]) if shipped else "")
                 or (str(self._pretrained("text", "tokenizer.json")) if self.cfg.pretrained_text else ""))
        if self.env.is_main and not self.tokenizer_path.exists() and given:
            self.tokenizer_path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(given, self.tokenizer_path)
        elif self.env.is_main and not self.tokenizer_path.exists():
            corpus = [s for col in ("descriptive", "keyword") for s in texts[col].drop_nulls().to_list()]
            train_tokenizer(corpus, self.cfg.vocab_size, self.tokenizer_path)
        dist.barrier()
        overrides = dict(self.cfg.model_overrides)
        text_over = dict(overrides.pop("text", {}))
        if text_over.get("pretrained") != "minilm":
            text_over["tokenizer"] = str(self.tokenizer_path)
            text_over.setdefault("vocab_size", shipped[1]["model"]["text"]["vocab_size"] if shipped else self.cfg.vocab_size)
        self.model = create_model(self.cfg.model, text=text_over, **overrides)
        self.tokenizer = load_tokenizer(self.model.cfg.text)
        if shipped:
            self._load_shipped(self.model, "model.", shipped[0])
        if self.cfg.pretrained_image:
            self.model.image.load_state_dict(self._pretrained_image())
        if self.cfg.pretrained_text:
            self.model.text.load_state_dict(read_checkpoint(self._pretrained("text", "text_tower.pt")))
        if self.cfg.trainable_image_blocks >= 0:
            self.model.freeze_image_tower(self.cfg.trainable_image_blocks)
        if self.cfg.grad_checkpointing:
            self.model.set_grad_checkpointing(True)
        weights = MATRYOSHKA_WEIGHTS if self.cfg.matryoshka else {max(MATRYOSHKA_WEIGHTS): 1.0}
        if not self.cfg.matryoshka:
            self.model.matryoshka_heads.heads = nn.ModuleDict({k: v for k, v in self.model.matryoshka_heads.heads.items()
                                                               if int(k) in weights})
            self.model.matryoshka_heads.dims = tuple(weights)
        size = self.model.cfg.image.img_size
        tok = lambda texts: tokenize(self.tokenizer, texts)  # noqa: E731
        # pins with either text; a missing one is masked in the loss, so every rank's batch keeps its size
        self.image_text = ImageTextDataset(self.world, texts, size)
        self.use_keyword = any(k is not None for k in self.image_text.keyword)
        if not self.use_keyword:
            self._note("pinclip train: image–keyword loss skipped: no training pin has a keyword text "
                       "(a search query or an annotation)")
        self.augment = Augment(tuple(self.cfg.augment_scale), self.cfg.augment_flip)
        annotation, self.annotations = None, None
        if self.cfg.annotation_weight:
            if not self.cfg.fusion:
                raise ValueError("pinclip train: field 'annotation_weight': the annotation loss scores the fusion "
                                 "embedding; expected 0 with fusion: false")
            vocab = annotation_vocab(self.world, t, self.cfg.annotation_labels)
            # rows in the order of the image–text pins, which are unique; targets are annotations before T
            order = np.argsort(self.image_text.pin_ids)
            labels = label_matrix(self.world, self.image_text.pin_ids[order], vocab, t)
            self.annotations = np.empty_like(labels)
            self.annotations[order] = labels
            annotation = AnnotationLoss(min(self.model.matryoshka_heads.dims), torch.from_numpy(labels.mean(0)))
        self.it_collate = ImageTextCollate(tok)
        self.it_batches = EpochBatches(len(self.image_text), self.cfg.batch_size, self.env, self.cfg.seed,
                                       examples="image–text pins")
        self.nb_collate = NeighborCollate(tok)
        self.nb_size = self.cfg.neighbor_batch_size or neighbor_batch_size(self.cfg.batch_size)
        self.pin_pin = self.cfg.fusion and self.cfg.pin_pin
        self.candidates = self._candidates(t, held) if self.pin_pin else None
        if self.pin_pin and self.candidates.height == 0:
            self.pin_pin = False
            self._note("pinclip train: Pin-to-Pin skipped: no Pin–Board edges between training pins before the "
                       "cutoff, so no neighbours (boards, e.g. from categories, give them)")
        self.step_module = TrainStep(self.model, PinCLIPLoss(weights), self.cfg.fusion, self.pin_pin,
                                     annotation, self.cfg.annotation_weight, self.use_keyword).to(self.env.device)
        if shipped:
            self._load_shipped(self.step_module.loss, "loss.", shipped[0])
        uses_negatives = self.cfg.corpus_negatives and self.pin_pin
        self.corpus = CorpusPins(self.world, self.texts, size) if uses_negatives else None
        self._nb_epoch, self.neighbors, self.nb_batches = -1, None, None
        if self.env.world_size > 1:
            self.ddp = DistributedDataParallel(self.step_module,
                                               find_unused_parameters=not (self.pin_pin and self.use_keyword))
        else:
            self.ddp = self.step_module
        self.optimizer = create_optimizer_v2(_param_groups(self.step_module, self.cfg), opt=self.cfg.optimizer,
                                             lr=self.cfg.lr)
        self.step = 0

    def _note(self, line: str) -> None:
        """A one-line note: on stderr (unless quiet) and in the run's config.json."""
        self.notes.append(line)
        if self.progress:
            print(line, file=sys.stderr)

    def _candidates(self, t: int, held: np.ndarray) -> pl.DataFrame:
        """Pin-to-Pin neighbour candidates: random-walk visits (plus session co-saves with ``session_pairs``)."""
        walk = WalkConfig(**{"seed": self.cfg.seed, **self.cfg.walk})
        candidates = neighbor_candidates(self.world, t, walk, exclude=held,
                                         cache_dir=self.run_dir.parent.parent / "cache")
        if self.cfg.session_pairs:
            # co-engagement counts add to walk visits as the sampling weight of a pair
            sessions = session_pairs(self.world, t, exclude=held).rename({"sessions": "visits"})
            candidates = (pl.concat([candidates, sessions], how="vertical_relaxed")
                          .group_by("pin_id", "neighbor_id").agg(pl.col("visits").sum())
                          .sort("pin_id", "neighbor_id"))
        return candidates

    def _load_shipped(self, module: nn.Module, prefix: str, state: dict) -> None:
        """The ``pretrained`` model's ``prefix`` weights into ``module``; another shape is one line."""
        try:
            module.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
        except RuntimeError as exc:
            raise ValueError(f"pinclip train: field 'pretrained': {self.cfg.pretrained!r} is another model than "
                             f"model={self.cfg.model!r} with these model_overrides "
                             f"({str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else exc})") from None

    def _pretrained_image(self) -> dict:
        """The ``pretrained_image`` tower: a pretrain-image run of the workspace, else a tower shipped with pinclip."""
        run = Path(self.cfg.workdir) / "pinclip" / "pretrain" / self.cfg.pretrained_image
        if not run.is_dir() and self.cfg.pretrained_image in shipped_towers():
            return read_shipped_tower(self.cfg.pretrained_image)
        return read_checkpoint(self._pretrained("image", "image_tower.pt"))

    def _pretrained(self, tower: str, name: str) -> Path:
        """A file of the ``pretrained_<tower>`` run, which must exist."""
        run = getattr(self.cfg, f"pretrained_{tower}")
        path = Path(self.cfg.workdir) / "pinclip" / "pretrain" / run / name
        if not path.is_file():
            raise FileNotFoundError(f"pinclip train: pretrained_{tower}: {path} not found (run `pinclip pretrain-{tower}`)")
        return path

    def _neighbor_batch(self, step: int):
        # neighbor positives are resampled from the cached walk candidates once per pass over them; the
        # pass a step falls in depends only on the step, so a resumed run draws the same batches
        if self.nb_batches is None:
            self._build_neighbors(0)
        epoch = self.nb_batches.epoch_of(step)
        if epoch != self._nb_epoch:
            self._build_neighbors(epoch)
        offset = step - epoch * self.nb_batches.per_epoch
        if self.local is not None:
            rng = np.random.default_rng([self.cfg.seed + 7, epoch, offset, self.env.rank])
            rows = self.local.rows(self.nb_size, rng)
        else:
            order = np.random.default_rng([self.cfg.seed + 7, epoch]).permutation(len(self.neighbors))
            start = (offset * self.env.world_size + self.env.rank) * self.nb_size
            rows = order[start:start + self.nb_size]
        samples = self.neighbors.__getitems__(rows)
        if self.corpus is not None:
            rng = np.random.default_rng([self.cfg.seed + 11, step, self.env.rank])
            avoid = np.concatenate([samples.query_ids.numpy(), samples.positive_ids.numpy()])
            samples.negatives = self.corpus.__getitems__(self.corpus.draw(self.cfg.corpus_negatives, rng, avoid))
        rng = np.random.default_rng([self.cfg.seed + 17, step, self.env.rank])
        samples.query_images = self.augment(samples.query_images, rng)
        samples.positive_images = self.augment(samples.positive_images, rng)
        if samples.negatives is not None:
            samples.negatives.images = self.augment(samples.negatives.images, rng)
        return self.nb_collate(samples)

    def _build_neighbors(self, epoch: int) -> None:
        pairs = sample_positives(self.candidates, self.cfg.positives_per_query, seed=self.cfg.seed + epoch)
        self.neighbors = NeighborPairDataset(self.world, pairs, self.texts, self.model.cfg.image.img_size)
        self.local = LocalBatches(pairs, self.candidates, self.cfg.neighbor_group) if self.cfg.neighbor_group else None
        if self.nb_batches is None:   # the pass length is fixed by the first sample
            self.nb_batches = EpochBatches(len(self.neighbors), self.nb_size, self.env, self.cfg.seed + 7,
                                           key="neighbor_batch_size", examples="Pin-to-Pin pairs")
        self._nb_epoch = epoch

    # ---- checkpoints ------------------------------------------------------------------------------

    def save_checkpoint(self) -> Path:
        path = self.run_dir / "checkpoints" / f"step-{self.step:06d}.pt"
        if self.env.is_main:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            torch.save({"step": self.step, "model": self.step_module.state_dict(),
                        "optimizer": self.optimizer.state_dict(), "torch_rng": torch.get_rng_state()}, tmp)
            tmp.replace(path)
            (path.parent / "LATEST").write_text(path.name)
        dist.barrier()
        return path

    def load_checkpoint(self) -> bool:
        latest = self.run_dir / "checkpoints" / "LATEST"
        if not latest.is_file():
            return False
        path = latest.parent / latest.read_text().strip()
        state = read_checkpoint(path)
        try:
            self.step_module.load_state_dict(state["model"])
        except RuntimeError:
            raise ValueError(f"pinclip train: {path}: written by a run of another model or loss config; "
                             f"train under another --run, or pass --restart to start this one over") from None
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        self.step = int(state["step"])
        return True

    def train_step(self) -> dict:
        rows = self.it_batches.indices(self.step)
        samples = self.image_text.__getitems__(rows)
        # augmentation draws depend only on (seed, step, rank): a resumed run draws the same crops
        samples.images = self.augment(samples.images, np.random.default_rng([self.cfg.seed + 13, self.step,
                                                                            self.env.rank]))
        it = self.it_collate(samples)
        annotations = None if self.annotations is None else torch.from_numpy(self.annotations[rows]).to(self.env.device)
        nb = self._neighbor_batch(self.step) if self.pin_pin else None
        factor = lr_factor(self.step, self.cfg.warmup_steps, self.cfg.steps)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        with torch.autocast("cpu" if self.env.device.type == "cpu" else "cuda", dtype=torch.bfloat16,
                            enabled=self.cfg.precision == "bf16"):
            total, parts = self.ddp(_to(it, self.env.device), None if nb is None else _to(nb, self.env.device),
                                    annotations)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        self.step += 1
        return {"step": self.step, "loss": total.item(), "lr": self.cfg.lr * factor,
                **{k: v.item() for k, v in parts.items()}}

    def curve_scalars(self, record: dict) -> dict[str, float]:
        """A step's curves: its losses, each parameter group's LR, and the temperature and bias of every loss
        term it trained."""
        out = {TRAIN_LOSS: record["loss"], **{f"lr/{name}": group["lr"] for name, group in
                                              zip((g[0] for g in PARAM_GROUPS), self.optimizer.param_groups)}}
        if "annotation" in record:
            out["loss/annotation"] = record["annotation"]
        for term, prefixes in self.step_module.loss.terms.items():
            for k, sigmoid in prefixes.prefix_losses.items():
                if f"{term}/{k}" in record:
                    out[f"loss/{term}/{k}"] = record[f"{term}/{k}"]
                    out[f"temperature/{term}/{k}"] = sigmoid.logit_scale.exp().item()
                    out[f"bias/{term}/{k}"] = sigmoid.logit_bias.item()
        return out

    def fit(self) -> list[dict]:
        """Train from the run's latest checkpoint (if any) to ``steps``."""
        resumed = self.load_checkpoint()      # before the config is written: a mismatch changes nothing
        if self.env.is_main:
            (self.run_dir / "config.json").write_text(json.dumps(
                {"train": dump_settings(self.cfg), "model": self.model.cfg.to_dict(),
                 "generator_version": self.world.generator_version,
                 "heldout": {"pins": len(self.split.heldout), "of": self.total_pins,
                             "share": len(self.split.heldout) / max(self.total_pins, 1),
                             "split": self.cfg.split or "cutoff+random", "why": self.split.describe(self.total_pins)},
                 "image_text_pins": len(self.image_text),
                 "texts": {"descriptive": sum(t is not None for t in self.image_text.descriptive),
                           "keyword": sum(t is not None for t in self.image_text.keyword)},
                 "misaligned_texts_dropped": self.dropped_misaligned, "pin_pin": self.pin_pin,
                 "neighbor_candidates": 0 if self.candidates is None else self.candidates.height,
                 "notes": self.notes}, indent=2))
        if resumed and self.env.is_main:
            print(f"pinclip: resumed {self.cfg.run} at step {self.step}", file=sys.stderr)
        curves = Curves(self.run_dir, self.step, self.env.is_main)
        log = []
        metrics_path = self.run_dir / "metrics.jsonl"
        bar = tqdm(total=self.cfg.steps, initial=self.step, desc=f"pinclip {self.cfg.run}", unit="step",
                   disable=not self.progress, file=sys.stderr)
        self.ddp.train()
        start = time.time()
        while self.step < self.cfg.steps:
            record = self.train_step()
            now = time.time()
            record["pairs_per_s"] = self.cfg.batch_size * self.env.world_size / max(now - start, 1e-9)
            start = now
            log.append(record)
            if self.env.is_main:
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
                curves.log(self.step, self.curve_scalars(record))
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.3f}")
            if self.step % self.cfg.checkpoint_every == 0 or self.step == self.cfg.steps:
                curves.flush()
                self.save_checkpoint()
        if self.cfg.steps == 0 and self.step == 0:
            self.save_checkpoint()   # the untrained baseline: its initial weights, evaluable like any run
        bar.close()
        curves.close()
        return log


def _to(batch, device):
    """Move every tensor field of a (nested) dataclass batch to ``device``."""
    if dataclasses.is_dataclass(batch):
        return dataclasses.replace(batch, **{f.name: _to(getattr(batch, f.name), device) for f in dataclasses.fields(batch)})
    return batch.to(device) if isinstance(batch, torch.Tensor) else batch
