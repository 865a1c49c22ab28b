"""Train and evaluate the ranking model: `python -m ranking.train [--with-pinclip] --workdir W`.

Examples come from the organic logs with a time split: train on days < T - V, validate on days
[T - V, T), evaluate on days >= T, so fresh content in evaluation is truly unseen. Training is checked
on the validation days a few times per epoch; each check is a checkpoint, training stops when the
validation loss has not improved for ``patience`` checks, and the best check is the model that is
evaluated and served (ranking models overfit their ID tables after about one epoch). The same code
runs in one process (gloo on CPU) or under `torchrun --nproc_per_node=N` (gloo on CPU, NCCL on CUDA),
with TorchRec's planner sharding the tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torchrec.metrics.ne import compute_cross_entropy
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from tqdm import tqdm

from pinworld.files import write_text_atomic
from pinworld.world import World
from ranking import distributed
from ranking.features import (SURFACES, TASKS, Examples, FeatureSource, Vocabs, dense_width, load_content,
                              make_batch)
from ranking.metrics import binary_metrics, slice_masks
from ranking.model import ModelConfig, build_model, masked_bce

PROGRESS = "progress.json"   # in a run's checkpoints/: every check, the latest and the best


def read_progress(run_dir: Path | str) -> dict | None:
    """A run's training progress (its checks, the latest and the best), or None before its first check."""
    path = Path(run_dir) / "checkpoints" / PROGRESS
    return json.loads(path.read_text()) if path.is_file() else None


@dataclass
class TrainConfig:
    workdir: str = "pinwork"
    run: str | None = None
    surfaces: tuple[str, ...] = SURFACES
    cutoff_day: int | None = None          # default: two thirds into the log window
    embeddings: str | None = None          # NAME[@VERSION] of a published embedding: the content feature
    shuffle_embeddings: bool = False       # control arm: the embedding permuted across pins
    empty_content: bool = False            # IDs-only with the content inputs present and empty (equal widths)
    epochs: int = 2                        # at most: early stopping on the validation loss
    validation_days: int = 1               # the last days before the cutoff, held out to pick the check (0: none)
    checks_per_epoch: int = 4              # validation checks, each a checkpoint
    patience: int = 2                      # checks without improvement before training stops
    batch_size: int = 2048
    lr_dense: float = 2e-3
    lr_sparse: float = 0.05
    seed: int = 0
    max_boards: int = 5
    max_history: int = 10
    coengagement_dim: int = 64             # co-engagement vectors: SVD rank of the user x pin save matrix
    coengagement_every: int = 7            # days between co-engagement snapshots
    model: ModelConfig = field(default_factory=ModelConfig)

    def resolved(self, world: World) -> "TrainConfig":
        cutoff = self.cutoff_day if self.cutoff_day is not None else (2 * world.config.days) // 3
        run = self.run or ("ids" if not self.embeddings else self.embeddings.split("@")[0]
                           + ("_shuffled" if self.shuffle_embeddings else "")) + f"_s{self.seed}"
        return dataclasses.replace(self, cutoff_day=cutoff, run=run)


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

    def __init__(self, cfg: TrainConfig, env: distributed.Env | None = None):
        self.env = env or distributed.setup()
        self.world = World(cfg.workdir)
        self.cfg = cfg.resolved(self.world)
        self.run_dir = Path(cfg.workdir) / "ranking" / "runs" / self.cfg.run
        torch.manual_seed(self.cfg.seed)
        source = FeatureSource(self.world, self.cfg.max_boards, self.cfg.max_history, self.cfg.coengagement_dim,
                               self.cfg.coengagement_every)
        train_imp, val_imp, eval_imp = _impressions(self.world, self.cfg)
        self.train_ex = source.examples(train_imp)
        self.val_ex = source.examples(val_imp) if val_imp is not None else None
        self.eval_ex = source.examples(eval_imp)
        self.vocabs = Vocabs.fit(self.train_ex)
        self.content = load_content(self.cfg.workdir, self.cfg.embeddings, seed=self.cfg.seed,
                                    shuffled=self.cfg.shuffle_embeddings, empty=self.cfg.empty_content)
        model = build_model(self.vocabs.sizes(), dense_width(self.content is not None), self.cfg.model,
                            dense_device=self.env.device)
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

    def batch(self, ex: Examples, rows: np.ndarray):
        return make_batch(ex, rows, self.vocabs, self.content).to(self.env.device)

    def train_epoch(self) -> None:
        """Train the rest of the current epoch, checking on the validation days ``checks_per_epoch``
        times; stops at a check that ends training."""
        epoch = self.progress["epoch"]
        rng = np.random.default_rng([self.cfg.seed, epoch])
        batches = _batches(len(self.train_ex), self.cfg.batch_size, self.env, rng)
        n = len(batches)
        checks = {max(1, round(n * (k + 1) / self.cfg.checks_per_epoch)) for k in range(self.cfg.checks_per_epoch)}
        losses = []
        bar = tqdm(range(self.progress["step"], n), desc=f"{self.cfg.run} epoch {epoch + 1}/{self.cfg.epochs}",
                   unit="batch", initial=self.progress["step"], total=n, disable=not self.env.is_main, file=sys.stderr)
        self.model.train()
        for i in bar:
            b = self.batch(self.train_ex, batches[i])
            loss = masked_bce(self.model(b.dense_features, b.sparse_features), b.labels)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            losses.append(loss.item())
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
        p = torch.from_numpy(self.predict(self.val_ex)[on].astype(np.float64))
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
        self.save_checkpoint(name)

    @torch.no_grad()
    def predict(self, ex: Examples) -> np.ndarray:
        """Probabilities (n, len(TASKS)) for every example, gathered on every rank."""
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
                 np.concatenate(preds_out) if preds_out else np.zeros((0, len(TASKS)), np.float32))
        gathered = [None] * self.env.world_size
        dist.all_gather_object(gathered, local)
        out = np.zeros((len(ex), len(TASKS)), np.float32)
        for rows, preds in gathered:
            out[rows] = preds
        return out

    def evaluate(self) -> dict:
        preds = self.predict(self.eval_ex)
        ex = self.eval_ex
        seen_ids, seen_counts = np.unique(self.train_ex.pin_id, return_counts=True)
        pos = np.minimum(np.searchsorted(seen_ids, ex.pin_id), len(seen_ids) - 1)
        train_impressions = np.where(seen_ids[pos] == ex.pin_id, seen_counts[pos], 0)
        masks = slice_masks(ex.day, ex.created_day, ex.is_ad, train_impressions)
        results = {}
        for j, (surface, task) in enumerate(TASKS):
            on = ~np.isnan(ex.labels[:, j])
            if not on.any():
                continue
            results[f"{surface}/{task}"] = {name: binary_metrics(preds[on & m, j], ex.labels[on & m, j])
                                            for name, m in masks.items()}
        return {"run": self.cfg.run, "embeddings": self.content.ref if self.content else None,
                "cutoff_day": self.cfg.cutoff_day, "generator_version": self.world.generator_version,
                "train_examples": len(self.train_ex),
                "validation_examples": len(self.val_ex) if self.val_ex is not None else 0,
                "eval_examples": len(ex), "metrics": results}, preds

    def fit(self, resume: bool = True) -> dict:
        if self.env.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.json").write_text(json.dumps(dataclasses.asdict(self.cfg), indent=2))
            np.savez(self.run_dir / "vocab.npz", **self.vocabs.to_arrays())
        dist.barrier()
        if resume and self.load_checkpoint() and self.env.is_main:
            print(f"ranking: resumed {self.cfg.run} at {self.progress['latest']}", file=sys.stderr)
        start = time.time()
        while not self.progress["stopped"] and self.progress["epoch"] < self.cfg.epochs:
            self.train_epoch()
        seconds = time.time() - start
        if self.progress["best"] != self.progress["latest"]:
            self._load(self.progress["best"])
        report, preds = self.evaluate()
        report.update(best_check=self.best_check(), stopped_early=self.progress["stopped"], checks=self.progress["checks"],
                      train_seconds=round(seconds, 2))
        if self.env.is_main:
            (self.run_dir / "eval.json").write_text(json.dumps(report, indent=2))
            np.save(self.run_dir / "eval_predictions.npy", preds, allow_pickle=False)
        return report


def _selection_line(report: dict) -> str:
    best, last = report["best_check"], report["checks"][-1]
    if best["validation_loss"] is None:
        return f"  model: the last check, after {best['epochs']:g} epochs (no validation days)"
    how = "stopped early" if report["stopped_early"] else "ran every epoch"
    return (f"  model: the best check, after {best['epochs']:g} epochs (validation loss {best['validation_loss']:.5f}; "
            f"{how} at {last['epochs']:g})")


def format_report(report: dict) -> str:
    """The printed evaluation table: AUC / NE / calibration per surface and task, with slices."""
    lines = [f"ranking run {report['run']}  (embeddings: {report['embeddings']}, cutoff day {report['cutoff_day']}, "
             f"{report['train_examples']:,} train / {report['validation_examples']:,} validation / "
             f"{report['eval_examples']:,} eval examples)",
             _selection_line(report),
             f"  {'task':<18}{'slice':<24}{'n':>9}{'AUC':>8}{'NE':>8}{'calib':>8}"]
    for task, slices in report["metrics"].items():
        for name, m in slices.items():
            if m is None:
                continue
            lines.append(f"  {task:<18}{name:<24}{m['n']:>9,}{m['auc']:>8.4f}{m['ne']:>8.4f}{m['calibration']:>8.3f}")
    return "\n".join(lines)


def parse_args(argv=None) -> tuple[TrainConfig, bool]:
    ap = argparse.ArgumentParser(prog="python -m ranking.train", description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="pinwork")
    ap.add_argument("--with-pinclip", action="store_true", help="add the published PinCLIP embedding (pinclip@LATEST)")
    ap.add_argument("--embeddings", default=None, help="NAME[@VERSION] of the dense content embedding")
    ap.add_argument("--shuffle-embeddings", action="store_true", help="control: embeddings permuted across pins")
    ap.add_argument("--surface", default="all", choices=[*SURFACES, "all"])
    ap.add_argument("--run-name", default=None, help="run directory name (default: from the arm and seed)")
    ap.add_argument("--cutoff-day", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=2, help="at most this many epochs")
    ap.add_argument("--validation-days", type=int, default=1,
                    help="last days before the cutoff held out for early stopping (0: none, keep the last check)")
    ap.add_argument("--patience", type=int, default=2, help="checks without improvement before stopping")
    ap.add_argument("--batch-size", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints")
    a = ap.parse_args(argv)
    embeddings = a.embeddings or ("pinclip" if a.with_pinclip else None)
    cfg = TrainConfig(workdir=a.workdir, run=a.run_name, surfaces=SURFACES if a.surface == "all" else (a.surface,),
                      cutoff_day=a.cutoff_day, embeddings=embeddings, shuffle_embeddings=a.shuffle_embeddings,
                      epochs=a.epochs, validation_days=a.validation_days, patience=a.patience,
                      batch_size=a.batch_size, seed=a.seed)
    if cfg.shuffle_embeddings and not cfg.embeddings:
        ap.error("--shuffle-embeddings needs --embeddings or --with-pinclip")
    return cfg, not a.no_resume


def main(argv=None) -> int:
    cfg, resume = parse_args(argv)
    try:
        trainer = Trainer(cfg)
        report = trainer.fit(resume=resume)
    except (FileNotFoundError, ValueError) as exc:
        print(str(exc).splitlines()[0], file=sys.stderr)
        return 2
    if trainer.env.is_main:
        print(format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
