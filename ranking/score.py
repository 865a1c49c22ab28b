"""Scoring API for the simulator: load a trained run and score slates in batch.

Serving uses the same feature code as training: counts and histories strictly before the request day,
IDs through the run's vocabularies (unknown -> the unknown row), the published embedding the run was
trained with. Position is not known before ranking, so every candidate is scored at position 0.
Ads pCTR can be recalibrated per segment (``fit_ads_calibration``) on logged days the run never saw and on
the impressions it has served since.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import torch
import torch.distributed.checkpoint as dcp

from pinworld.world import World
from ranking import distributed
from ranking.calibration import SegmentCalibration, ad_segments
from ranking.features import SURFACES, TASKS, Examples, FeatureSource, Vocabs, dense_width, load_content, make_batch
from ranking.model import ModelConfig, build_model
from ranking.train import read_progress


class Scorer:
    """A frozen ranking run, ready to score (user, surface, query pin, candidates, day) slates."""

    def __init__(self, workdir: Path | str, run: str, embeddings: str | None = None,
                 env: distributed.Env | None = None, world: World | None = None):
        run_dir = Path(workdir) / "ranking" / "runs" / run
        cfg_path = run_dir / "config.json"
        if not cfg_path.is_file():
            raise FileNotFoundError(f"ranking: {cfg_path} not found: no trained run {run!r}")
        self.cfg = json.loads(cfg_path.read_text())
        if "coengagement_dim" not in self.cfg:
            raise ValueError(f"ranking: {cfg_path}: run {run!r} was trained without the co-engagement features "
                             "(no 'coengagement_dim'); train it again")
        self.env = env or distributed.setup()
        self.world = world or World(workdir)
        self.source = FeatureSource(self.world, self.cfg["max_boards"], self.cfg["max_history"],
                                    self.cfg["coengagement_dim"], self.cfg["coengagement_every"])
        with np.load(run_dir / "vocab.npz", allow_pickle=False) as z:
            self.vocabs = Vocabs.from_arrays(dict(z))
        # the simulator may pass a newer version of the same embedding (incremental publishes)
        ref = embeddings or self.cfg["embeddings"]
        self.content = load_content(workdir, ref, seed=self.cfg["seed"], shuffled=self.cfg["shuffle_embeddings"],
                                    empty=self.cfg.get("empty_content", False))
        model = build_model(self.vocabs.sizes(), dense_width(self.content is not None),
                            ModelConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in self.cfg["model"].items()}),
                            dense_device=self.env.device)
        self.model = distributed.wrap(model, self.env)
        progress = read_progress(run_dir)
        if progress is None:
            raise FileNotFoundError(f"ranking: {run_dir / 'checkpoints'}: no checkpoint of run {run!r}")
        state = {"model": self.model.state_dict()}
        dcp.load(state, checkpoint_id=str(run_dir / "checkpoints" / progress["best"]))
        self.model.load_state_dict(state["model"])
        self.model.eval()
        self.ads_calibration: SegmentCalibration | None = None

    @torch.no_grad()
    def score(self, user_ids, surface: str, candidates, day: int, query_pin_ids=None,
              task: str | None = None) -> np.ndarray:
        """Probabilities (R, K) of ``task`` (default: repin, click for Ads) for candidate slates
        ``candidates`` (R, K) with -1 padding (padding scores NaN)."""
        if surface not in SURFACES:
            raise ValueError(f"ranking: unknown surface {surface!r}: expected one of {', '.join(SURFACES)}")
        task = task or ("click" if surface == "ads" else "repin")
        if (surface, task) not in TASKS:
            raise ValueError(f"ranking: surface {surface!r} has no task {task!r}")
        cand = np.asarray(candidates, np.int64)
        r, k = cand.shape
        valid = cand >= 0
        users = np.repeat(np.asarray(user_ids, np.int64), k)
        query = np.repeat(np.asarray(query_pin_ids, np.int64), k) if query_pin_ids is not None else None
        frame = pl.DataFrame({
            "request_id": np.repeat(np.arange(r), k), "day": np.full(r * k, day, np.int64),
            "surface": [surface] * (r * k), "user_id": users,
            "query_pin_id": pl.Series(query, dtype=pl.Int64) if query is not None else pl.Series([None] * (r * k), dtype=pl.Int64),
            "pin_id": np.where(valid, cand, cand[valid][0] if valid.any() else 0).reshape(-1),
            "position": np.zeros(r * k, np.int64), "repin": np.zeros(r * k, bool), "click": np.zeros(r * k, bool),
            "hide": np.zeros(r * k, bool)})
        out, ex = self._predict(frame, surface, task)
        if surface == "ads" and task == "click" and self.ads_calibration is not None:
            out = self.ads_calibration.apply(out, self._ad_segments(ex))
        return np.where(valid, out.reshape(r, k), np.nan)

    @torch.no_grad()
    def _predict(self, frame: pl.DataFrame, surface: str, task: str) -> tuple[np.ndarray, Examples]:
        ex = self.source.examples(frame)
        b = make_batch(ex, np.arange(len(ex)), self.vocabs, self.content).to(self.env.device)
        probs = torch.sigmoid(self.model(b.dense_features, b.sparse_features)).float().cpu().numpy()
        return probs[:, TASKS.index((surface, task))].astype(np.float64), ex

    def _ad_segments(self, ex: Examples) -> np.ndarray:
        return ad_segments(ex.day - ex.created_day, self.vocabs.pin.rows(ex.pin_id) > 0)

    def fit_ads_calibration(self, since: int, until: int, served: pl.DataFrame | None = None,
                            chunk: int = 65_536) -> SegmentCalibration:
        """Fit (and from now on apply) the Ads pCTR calibration on the logged Ads impressions of days
        [since, until) plus, when given, Ads impressions this run served since (rows in the schema of
        ``World.impressions``). Each impression is scored at the position it was shown in: serving
        scores every candidate at the top slot, so the calibrated pCTR is the top slot's click rate
        whatever mix of positions the fitting impressions came from."""
        frame = self.world.impressions(as_of=until, since=since, surfaces=["ads"])
        if served is not None:
            frame = pl.concat([frame, served.select(frame.columns).cast(frame.schema)])
        if frame.height == 0:
            raise ValueError(f"ranking: no logged Ads impressions on days [{since}, {until}) to calibrate on")
        p, segment = [], []
        for lo in range(0, frame.height, chunk):
            probs, ex = self._predict(frame[lo:lo + chunk], "ads", "click")
            p.append(probs)
            segment.append(self._ad_segments(ex))
        self.ads_calibration = SegmentCalibration.fit(np.concatenate(p), frame["click"].to_numpy(),
                                                      np.concatenate(segment))
        return self.ads_calibration

