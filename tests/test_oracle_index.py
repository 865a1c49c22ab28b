"""Oracle embeddings through the publish contract, and HNSW candidate generation over them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pinclip import cli
from pinclip.embeddings import open_embeddings
from pinclip.index import CandidateIndex, HNSWConfig, recall_against_exact
from pinclip.quantization import clamped_share
from pinworld.oracle import oracle_embeddings, topic_from_objects


def test_oracle_embeddings_are_unit_and_unclamped(tiny_world):
    emb = oracle_embeddings(tiny_world, np.arange(500))
    for kind, v in emb.items():
        np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-5, err_msg=kind)
        assert clamped_share(v) == 0.0
    # same topic+style+attribute -> identical fusion vectors; different topic -> lower similarity
    t = tiny_world.truth.pins
    sim = emb["fusion"] @ emb["fusion"].T
    same_topic = t.topic[:500, None] == t.topic[None, :500]
    assert sim[same_topic].mean() > sim[~same_topic].mean() + 0.2


def test_topic_floors_code_the_true_topic_or_the_one_its_objects_show(tiny_world):
    """The topic floor is the true topic's code; the objects' floor the code of the most probable topic given
    the object set, which differs exactly where the objects point elsewhere."""
    ids = np.arange(len(tiny_world.truth.pins))
    shown = topic_from_objects(tiny_world, ids)
    truth = tiny_world.truth.pins.topic
    assert 0.9 < (shown == truth).mean() < 1.0
    topic, objects = (oracle_embeddings(tiny_world, ids, kind=k)["fusion"] for k in ("topic", "topic_objects"))
    np.testing.assert_allclose(np.linalg.norm(objects, axis=1), 1.0, rtol=1e-5)
    same_code = np.isclose(topic, objects).all(1)
    np.testing.assert_array_equal(same_code, shown == truth)
    other = np.flatnonzero(shown != truth)[0]
    np.testing.assert_allclose(objects[other], topic[np.flatnonzero(truth == shown[other])[0]])
    with pytest.raises(ValueError, match="kind 'topics'"):
        oracle_embeddings(tiny_world, ids[:3], kind="topics")


def test_oracle_published_covers_all_pins_text_where_it_applies(tiny_oracle, tiny_world):
    n = len(tiny_world.truth.pins)
    assert tiny_oracle.coverage(range(n))["coverage"] == 1.0
    text = tiny_oracle.coverage(range(n), "text")
    assert text["found"] == int((tiny_world.truth.pins.text_quality != 1).sum()) < n
    assert tiny_oracle.manifest["source"]["kind"] == "oracle"


def test_cli_publish_as_of_then_incremental(tiny_workdir, tiny_world, capsys):
    assert cli.main(["publish", "--workdir", str(tiny_workdir), "--name", "oracle_inc", "--source", "oracle",
                     "--as-of-day", "10", "--quiet"]) == 0
    first = json.loads(capsys.readouterr().out)
    created = tiny_world.table("pins")["created_day"].to_numpy()
    assert first["rows"] == int((created < 10).sum())
    assert cli.main(["publish", "--workdir", str(tiny_workdir), "--name", "oracle_inc", "--source", "oracle",
                     "--as-of-day", "15", "--since-day", "10", "--quiet"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["parent"] == first["version"] and second["rows"] == int((created < 15).sum())
    e = open_embeddings(tiny_workdir, "oracle_inc")
    fresh = np.flatnonzero((created >= 10) & (created < 15))
    assert e.coverage(fresh)["coverage"] == 1.0 and e.coverage(np.flatnonzero(created >= 15))["found"] == 0
    assert cli.main(["publish", "--workdir", str(tiny_workdir), "--source", "pinclip"]) == 2
    assert "--source 'pinclip'" in capsys.readouterr().err


def test_hnsw_recall_and_related(tiny_oracle):
    index = CandidateIndex.build(tiny_oracle, HNSWConfig(m=16, ef_construction=100, ef_search=64))
    queries = tiny_oracle.lookup(tiny_oracle.pin_ids[:300], dequantize_values=True).values
    figures = recall_against_exact(index, queries + np.random.default_rng(0).normal(0, 0.05, queries.shape), k=10)
    assert figures["recall_at_k"] >= 0.95
    related = index.related(tiny_oracle, tiny_oracle.pin_ids[:20], k=5)
    assert related.shape == (20, 5) and not (related == tiny_oracle.pin_ids[:20, None]).any()
    q = tiny_oracle.lookup(tiny_oracle.pin_ids[:20], dequantize_values=True).values
    c = tiny_oracle.lookup(related.reshape(-1), dequantize_values=True).values.reshape(20, 5, 64)
    sims = np.einsum("qd,qkd->qk", q, c)
    random_pairs = np.einsum("qd,qd->q", q, c[::-1, 0])
    assert (np.diff(sims, axis=1) <= 1e-6).all() and sims.mean() > random_pairs.mean() + 0.3


def test_cli_index_build_and_query(tiny_workdir, tiny_oracle, capsys):
    assert cli.main(["index", "build", "--workdir", str(tiny_workdir), "--embeddings", "oracle@v0001",
                     "--m", "16", "--ef-construction", "80"]) == 0
    capsys.readouterr()
    assert cli.main(["index", "query", "--workdir", str(tiny_workdir), "--embeddings", "oracle@v0001",
                     "--pin-id", "3", "7", "--k", "4"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["query_pin_id"] for r in rows] == [3, 7] and all(len(r["candidates"]) == 4 for r in rows)
    with pytest.raises(SystemExit):
        cli.main(["index", "query", "--workdir", str(tiny_workdir)])
