"""Scoring API for the simulator: load a trained run and score slates in batch.

Serving uses the same feature code as training: counts and histories strictly before the request day,
IDs through the run's vocabularies (unknown -> the unknown row), the published embedding the run was
trained with (or an incremental version of it from the same source; other vectors are refused). The
weights served are the run's ``weights.safetensors``, checked against the sha256 its config.json records;
nothing served is unpickled (the DCP checkpoints are only for resuming training). Position is not known before ranking, so every candidate is scored at position 0.
Features and heads follow the surfaces the run was trained with (its recorded vocabulary), not the
serving workspace's. Ads pCTR (the click task of surfaces of kind ads) can be recalibrated per segment
(``fit_ads_calibration``) on logged days the run never saw and on the impressions it has served since.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import torch
from safetensors.torch import load_file

from pinclip.embeddings import PublishedEmbeddings, open_embeddings
from pinlift.core.errors import input_error
from pinlift.core.vocabulary import ACTIONS, ADS, CLICK, Vocabulary
from pinworld.files import sha256_file
from pinworld.world import World
from ranking import distributed
from ranking.calibration import SegmentCalibration, ad_segments
from ranking.features import (Examples, FeatureSource, Vocabs, check_same_space, content_of, dense_width, load_content,
                               make_batch)
from ranking.model import ModelConfig, build_model, load_served_state

# keys of config.json that runs trained before them lack
RECORDED = {"coengagement_dim": "the co-engagement features", "vocabulary": "a record of its surfaces",
            "embedding": "a record of its vectors' version and source", "served": "weights that load without pickle"}


class Scorer:
    """A frozen ranking run, ready to score (user, surface, query pin, candidates, day) slates."""

    def __init__(self, workdir: Path | str, run: str, embeddings: str | None = None,
                 env: distributed.Env | None = None, world: World | None = None):
        """``embeddings``: ``NAME@VERSION`` to serve with (default: the version the run was trained on)."""
        self.workdir = Path(workdir)
        run_dir = self.workdir / "ranking" / "runs" / run
        cfg_path = run_dir / "config.json"
        if not cfg_path.is_file():
            raise FileNotFoundError(f"ranking: {cfg_path} not found: no trained run {run!r}")
        self.cfg = json.loads(cfg_path.read_text())
        for key, what in RECORDED.items():
            if key not in self.cfg:
                raise ValueError(f"ranking: {cfg_path}: run {run!r} was trained without {what} (no {key!r}); "
                                 "train it again")
        self.vocab = Vocabulary.model_validate(self.cfg["vocabulary"])
        self.env = env or distributed.setup()
        self.world = world or World(workdir)
        self.source = FeatureSource(self.world, self.cfg["max_boards"], self.cfg["max_history"],
                                    self.cfg["coengagement_dim"], self.cfg["coengagement_every"], self.vocab)
        with np.load(run_dir / "vocab.npz", allow_pickle=False) as z:
            self.vocabs = Vocabs.from_arrays(dict(z))
        self.content = load_content(workdir, None, empty=self.cfg["empty_content"])
        if self.cfg["embedding"] is not None:
            self.set_embeddings(open_embeddings(workdir, embeddings or self.cfg["embedding"]["ref"]))
        model = build_model(self.vocabs.sizes(), dense_width(self.vocab, self.content is not None),
                            ModelConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in self.cfg["model"].items()}),
                            len(self.vocab.tasks), dense_device=self.env.device)
        self.model = distributed.wrap(model, self.env)
        weights = run_dir / self.cfg["served"]["file"]
        digest = sha256_file(weights) if weights.is_file() else "no such file"
        if digest != self.cfg["served"]["sha256"]:
            raise input_error(weights, "sha256", f"{self.cfg['served']['sha256']} (as {cfg_path.name} records)", digest)
        load_served_state(self.model, load_file(weights))
        self.model.eval()
        self.ads_calibration: SegmentCalibration | None = None

    def set_embeddings(self, emb: PublishedEmbeddings) -> None:
        """Serve with ``emb`` from now on: the version the run was trained on, or an incremental version of it
        from the same source (the A/B simulator's daily publishes); other vectors are refused in one line."""
        if self.cfg["embedding"] is None:
            raise input_error(emb.directory, "embeddings", f"none: run {self.cfg['run']!r} is IDs only", emb.ref)
        check_same_space(self.cfg["embedding"], emb, self.workdir)
        self.content = content_of(emb, seed=self.cfg["seed"], shuffled=self.cfg["shuffle_embeddings"])

    @torch.no_grad()
    def score(self, user_ids, surface: str, candidates, day: int, query_pin_ids=None,
              task: str | None = None) -> np.ndarray:
        """Probabilities (R, K) of ``task`` (default: the surface's first task) for candidate slates
        ``candidates`` (R, K) with -1 padding (padding scores NaN)."""
        task = task or self.vocab.surface(surface).tasks[0]   # an unknown surface is refused here
        self._head(surface, task)                               # and a task it does not have here
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
            "position": np.zeros(r * k, np.int64), **{a: np.zeros(r * k, bool) for a in ACTIONS}})
        out, ex = self._predict(frame, task)
        if self.vocab.kind_of(surface) == ADS and task == CLICK and self.ads_calibration is not None:
            out = self.ads_calibration.apply(out, self._ad_segments(ex))
        return np.where(valid, out.reshape(r, k), np.nan)

    def _head(self, surface: str, task: str) -> int:
        """The model's output column of ``task`` on ``surface``."""
        if (surface, task) not in self.vocab.tasks:
            raise ValueError(f"ranking: surface {surface!r} has no task {task!r}")
        return self.vocab.tasks.index((surface, task))

    @torch.no_grad()
    def _predict(self, frame: pl.DataFrame, task: str) -> tuple[np.ndarray, Examples]:
        """The probability of ``task`` for every row on the row's surface, and the rows' examples."""
        ex = self.source.examples(frame)
        b = make_batch(ex, np.arange(len(ex)), self.vocabs, self.content).to(self.env.device)
        probs = torch.sigmoid(self.model(b.dense_features, b.sparse_features)).float().cpu().numpy()
        # per surface of the run, the column of its task (-1 for surfaces no row is on)
        heads = np.array([self._head(s, task) if i in ex.surface else -1 for i, s in enumerate(self.vocab.names)])
        return probs[np.arange(len(ex)), heads[ex.surface]].astype(np.float64), ex

    def _ad_segments(self, ex: Examples) -> np.ndarray:
        return ad_segments(ex.day - ex.created_day, self.vocabs.pin.rows(ex.pin_id) > 0)

    def fit_ads_calibration(self, since: int, until: int, served: pl.DataFrame | None = None,
                            chunk: int = 65_536) -> SegmentCalibration:
        """Fit (and from now on apply) the Ads pCTR calibration on the logged impressions of the run's surfaces
        of kind ads on days [since, until) plus, when given, Ads impressions this run served since (rows in the
        schema of ``World.impressions``). Each impression is scored at the position it was shown in: serving
        scores every candidate at the top slot, so the calibrated pCTR is the top slot's click rate
        whatever mix of positions the fitting impressions came from."""
        frame = self.world.impressions(as_of=until, since=since, surfaces=[s.name for s in self.vocab.of_kind(ADS)])
        if served is not None:
            frame = pl.concat([frame, served.select(frame.columns).cast(frame.schema)])
        if frame.height == 0:
            raise ValueError(f"ranking: no logged Ads impressions on days [{since}, {until}) to calibrate on")
        p, segment = [], []
        for lo in range(0, frame.height, chunk):
            probs, ex = self._predict(frame[lo:lo + chunk], CLICK)
            p.append(probs)
            segment.append(self._ad_segments(ex))
        self.ads_calibration = SegmentCalibration.fit(np.concatenate(p), frame[CLICK].to_numpy(),
                                                      np.concatenate(segment))
        return self.ads_calibration

