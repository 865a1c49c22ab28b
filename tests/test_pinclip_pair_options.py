"""Training-pair options: alignment filtering by a reference run, and session co-engagement neighbors."""

import json

import numpy as np
import polars as pl
import torch

from pinclip.data.dataset import normalize_images
from pinclip.loading import load_run
from pinclip.models.text import tokenize
from pinclip.training.alignment import alignment_scores
from pinclip.training.neighbors import session_pairs
from pinclip.settings import TrainConfig
from pinclip.training.train import Trainer
from pinworld.world import World


def _config(loop_workdir, run: str = "pair_options", **changes) -> TrainConfig:
    saved = json.loads((loop_workdir / "pinclip/runs/tiny/config.json").read_text())["train"]
    return TrainConfig(**{**saved, "workdir": str(loop_workdir), "run": run, "steps": 1, **changes})


def test_alignment_scores_are_image_text_cosines_of_the_reference(loop_workdir):
    world = World(loop_workdir)
    texts = Trainer(_config(loop_workdir), progress=False).texts.head(40)
    scores = alignment_scores(loop_workdir, "tiny", texts, world=world, progress=False)
    assert set(scores["kind"]) <= {"descriptive", "keyword"}
    assert scores.height == texts["descriptive"].count() + texts["keyword"].count()
    # direct: one pin at a time through the model, at its largest prefix
    model, tokenizer, _ = load_run(loop_workdir, "tiny")
    for row in scores.head(6).iter_rows(named=True):
        text = texts.filter(pl.col("pin_id") == row["pin_id"])[row["kind"]].item()
        ids, mask = tokenize(tokenizer, [text])
        with torch.no_grad():
            img = model(("image",), normalize_images(world.images(np.array([row["pin_id"]]), 64)))["image"][256][0]
            txt = model(("text",), input_ids=ids, attention_mask=mask)["text"][256][0]
        direct = float(torch.nn.functional.cosine_similarity(img.double(), txt.double(), dim=0))
        assert abs(row["score"] - direct) < 1e-4


def test_training_drops_texts_below_the_alignment_threshold(loop_workdir):
    plain = Trainer(_config(loop_workdir), progress=False)
    scores = alignment_scores(loop_workdir, "tiny", plain.texts, progress=False)
    threshold = float(np.median(scores["score"]))
    filtered = Trainer(_config(loop_workdir, "pair_options_aligned", align_reference="tiny",
                               align_threshold=threshold), progress=False)
    below = scores.filter(pl.col("score") < threshold)
    assert filtered.dropped_misaligned == below.height > 0
    for kind in ("descriptive", "keyword"):
        gone = set(below.filter(pl.col("kind") == kind)["pin_id"])
        kept = filtered.texts.filter(pl.col(kind).is_not_null())["pin_id"]
        assert not gone & set(kept) and len(kept) == plain.texts[kind].count() - len(gone)
    assert len(filtered.image_text) < len(plain.image_text)


def test_session_pairs_add_their_counts_to_walk_visits(loop_workdir):
    walks = Trainer(_config(loop_workdir), progress=False)
    both = Trainer(_config(loop_workdir, "pair_options_sessions", session_pairs=True), progress=False)
    sessions = session_pairs(World(loop_workdir), walks.cfg.cutoff_day, exclude=walks.split.heldout)
    assert sessions.height > 0
    expect = (pl.concat([walks.candidates, sessions.rename({"sessions": "visits"})], how="vertical_relaxed")
              .group_by("pin_id", "neighbor_id").agg(pl.col("visits").sum()).sort("pin_id", "neighbor_id"))
    assert both.candidates.select("pin_id", "neighbor_id", "visits").equals(expect.select("pin_id", "neighbor_id", "visits"))
    assert both.candidates.height > walks.candidates.height
