"""Train and evaluate the ranking model: `python -m ranking.train [--with-pinclip] --workdir W`.

Examples come from the organic logs with a time split: train on days < T, evaluate on days >= T, so
fresh content in evaluation is truly unseen. The same code runs in one process (gloo on CPU) or under
`torchrun --nproc_per_node=N` (gloo on CPU, NCCL on CUDA), with TorchRec's planner sharding the tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from tqdm import tqdm

from pinworld.world import World
from ranking import distributed
from ranking.features import (SURFACES, TASKS, Examples, FeatureSource, Vocabs, dense_width, load_content,
                              make_batch)
from ranking.metrics import binary_metrics, slice_masks
from ranking.model import ModelConfig, build_model, masked_bce


@dataclass
class TrainConfig:
    workdir: str = "pinwork"
    run: str | None = None
    surfaces: tuple[str, ...] = SURFACES
    cutoff_day: int | None = None          # default: two thirds into the log window
    embeddings: str | None = None          # NAME[@VERSION] of a published embedding: the content feature
    shuffle_embeddings: bool = False       # control arm: the embedding permuted across pins
    empty_content: bool = False            # IDs-only with the content inputs present and empty (equal widths)
    epochs: int = 2
    batch_size: int = 2048
    lr_dense: float = 2e-3
    lr_sparse: float = 0.05
    seed: int = 0
    max_boards: int = 5
    max_history: int = 10
    model: ModelConfig = field(default_factory=ModelConfig)

    def resolved(self, world: World) -> "TrainConfig":
        cutoff = self.cutoff_day if self.cutoff_day is not None else (2 * world.config.days) // 3
        run = self.run or ("ids" if not self.embeddings else self.embeddings.split("@")[0]
                           + ("_shuffled" if self.shuffle_embeddings else "")) + f"_s{self.seed}"
        return dataclasses.replace(self, cutoff_day=cutoff, run=run)


def _impressions(world: World, cfg: TrainConfig) -> tuple[pl.DataFrame, pl.DataFrame]:
    surfaces = list(cfg.surfaces)
    train = world.impressions(as_of=cfg.cutoff_day, surfaces=surfaces)
    evaluation = world.impressions(since=cfg.cutoff_day, surfaces=surfaces)
    if train.height == 0 or evaluation.height == 0:
        raise ValueError(f"ranking: {world.workdir / 'logs'}: expected impressions before and after day "
                         f"{cfg.cutoff_day} on {surfaces}, found {train.height} and {evaluation.height}")
    return train, evaluation



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
        source = FeatureSource(self.world, self.cfg.max_boards, self.cfg.max_history)
        train_imp, eval_imp = _impressions(self.world, self.cfg)
        self.train_ex = source.examples(train_imp)
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
        self.epoch = 0

    # ---- checkpoints ------------------------------------------------------------------------------

    def _state(self) -> dict:
        return {"model": self.model.state_dict(), "optim": self.optimizer.state_dict()}

    def save_checkpoint(self) -> Path:
        path = self.run_dir / "checkpoints" / f"epoch-{self.epoch:03d}"
        dcp.save(self._state(), checkpoint_id=str(path))
        if self.env.is_main:
            (self.run_dir / "checkpoints" / "LATEST").write_text(path.name)
        dist.barrier()
        return path

    def load_checkpoint(self) -> bool:
        latest = self.run_dir / "checkpoints" / "LATEST"
        if not latest.is_file():
            return False
        name = latest.read_text().strip()
        self.dense_optimizer.init_state()   # Adam creates its state lazily: make the keys to load into
        state = self._state()
        dcp.load(state, checkpoint_id=str(self.run_dir / "checkpoints" / name))
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optim"])
        self.epoch = int(name.split("-")[1])
        return True

    # ---- training and evaluation ------------------------------------------------------------------

    def batch(self, ex: Examples, rows: np.ndarray):
        return make_batch(ex, rows, self.vocabs, self.content).to(self.env.device)

    def train_epoch(self) -> float:
        self.model.train()
        rng = np.random.default_rng([self.cfg.seed, self.epoch])
        batches = _batches(len(self.train_ex), self.cfg.batch_size, self.env, rng)
        losses = []
        bar = tqdm(batches, desc=f"{self.cfg.run} epoch {self.epoch + 1}/{self.cfg.epochs}", unit="batch",
                   disable=not self.env.is_main, file=sys.stderr)
        for rows in bar:
            b = self.batch(self.train_ex, rows)
            loss = masked_bce(self.model(b.dense_features, b.sparse_features), b.labels)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        self.epoch += 1
        return float(np.mean(losses))

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
                "train_examples": len(self.train_ex), "eval_examples": len(ex), "metrics": results}, preds

    def fit(self, resume: bool = True) -> dict:
        if self.env.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.json").write_text(json.dumps(dataclasses.asdict(self.cfg), indent=2))
            np.savez(self.run_dir / "vocab.npz", **self.vocabs.to_arrays())
        dist.barrier()
        if resume and self.load_checkpoint() and self.env.is_main:
            print(f"ranking: resumed {self.cfg.run} after epoch {self.epoch}", file=sys.stderr)
        history = []
        while self.epoch < self.cfg.epochs:
            start = time.time()
            loss = self.train_epoch()
            self.save_checkpoint()
            history.append({"epoch": self.epoch, "loss": loss, "seconds": round(time.time() - start, 2),
                            "examples_per_s": len(self.train_ex) / max(time.time() - start, 1e-9)})
        report, preds = self.evaluate()
        report["history"] = history
        if self.env.is_main:
            (self.run_dir / "eval.json").write_text(json.dumps(report, indent=2))
            np.save(self.run_dir / "eval_predictions.npy", preds, allow_pickle=False)
        return report


def format_report(report: dict) -> str:
    """The printed evaluation table: AUC / NE / calibration per surface and task, with slices."""
    lines = [f"ranking run {report['run']}  (embeddings: {report['embeddings']}, cutoff day {report['cutoff_day']}, "
             f"{report['train_examples']:,} train / {report['eval_examples']:,} eval examples)",
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
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints")
    a = ap.parse_args(argv)
    embeddings = a.embeddings or ("pinclip" if a.with_pinclip else None)
    cfg = TrainConfig(workdir=a.workdir, run=a.run_name, surfaces=SURFACES if a.surface == "all" else (a.surface,),
                      cutoff_day=a.cutoff_day, embeddings=embeddings, shuffle_embeddings=a.shuffle_embeddings,
                      epochs=a.epochs, batch_size=a.batch_size, seed=a.seed)
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
