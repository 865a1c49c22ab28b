"""Train and evaluate the ranking model: `python -m ranking.train [CONFIG.yaml] [key=value ...] --workdir W`.

Examples come from the organic logs with a time split: train on days < T - V, validate on days
[T - V, T), evaluate on days >= T, so fresh content in evaluation is truly unseen. Training is checked
on the validation days a few times per epoch; each check is a checkpoint, training stops when the
validation loss has not improved for ``patience`` checks, and the best check is the model that is
evaluated and served (ranking models overfit their ID tables after about one epoch). The same code
runs in one process (gloo on CPU) or under `torchrun --nproc_per_node=N` (gloo on CPU, NCCL on CUDA),
with TorchRec's planner sharding the tables. ``--write-shards DIR`` writes the examples as Parquet shards per
day instead, and ``--shards DIR`` trains on them streamed from disk (``ranking.shards``): the same model
for the same order, with memory that stays flat as the logs grow.

The settings are one model (``TrainConfig``: the model's shape and the training keys), read from a YAML
file, ``key=value`` overrides and ``--key`` options. A run (``W/ranking/runs/<run>``) resumes from its
latest check only with the settings it was started with, except the keys that only extend it
(``EXTENDS``); ``--restart`` starts it over.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
from pydantic import Field, ValidationInfo, field_validator
from safetensors.torch import save_file
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torchrec.metrics.ne import compute_cross_entropy
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from tqdm import tqdm

from pinlift.core.cli import add_debug_flag, add_quiet_flag, run_command
from pinlift.core.config import (COMMAND_LINE, add_field_options, dump_settings, given_fields, load_settings,
                                 settings_parser)
from pinlift.core.curves import TRAIN_LOSS, Curves
from pinlift.core.errors import input_error
from pinlift.core.runs import RunDir, check_name
from pinclip.embeddings import resolve
from pinworld.files import sha256_file, write_text_atomic
from pinworld.world import World
from ranking import distributed
from ranking.features import Examples, FeatureSource, Vocabs, dense_width, load_content, make_batch
from ranking.metrics import (BOOTSTRAP, format_ci, rows_digest, save_resamples, slice_masks, slice_metrics,
                             validation_warning)
from ranking.model import ModelConfig, build_model, masked_bce, served_state
from ranking.shards import Shards, concat, take, write_shards

PROGRESS = "progress.json"   # in a run's checkpoints/: every check, the latest and the best
SERVED_WEIGHTS = "weights.safetensors"   # in a run's directory: the model the scorer serves
SHUFFLE_ROWS = 1 << 20   # training rows a rank streaming shards holds and shuffles at a time (default)


def read_progress(run_dir: Path | str) -> dict | None:
    """A run's training progress (its checks, the latest and the best), or None before its first check."""
    path = Path(run_dir) / "checkpoints" / PROGRESS
    return json.loads(path.read_text()) if path.is_file() else None


# keys that only extend a run: a run may resume with other values (more epochs, more patience before stopping);
# any other key defines what is trained, and a run started with another value is refused (or --restart)
EXTENDS = ("epochs", "patience")
PROG = "ranking"   # the prefix of the commands' error lines (run_command) and of the run records' refusals


class TrainConfig(ModelConfig):
    """The settings of a ranking run: the model's shape (``ModelConfig``) and the training keys."""

    surfaces: list[str] | None = Field(None, min_length=1, description="surfaces whose impressions are trained "
                                       "and evaluated (None: every surface the workspace declares)")
    cutoff_day: int | None = Field(None, description="first evaluation day T (None: two thirds into the log window)")
    embeddings: str | None = Field(None, description="NAME[@VERSION] of a published embedding: the content feature")
    shuffle_embeddings: bool = Field(False, description="control arm: the embedding permuted across pins")
    empty_content: bool = Field(False, description="IDs only, with the content inputs present and empty (equal widths)")
    epochs: int = Field(2, gt=0, description="at most this many epochs (early stopping on the validation loss)")
    validation_days: int = Field(1, ge=0, description="last days before the cutoff held out to pick the check "
                                                      "(0: none, keep the last check)")
    checks_per_epoch: int = Field(4, gt=0, description="validation checks per epoch, each a checkpoint")
    patience: int = Field(2, gt=0, description="checks without improvement before training stops")
    batch_size: int = Field(2048, gt=0, description="training examples per step")
    lr_dense: float = Field(2e-3, gt=0, description="Adam learning rate of the dense parameters")
    lr_sparse: float = Field(0.05, gt=0, description="Adagrad learning rate of the embedding tables")
    seed: int = Field(0, description="seed of the initialization, the batch order and shuffled embeddings")
    max_boards: int = Field(5, gt=0, description="boards per user in the user's features")
    max_history: int = Field(10, gt=0, description="recent engagements per user in the user's features")
    coengagement_dim: int = Field(64, gt=0, description="co-engagement vectors: SVD rank of the user x pin save matrix")
    coengagement_every: int = Field(7, gt=0, description="days between co-engagement snapshots")
    unknown_id_share: float = Field(0.1, ge=0, lt=1, description="share of each table's ids (by a hash of the id) "
                                    "trained as unknown, so that the row where ids unseen in training are served "
                                    "learns what to predict for them (0: that row stays untrained)")

    @field_validator("shuffle_embeddings")
    @classmethod
    def _shuffle_needs_embeddings(cls, v: bool, info: ValidationInfo) -> bool:
        if v and not info.data.get("embeddings"):
            raise ValueError("expected embeddings to shuffle (embeddings=NAME or --with-pinclip), found none")
        return v

    @property
    def shape(self) -> ModelConfig:
        """The model's shape alone."""
        return ModelConfig(**self.model_dump(include=set(ModelConfig.model_fields)))

    def resolved(self, world: World) -> "TrainConfig":
        """The settings with the default cutoff, surfaces and embedding version (LATEST's) made explicit; a
        surface the workspace does not declare is refused."""
        cutoff = world.cutoff(self.cutoff_day)
        vocab = world.vocabulary
        surfaces = [vocab.surface(s).name for s in self.surfaces] if self.surfaces else list(vocab.names)
        embeddings = "@".join(resolve(world.workdir, self.embeddings)) if self.embeddings else None
        return self.model_copy(update={"cutoff_day": cutoff, "surfaces": surfaces, "embeddings": embeddings})


def run_settings(cfg: TrainConfig, world: World) -> dict:
    """What defines a run of ``cfg`` on ``world`` (its run file's config): the resolved settings and the
    vocabulary (surfaces and tasks) it is trained with."""
    return {**dump_settings(cfg.resolved(world)), "vocabulary": world.vocabulary.model_dump(mode="json")}


def default_run_name(cfg: TrainConfig) -> str:
    """``ids_s0``, ``pinclip_s1``, ``pinclip_shuffled_s0``: from the arm and the seed."""
    if not cfg.embeddings:
        return f"ids_s{cfg.seed}"
    return cfg.embeddings.split("@")[0] + ("_shuffled" if cfg.shuffle_embeddings else "") + f"_s{cfg.seed}"


def _impressions(world: World, cfg: TrainConfig) -> tuple[pl.DataFrame, pl.DataFrame | None, pl.DataFrame]:
    """Training, validation (None without validation days) and evaluation impressions."""
    surfaces = list(cfg.surfaces)
    train = world.impressions(as_of=cfg.cutoff_day, surfaces=surfaces)
    evaluation = world.impressions(since=cfg.cutoff_day, surfaces=surfaces)
    if train.height == 0 or evaluation.height == 0:
        raise ValueError(f"ranking: {world.workdir / 'logs'}: expected impressions before and after day "
                         f"{cfg.cutoff_day} on {surfaces}, found {train.height} and {evaluation.height}")
    if cfg.validation_days <= 0:
        return train, None, evaluation
    split = cfg.cutoff_day - cfg.validation_days
    validation, train = train.filter(pl.col("day") >= split), train.filter(pl.col("day") < split)
    if train.height == 0 or validation.height == 0:
        raise ValueError(f"ranking: validation_days {cfg.validation_days}: expected impressions before day {split} "
                         f"and on days [{split}, {cfg.cutoff_day}), found {train.height} and {validation.height}")
    return train, validation, evaluation



def _batches(n: int, batch_size: int, env: distributed.Env, rng: np.random.Generator | None) -> list[np.ndarray]:
    """This rank's batches; every rank gets the same number (DDP steps in lockstep)."""
    order = rng.permutation(n) if rng is not None else np.arange(n)
    chunks = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    per_rank = len(chunks) // env.world_size if rng is not None else -(-len(chunks) // env.world_size)
    mine = chunks[env.rank::env.world_size][:per_rank]
    while len(mine) < per_rank:          # evaluation: pad with empty batches so collectives line up
        mine.append(np.zeros(0, np.int64))
    return mine


class Trainer:
    """Builds features and the sharded model, trains with checkpoints, evaluates on slices."""

    def __init__(self, cfg: TrainConfig, workdir: Path | str = "pinwork", run: str | None = None, *,
                 restart: bool = False, env: distributed.Env | None = None, prog: str = PROG, quiet: bool = False,
                 shards: Path | str | None = None, shuffle_rows: int = SHUFFLE_ROWS):
        """``run`` (default: from the arm and seed) resumes in ``W/ranking/runs/<run>`` when its defining
        settings match (else InputError), or starts over with ``restart``; ``quiet``: no progress bars or notes;
        ``shards``: train on examples streamed from ``ranking.shards``' directory, ``shuffle_rows`` at a time."""
        self.run = check_name(run or default_run_name(cfg), "run name")
        self.env = env or distributed.setup()
        self.workdir = str(workdir)
        self.world = World(workdir)
        self.vocab = self.world.vocabulary
        self.cfg = cfg.resolved(self.world)
        self.restart, self.quiet = restart, quiet
        self.run_record = RunDir(Path(workdir) / "ranking" / "runs", self.run, prog, extends=EXTENDS)
        self.run_dir = self.run_record.path
        if not restart:   # refuse before the features are built
            self.run_record.check_resume(run_settings(self.cfg, self.world))
        torch.manual_seed(self.cfg.seed)
        self.shards, self.shuffle_rows = None, shuffle_rows
        if shards is None:
            source = FeatureSource(self.world, self.cfg.max_boards, self.cfg.max_history, self.cfg.coengagement_dim,
                                   self.cfg.coengagement_every)
            train_imp, val_imp, eval_imp = _impressions(self.world, self.cfg)
            self.train_ex = source.examples(train_imp)
            self.val_ex = source.examples(val_imp) if val_imp is not None else None
            self.eval_ex = source.examples(eval_imp)
            self.vocabs = Vocabs.fit(self.train_ex)
            self.train_rows, self.seen_pins = len(self.train_ex), np.unique(self.train_ex.pin_id, return_counts=True)
        else:   # the training examples stay on disk
            self.shards, self.train_ex = Shards(shards, self.cfg, self.world), None
            # validation and evaluation too: their ids and labels in memory, their features read a row group at a time
            self.val_ex, self.eval_ex = self.shards.keys("validation"), self.shards.keys("eval")
            self.vocabs, self.seen_pins = self.shards.fit()
            self.train_rows = self.shards.rows("train")
        self.vocabs = self.vocabs.holding_out(self.cfg.unknown_id_share)
        self.content = load_content(self.workdir, self.cfg.embeddings, seed=self.cfg.seed,
                                    shuffled=self.cfg.shuffle_embeddings, empty=self.cfg.empty_content)
        model = build_model(self.vocabs.sizes(), dense_width(self.vocab, self.content is not None), self.cfg.shape,
                            len(self.vocab.tasks), dense_device=self.env.device)
        apply_optimizer_in_backward(torch.optim.Adagrad, model.sparse_arch.parameters(), {"lr": self.cfg.lr_sparse})
        self.model = distributed.wrap(model, self.env)
        dense = KeyedOptimizerWrapper(
            {n: p for n, p in self.model.named_parameters() if "sparse_arch" not in n},
            lambda params: torch.optim.Adam(params, lr=self.cfg.lr_dense))
        self.dense_optimizer = dense
        self.optimizer = CombinedOptimizer([self.model.fused_optimizer, dense])
        # where training is (epoch, step within it), every check so far, the latest and the best one
        self.progress = {"epoch": 0, "step": 0, "checks": [], "latest": None, "best": None, "stopped": False}

    # ---- checkpoints ------------------------------------------------------------------------------

    def _state(self) -> dict:
        return {"model": self.model.state_dict(), "optim": self.optimizer.state_dict()}

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def save_checkpoint(self, name: str) -> Path:
        """Save the model and optimizer as check ``name``, then the progress that points at it; checks
        that are neither the latest nor the best are deleted."""
        path = self.checkpoint_dir / name
        dcp.save(self._state(), checkpoint_id=str(path))
        dist.barrier()
        if self.env.is_main:
            write_text_atomic(self.checkpoint_dir / PROGRESS, json.dumps(self.progress, indent=2))
            keep = {self.progress["latest"], self.progress["best"], PROGRESS}
            for old in self.checkpoint_dir.iterdir():
                if old.name not in keep and old.name.startswith("check-"):
                    shutil.rmtree(old)
        dist.barrier()
        return path

    def write_served(self) -> None:
        """The model as it now is (the best check), as ``weights.safetensors`` beside ``config.json``, whose
        ``served`` records the file, its sha256 and the check: what the scorer loads (never the checkpoints,
        which DCP unpickles and which serve only to resume one's own training)."""
        state = served_state(self.model, self.env.rank, self.env.device)
        if self.env.is_main:
            path, tmp = self.run_dir / SERVED_WEIGHTS, self.run_dir / (SERVED_WEIGHTS + ".tmp")
            save_file(state, str(tmp))
            tmp.replace(path)
            served = {"file": SERVED_WEIGHTS, "sha256": sha256_file(path), "check": self.progress["best"]}
            write_text_atomic(self.run_dir / "config.json", json.dumps({**self.run_config(), "served": served}, indent=2))
        dist.barrier()

    def _load(self, name: str) -> None:
        self.dense_optimizer.init_state()   # Adam creates its state lazily: make the keys to load into
        state = self._state()
        dcp.load(state, checkpoint_id=str(self.checkpoint_dir / name))
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optim"])

    def load_checkpoint(self) -> bool:
        """Resume from the latest check, if there is one."""
        progress = read_progress(self.run_dir)
        if progress is None:
            return False
        self._load(progress["latest"])
        self.progress = progress
        return True

    # ---- training and evaluation ------------------------------------------------------------------

    def steps_done(self, step: int | None = None) -> int:
        """Training batches done by ``step`` of the current epoch (default: where training is)."""
        per_epoch = (self.shards.batches_per_rank(self.cfg.batch_size, self.env) if self.shards is not None
                     else -(-self.train_rows // self.cfg.batch_size) // self.env.world_size)   # as ``_batches`` deals
        return self.progress["epoch"] * per_epoch + (self.progress["step"] if step is None else step)

    def batch(self, ex: Examples, rows: np.ndarray):
        return make_batch(ex, rows, self.vocabs, self.content).to(self.env.device)

    def train_epoch(self) -> None:
        """Train the rest of the current epoch, checking on the validation days ``checks_per_epoch``
        times; stops at a check that ends training."""
        epoch = self.progress["epoch"]
        if self.shards is None:
            rng = np.random.default_rng([self.cfg.seed, epoch])
            batches = [(self.train_ex, rows)
                       for rows in _batches(len(self.train_ex), self.cfg.batch_size, self.env, rng)]
            n = len(batches)
        else:
            n = self.shards.batches_per_rank(self.cfg.batch_size, self.env)
            batches = self.shards.batches(self.cfg.batch_size, self.env, [self.cfg.seed, epoch], self.shuffle_rows)
        batches = itertools.islice(batches, self.progress["step"], None)   # resuming: the batches not yet trained
        checks = {max(1, round(n * (k + 1) / self.cfg.checks_per_epoch)) for k in range(self.cfg.checks_per_epoch)}
        losses = []
        bar = tqdm(range(self.progress["step"], n), desc=f"{self.run} epoch {epoch + 1}/{self.cfg.epochs}",
                   unit="batch", initial=self.progress["step"], total=n, disable=self.quiet or not self.env.is_main, file=sys.stderr)
        self.model.train()
        for i, (ex, rows) in zip(bar, batches):
            b = self.batch(ex, rows)
            loss = masked_bce(self.model(b.dense_features, b.sparse_features), b.labels)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            losses.append(loss.item())
            self.curves.log(self.steps_done(i + 1), {TRAIN_LOSS: losses[-1]})
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
            if i + 1 in checks:
                self.check(epoch + (i + 1) / n, float(np.mean(losses)), epoch_done=i + 1 == n, step=i + 1)
                losses = []
                if self.progress["stopped"]:
                    break
                self.model.train()
        bar.close()

    def validation_loss(self) -> float:
        """Binary cross-entropy over every labelled task of the validation examples, as in training."""
        y = self.val_ex.labels
        on = ~np.isnan(y)
        p = torch.from_numpy(self.predict_split("validation", self.val_ex)[on].astype(np.float64))
        return float(compute_cross_entropy(torch.from_numpy(y[on].astype(np.float64)), p, torch.ones_like(p),
                                           1e-12).mean())

    def best_check(self) -> dict | None:
        """The check with the lowest validation loss so far (the latest one without validation days)."""
        return next((c for c in self.progress["checks"] if c["checkpoint"] == self.progress["best"]), None)

    def check(self, epochs: float, train_loss: float, *, epoch_done: bool, step: int) -> None:
        """Record a check (validation loss, the best so far, whether to stop) and save it as a checkpoint."""
        pr = self.progress
        pr["epoch"], pr["step"] = (pr["epoch"] + 1, 0) if epoch_done else (pr["epoch"], step)
        val = self.validation_loss() if self.val_ex is not None else None
        name = f"check-{len(pr['checks']) + 1:03d}"
        best = self.best_check()
        if val is None or best is None or val < best["validation_loss"]:
            pr["best"] = name
        pr["checks"].append({"checkpoint": name, "epochs": round(epochs, 4), "train_loss": train_loss,
                             "validation_loss": val})
        since_best = len(pr["checks"]) - 1 - pr["checks"].index(self.best_check())
        pr["stopped"] = val is not None and since_best >= self.cfg.patience
        pr["latest"] = name
        scalars = {"lr/dense": self.cfg.lr_dense, "lr/sparse": self.cfg.lr_sparse}   # constant: no LR schedule
        self.curves.log(self.steps_done(), scalars if val is None else {**scalars, "loss/validation": val})
        self.curves.flush()
        self.save_checkpoint(name)

    @torch.no_grad()
    def predict(self, ex: Examples) -> np.ndarray:
        """Probabilities (n, len(vocab.tasks)) for every example, gathered on every rank."""
        self.model.eval()
        rows_out, preds_out = [], []
        for rows in _batches(len(ex), 4 * self.cfg.batch_size, self.env, None):
            if len(rows) == 0:
                dummy = self.batch(ex, np.zeros(1, np.int64))   # keeps the collectives in step
                self.model(dummy.dense_features, dummy.sparse_features)
                continue
            b = self.batch(ex, rows)
            preds_out.append(torch.sigmoid(self.model(b.dense_features, b.sparse_features)).float().cpu().numpy())
            rows_out.append(rows)
        local = (np.concatenate(rows_out) if rows_out else np.zeros(0, np.int64),
                 np.concatenate(preds_out) if preds_out else np.zeros((0, len(self.vocab.tasks)), np.float32))
        gathered = [None] * self.env.world_size
        dist.all_gather_object(gathered, local)
        out = np.zeros((len(ex), len(self.vocab.tasks)), np.float32)
        for rows, preds in gathered:
            out[rows] = preds
        return out

    def predict_split(self, split: str, ex: Examples) -> np.ndarray:
        """``predict`` of the validation or evaluation examples ``ex``: in memory, or streamed from the shards a
        row group at a time (``ex`` then holds only their ids and labels)."""
        if self.shards is None:
            return self.predict(ex)
        step = 4 * self.cfg.batch_size * self.env.world_size   # whole rounds of predict's batches: the same batches
        out, carry = [], None                                   # as in memory, so bit for bit the same predictions
        for chunk in self.shards.chunks(split):
            buf = chunk if carry is None else concat([carry, chunk])
            whole = len(buf) - len(buf) % step
            if whole:
                out.append(self.predict(take(buf, np.arange(whole))))
            carry = take(buf, np.arange(whole, len(buf))) if whole < len(buf) else None
        if carry is not None:
            out.append(self.predict(carry))
        return np.concatenate(out)

    def evaluate(self) -> tuple[dict, np.ndarray, dict]:
        """The report (per task and slice: rows, positives, users, AUC and its user-bootstrap interval, NE,
        calibration; a warning on too small validation days), the predictions, and per (task, slice) the
        resampled AUCs with the digest of the rows they are computed on."""
        preds = self.predict_split("eval", self.eval_ex)
        ex = self.eval_ex
        seen_ids, seen_counts = self.seen_pins
        pos = np.minimum(np.searchsorted(seen_ids, ex.pin_id), len(seen_ids) - 1)
        train_impressions = np.where(seen_ids[pos] == ex.pin_id, seen_counts[pos], 0)
        masks = slice_masks(ex.day, ex.created_day, ex.is_ad, train_impressions)
        results, resampled = {}, {}
        for j, (surface, task) in enumerate(self.vocab.tasks):
            on = ~np.isnan(ex.labels[:, j])
            if not on.any():
                continue
            key = f"{surface}/{task}"
            results[key] = {}
            for name, m in masks.items():
                rows = on & m
                got = slice_metrics(preds[rows, j], ex.labels[rows, j], ex.user_id[rows])
                results[key][name] = got[0] if got else None
                if got:
                    resampled[key, name] = got[1], rows_digest(ex.user_id[rows], ex.pin_id[rows], ex.day[rows],
                                                               ex.labels[rows, j])
        val = self.val_ex
        val_positives = int(np.nansum(val.labels)) if val is not None else 0
        return {"run": self.run, "embeddings": self.content.ref if self.content else None,
                "cutoff_day": self.cfg.cutoff_day, "generator_version": self.world.generator_version,
                "train_examples": self.train_rows,
                "validation_examples": len(val) if val is not None else 0, "validation_positives": val_positives,
                "validation_warning": validation_warning(len(val), val_positives) if val is not None else None,
                "eval_examples": len(ex), "bootstrap": BOOTSTRAP, "metrics": results}, preds, resampled

    def run_config(self) -> dict:
        """``config.json``: the run's settings as the scorer reads them (the model's shape under ``model``, the
        surfaces and tasks under ``vocabulary``, the vectors it is trained on under ``embedding``:
        ``features.embedding_record``); ``write_served`` adds the served weights under ``served``."""
        keys = self.cfg.model_dump(mode="json", exclude=set(ModelConfig.model_fields))
        return {"workdir": self.workdir, "run": self.run, **keys, "model": self.cfg.shape.model_dump(mode="json"),
                "vocabulary": self.vocab.model_dump(mode="json"),
                "embedding": self.content.embedding if self.content else None}

    def fit(self) -> dict:
        """Train (resuming from the latest check, unless ``restart``), then evaluate the best check."""
        if self.env.is_main:
            self.run_record.start(run_settings(self.cfg, self.world), restart=self.restart,
                                  embeddings_ref=self.content.ref if self.content else None)
            (self.run_dir / "config.json").write_text(json.dumps(self.run_config(), indent=2))
            np.savez(self.run_dir / "vocab.npz", **self.vocabs.to_arrays())
        dist.barrier()
        if self.load_checkpoint() and self.env.is_main and not self.quiet:
            print(f"ranking: resumed {self.run} at {self.progress['latest']}", file=sys.stderr)
        self.curves = Curves(self.run_dir, self.steps_done(), self.env.is_main)
        start = time.time()
        while not self.progress["stopped"] and self.progress["epoch"] < self.cfg.epochs:
            self.train_epoch()
        seconds = time.time() - start
        if self.progress["best"] != self.progress["latest"]:
            self._load(self.progress["best"])
        self.write_served()
        report, preds, resampled = self.evaluate()
        report.update(best_check=self.best_check(), stopped_early=self.progress["stopped"], checks=self.progress["checks"],
                      train_seconds=round(seconds, 2))
        aucs = {f"eval_auc/{task}/{name}": m["auc"] for task, slices in report["metrics"].items()
                for name, m in slices.items() if m is not None}
        self.curves.log(self.steps_done(), aucs)
        self.curves.close()
        if self.env.is_main:
            if report["validation_warning"]:
                print(report["validation_warning"], file=sys.stderr)
            (self.run_dir / "eval.json").write_text(json.dumps(report, indent=2))
            np.save(self.run_dir / "eval_predictions.npy", preds, allow_pickle=False)
            save_resamples(self.run_dir, resampled)
        return report


def _selection_line(report: dict) -> str:
    best, last = report["best_check"], report["checks"][-1]
    if best["validation_loss"] is None:
        return f"  model: the last check, after {best['epochs']:g} epochs (no validation days)"
    how = "stopped early" if report["stopped_early"] else "ran every epoch"
    few = "; too few to pick on" if report["validation_warning"] else ""
    return (f"  model: the best check, after {best['epochs']:g} epochs (validation loss {best['validation_loss']:.5f} "
            f"on {report['validation_examples']:,} rows, {report['validation_positives']:,} positives{few}; "
            f"{how} at {last['epochs']:g})")


def format_report(report: dict) -> str:
    """The printed evaluation table per surface and task, with slices: rows, positives, users, AUC and its
    interval (a bootstrap of users), NE, calibration."""
    boot = report["bootstrap"]
    lines = [f"ranking run {report['run']}  (embeddings: {report['embeddings']}, cutoff day {report['cutoff_day']}, "
             f"{report['train_examples']:,} train / {report['validation_examples']:,} validation / "
             f"{report['eval_examples']:,} eval examples)",
             _selection_line(report),
             f"  AUC interval: {boot['level']:.0%}, {boot['resamples']} resamples of users (Poisson bootstrap)",
             f"  {'task':<18}{'slice':<24}{'n':>11}{'positives':>11}{'users':>8}{'AUC':>8}  {'interval':<18}"
             f"{'NE':>8}{'calib':>8}"]
    for task, slices in report["metrics"].items():
        for name, m in slices.items():
            if m is None:
                continue
            lines.append(f"  {task:<18}{name:<24}{m['n']:>11,}{m['positives']:>11,}{m['users']:>8,}{m['auc']:>8.4f}  "
                         f"{format_ci(m['auc_ci']):<18}{m['ne']:>8.4f}{m['calibration']:>8.3f}")
    return "\n".join(lines)


def split_config_args(items: list[str]) -> tuple[str | None, list[str]]:
    """The positional arguments ``[CONFIG.yaml] [key=value ...]``: the config file (or None) and the overrides."""
    files = [x for x in items if "=" not in x]
    if len(files) > 1:
        raise input_error(COMMAND_LINE, "config", "one YAML file and key=value overrides",
                          ", ".join(repr(x) for x in files))
    return (files[0] if files else None), [x for x in items if "=" in x]


def add_settings_arguments(ap: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """``[CONFIG.yaml] [key=value ...]`` and a ``--field-name`` option per setting not in ``skip``."""
    ap.add_argument("settings", nargs="*", metavar="CONFIG.yaml | key=value",
                    help="a YAML file of settings and/or key=value overrides (the keys below)")
    add_field_options(ap, TrainConfig, skip=skip)


def load_train_config(args: argparse.Namespace, defaults: dict | None = None,
                      overrides: list[str] = ()) -> TrainConfig:
    """The settings of parsed ``args``: ``defaults``, then the config file, then the key=value and
    ``--field-name`` overrides (with ``overrides`` last)."""
    path, items = split_config_args(args.settings)
    return load_settings(TrainConfig, path, [*items, *given_fields(args), *overrides], defaults=defaults)


def build_parser() -> argparse.ArgumentParser:
    ap = settings_parser("python -m ranking.train", __doc__.splitlines()[0], TrainConfig)
    add_settings_arguments(ap, skip=("surfaces",))
    ap.add_argument("--workdir", default="pinwork", help="the workspace (default pinwork)")
    ap.add_argument("--with-pinclip", action="store_true",
                    help="add the published PinCLIP embedding (embeddings=pinclip unless embeddings is set)")
    ap.add_argument("--surface", default=None,
                    help="train on one surface the workspace declares, or all (sets surfaces; default: all)")
    ap.add_argument("--run-name", default=None, help="run directory name (default: from the arm and seed)")
    ap.add_argument("--restart", action="store_true",
                    help="start the run over (a run resumes only with the settings it was started with, "
                         f"except {', '.join(EXTENDS)})")
    ap.add_argument("--write-shards", metavar="DIR", default=None,
                    help="write the settings' examples as Parquet shards per day into DIR (new or empty), then stop")
    ap.add_argument("--shards", metavar="DIR", default=None,
                    help="train on the examples of --write-shards DIR, streamed from disk (default: built in memory)")
    ap.add_argument("--shuffle-rows", type=int, default=SHUFFLE_ROWS,
                    help=f"with --shards: training rows shuffled together (default {SHUFFLE_ROWS})")
    add_quiet_flag(ap)
    add_debug_flag(ap)
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_intermixed_args(argv)

    def run() -> int:
        if args.run_name is not None:
            check_name(args.run_name, "--run-name")
        surfaces = None if args.surface is None else "null" if args.surface == "all" else f"[{args.surface}]"
        cfg = load_train_config(args, defaults={"embeddings": "pinclip"} if args.with_pinclip else None,
                                overrides=[f"surfaces={surfaces}"] if surfaces else [])
        if args.write_shards is not None:
            if args.shards is not None:
                raise input_error(COMMAND_LINE, "--write-shards", "no --shards (write the shards, then train on "
                                  "them)", f"--shards {args.shards}")
            world = World(args.workdir)
            manifest = write_shards(world, cfg.resolved(world), args.write_shards)
            print(f"ranking: wrote {sum(s['rows'] for split in manifest['splits'].values() for s in split):,} "
                  f"examples to {args.write_shards}")
            return 0
        trainer = Trainer(cfg, args.workdir, args.run_name, restart=args.restart, quiet=args.quiet,
                          shards=args.shards, shuffle_rows=args.shuffle_rows)
        report = trainer.fit()
        if trainer.env.is_main:
            print(format_report(report))
        return 0

    return run_command(PROG, run, args.debug)


if __name__ == "__main__":
    sys.exit(main())
