"""A trained run through the CLI: eval.json, and its embeddings published (full, then incremental)."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import torch

from pinclip import cli
from pinclip.embedder import Embedder, pin_texts
from pinclip.embeddings import open_embeddings
from pinclip.loading import load_run


def test_eval_writes_recall_table(tiny_workdir, tiny_pinclip_run, capsys):
    assert cli.main(["eval", "--workdir", str(tiny_workdir), "--run", tiny_pinclip_run, "--max-queries", "200",
                     "--distractors", "1000", "--quiet"]) == 0
    assert "pintext" in capsys.readouterr().out
    res = json.loads((tiny_workdir / "pinclip/runs" / tiny_pinclip_run / "eval.json").read_text())
    assert set(res["variants"]) >= {"64", "256", "64-int8"} and res["run"] == tiny_pinclip_run


def test_publish_run_matches_model_and_is_incremental(tiny_workdir, tiny_world, tiny_pinclip_run, capsys):
    assert cli.main(["publish", "--workdir", str(tiny_workdir), "--source", "run", "--run", tiny_pinclip_run,
                     "--name", "pc", "--as-of-day", "30", "--quiet"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert cli.main(["publish", "--workdir", str(tiny_workdir), "--source", "run", "--run", tiny_pinclip_run,
                     "--name", "pc", "--since-day", "30", "--quiet"]) == 0
    second = json.loads(capsys.readouterr().out)
    created = tiny_world.table("pins")["created_day"].to_numpy()
    assert first["rows"] == int((created < 30).sum()) and second["rows"] == len(created)
    emb = open_embeddings(tiny_workdir, "pc")
    assert emb.manifest["source"]["run"] == tiny_pinclip_run and emb.kinds == ["fusion", "image", "text"]
    # the published int8 vectors are the model's 64-d prefix, quantized
    model, tok, _ = load_run(tiny_workdir, tiny_pinclip_run)
    pins = np.array([5, 40, 2999])
    texts = pin_texts(tiny_world.pins()).filter(pl.col("pin_id").is_in(pins))
    ref = Embedder(model, tok, tiny_world, progress=False, prefixes=(64,)).embed_pins(
        texts["pin_id"].to_numpy(), texts["text"].to_list())
    got = emb.lookup(texts["pin_id"].to_numpy(), dequantize_values=True).values
    np.testing.assert_allclose(got, ref.vectors["fusion"][64][ref.rows(texts["pin_id"].to_numpy())], atol=0.5 / 127)
    assert cli.main(["publish", "--workdir", str(tiny_workdir), "--source", "run", "--name", "pc2"]) == 2
    assert "expected --run" in capsys.readouterr().err
    assert torch.is_grad_enabled()


def test_experiment_publisher_for_a_run(tiny_workdir, tiny_world, tiny_pinclip_run, tmp_path):
    from abtest.publishers import make_publisher
    from pinclip.run_source import publish_run

    publish_run(tiny_workdir, tiny_pinclip_run, "pc_ab", progress=False)
    pub = make_publisher(tiny_world, tmp_path, "pc_ab", lag=1)
    first = pub.publish_until(30)
    created = tiny_world.table("pins").sort("pin_id")["created_day"].to_numpy()
    assert len(first) == int((created < 30).sum())          # visible: created on days <= 29 = day - lag
    base = open_embeddings(tiny_workdir, "pc_ab")
    np.testing.assert_array_equal(first.lookup(first.pin_ids).values, base.lookup(first.pin_ids).values)
    second = pub.publish_until(32)
    assert len(second) == int((created < 32).sum()) and second.manifest["parent"] == first.version
    new = np.flatnonzero((created >= 30) & (created < 32))
    np.testing.assert_allclose(second.lookup(new, dequantize_values=True).values,
                               base.lookup(new, dequantize_values=True).values, atol=1.5 / 127)
    assert pub.publish_until(32) is second and [h["added"] for h in pub.history][:2] == [len(first), len(new)]
