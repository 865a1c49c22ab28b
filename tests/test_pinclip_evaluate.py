"""PinCLIP evaluation: Recall@K against brute force, chunking, the Embedder, and the five tasks end to end."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch

from pinclip.data.dataset import normalize_images
from pinclip.embedder import Embedder, PinEmbeddings, pin_texts
from pinclip.models import create_model, load_tokenizer, tokenize, train_tokenizer
from pinclip.training.catalog_eval import image_image_recall, image_text_recall
from pinclip.training.engaged import heldout_split
from pinclip.training.evaluate import (INT8, TASKS, EvalConfig, distractors_at_or_above, evaluate, format_table,
                                       recall_at_k)
from pinlift.core.vocabulary import ADS, FEED, PINWORLD, Vocabulary
from pinworld.world import World

T = 20
VARIANTS = ["64", "128", "256", INT8]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matrices: a second intra-op thread only adds hand-off waits on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def brute_force_recall(q, p, n, ks, exclude=frozenset()):
    """The paper's formula, one query and one distractor at a time."""
    hits = {k: 0 for k in ks}
    for i in range(len(q)):
        pos = float(np.dot(q[i], p[i]))
        above = sum(1 for j in range(len(n)) if (i, j) not in exclude and float(np.dot(q[i], n[j])) >= pos)
        for k in ks:
            hits[k] += above < k
    return {k: hits[k] / len(q) for k in ks}


def test_recall_matches_brute_force_with_ties_and_k_beyond_distractors():
    rng = np.random.default_rng(0)
    # small integer vectors: every dot product is exact and ties are everywhere
    q = rng.integers(-1, 2, size=(40, 4)).astype(np.float32)
    p = rng.integers(-1, 2, size=(40, 4)).astype(np.float32)
    n = rng.integers(-1, 2, size=(25, 4)).astype(np.float32)
    n[:5] = p[:5]  # exact duplicates of positives among the distractors count against them
    ks = (1, 3, 10, 25, 26, 100)
    got = recall_at_k(q, p, n, ks)
    assert got == pytest.approx(brute_force_recall(q, p, n, ks), abs=0)
    assert got[26] == got[100] == 1.0  # K > |N|: always a hit
    pos = (q * p).sum(1)
    assert any((n @ q[i] == pos[i]).any() for i in range(len(q)))  # the case really has ties
    rows, cols = rng.integers(0, 40, 60), rng.integers(0, 25, 60)
    excluded = set(zip(rows.tolist(), cols.tolist()))
    got = recall_at_k(q, p, n, ks, exclude=(rows, cols))
    assert got == pytest.approx(brute_force_recall(q, p, n, ks, excluded), abs=0)


def test_recall_extremes_and_torch_input():
    rng = np.random.default_rng(1)
    n = torch.nn.functional.normalize(torch.randn(50, 8), dim=1)
    q = torch.nn.functional.normalize(torch.randn(20, 8), dim=1)
    assert recall_at_k(q, q, n, (1,)) == {1: 1.0}           # the positive is the query: nothing beats it
    assert recall_at_k(q, -q, n, (1, 50, 51)) == {1: 0.0, 50: 0.0, 51: 1.0}  # worst possible positive
    ones = np.ones((3, 2), np.float32)
    assert recall_at_k(ones, ones, ones, (1, 3, 4)) == {1: 0.0, 3: 0.0, 4: 1.0}  # all tied: all count
    with pytest.raises(ValueError, match="expected queries"):
        recall_at_k(rng.normal(size=(3, 4)), rng.normal(size=(3, 5)), rng.normal(size=(5, 4)))


def test_chunked_equals_unchunked():
    rng = np.random.default_rng(2)
    q, p = rng.normal(size=(301, 16)).astype(np.float32), rng.normal(size=(301, 16)).astype(np.float32)
    n = rng.normal(size=(997, 16)).astype(np.float32)
    n[::7] = p[: len(n[::7])]
    exclude = (rng.integers(0, 301, 400), rng.integers(0, 997, 400))
    whole = distractors_at_or_above(q, p, n, exclude=exclude, max_block_bytes=1 << 40)
    for block_bytes in (16 * 128 * 100, 16 * 301 * 13):  # blocks of 128 queries x 100 distractors, 301 x 13
        assert np.array_equal(distractors_at_or_above(q, p, n, exclude=exclude, max_block_bytes=block_bytes), whole)
    # reference: one full matrix; a distractor equal to the positive ties by identity, not by rounding
    ge = q.astype(np.float64) @ n.T.astype(np.float64) >= (q.astype(np.float64) * p).sum(1, keepdims=True)
    ge |= (n[None] == p[:, None]).all(-1)
    ge[exclude] = False
    assert np.array_equal(whole, ge.sum(1))


def test_catalog_image_text_recall_matches_brute_force():
    rng = np.random.default_rng(4)
    image = rng.integers(-1, 2, size=(30, 4)).astype(np.float32)   # ties everywhere
    text = rng.integers(-1, 2, size=(30, 4)).astype(np.float32)
    has_text = rng.random(30) < 0.7
    got = image_text_recall(image, text, has_text, ks=(1, 5, 10))
    rows = np.flatnonzero(has_text)
    want = brute_force_recall(image[rows], text[rows], text[rows], (1, 5, 10),
                              exclude={(i, i) for i in range(len(rows))})
    assert got.queries == len(rows) and got.recall == pytest.approx(want, abs=0)
    assert image_text_recall(text, text, np.ones(30, bool), ks=(1,)).recall[1] < 1.0   # duplicate texts tie
    assert image_text_recall(image, text, np.zeros(30, bool)).queries == 0


def test_catalog_image_image_recall_matches_brute_force():
    rng = np.random.default_rng(5)
    vecs = rng.normal(size=(40, 6)).astype(np.float32)
    categories = [int(c) for c in rng.integers(0, 5, 38)] + [9, None]   # 9: alone; None: no category
    got = image_image_recall(vecs, categories, ks=(1, 5, 10), seed=3)
    # the reference draws the positives the same way: per query, in order, one seeded draw among its partners
    draw = np.random.default_rng(3)
    hits, queries = {1: 0, 5: 0, 10: 0}, 0
    for i, c in enumerate(categories):
        partners = [j for j, d in enumerate(categories) if d == c and j != i] if c is not None else []
        if not partners:
            continue
        queries += 1
        pos = float(vecs[i] @ vecs[partners[draw.integers(len(partners))]])
        above = sum(1 for j, d in enumerate(categories) if d != c or d is None and c is not None
                    if float(vecs[i] @ vecs[j]) >= pos)
        for k in hits:
            hits[k] += above < k
    assert got.queries == queries == 38
    assert got.recall == pytest.approx({k: h / queries for k, h in hits.items()}, abs=0)
    assert got == image_image_recall(vecs, categories, ks=(1, 5, 10), seed=3)          # seeded
    # a pin on several boards: its positive shares one of them, and no pin sharing any is its distractor.
    # Items 0, 2, 3 are one vector: query 0 (boards a, b) hits, its partners 2 and 3 both excluded; queries
    # 2 (b) and 3 (a) miss, each tied by the other (a distractor: no shared board); 1 and 5 hit.
    eye = np.eye(3, dtype=np.float32)
    multi = image_image_recall(eye[[0, 1, 0, 0, 2, 1]], [["a", "b"], "c", "b", "a", "d", "c"], ks=(1,))
    assert multi.queries == 5 and multi.recall[1] == pytest.approx(3 / 5)
    assert image_image_recall(vecs, [None] * 40).queries == 0


def test_pin_texts_slices_by_user_written_words():
    ann = pl.List(pl.Struct({"annotation": pl.String, "score": pl.Float32}))
    pins = pl.DataFrame({
        "pin_id": [1, 2, 3, 4, 5],
        "title": ["vintage lamp", None, "  ", None, "a b c d e"],
        "description": [None, "one two three four five six seven eight nine", None, None, "f g h"],
        "caption": ["cap1", "cap2", "cap3", None, "cap5"],
        "search_queries": [["lamp"], None, None, ["query"], None],
        "annotations": [None] * 5,
    }, schema_overrides={"annotations": ann})
    out = pin_texts(pins, short_words=8)
    assert out["text"].to_list() == ["vintage lamp", "one two three four five six seven eight nine", "cap3", None,
                                     "a b c d e"]  # never the keyword (it comes from the search log)
    assert out["text_slice"].to_list() == ["short", "long", "missing", "missing", "short"]


# ---- evaluate on the tiny world ------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_model(tiny_world, tmp_path_factory):
    texts = pin_texts(tiny_world.pins())["text"].drop_nulls().to_list()
    path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.json"
    train_tokenizer(texts, 600, path)
    torch.manual_seed(0)
    model = create_model("tiny", text={"tokenizer": str(path), "vocab_size": 600})
    return model, load_tokenizer(model.cfg.text)


# random_share: some pre-cutoff pins held out too, so the tiny world has a few hundred engaged pairs
SMALL = EvalConfig(max_queries=40, distractors=150, random_share=0.2, batch_size=128, progress=False,
                   max_block_bytes=16 * 32 * 50)


@pytest.fixture(scope="module")
def model_results(tiny_model, tiny_world):
    model, tokenizer = tiny_model
    return evaluate(model, tokenizer, tiny_world, T, SMALL)


def test_embedder_prefixes_and_image_only_fusion(tiny_model, tiny_world):
    model, tokenizer = tiny_model
    ids = np.array([7, 3, 11, 5])
    texts = ["vintage lamp ideas", None, "budget hotel", None]
    emb = Embedder(model, tokenizer, tiny_world, batch_size=3, progress=False).embed_pins(ids, texts)
    assert emb.pin_ids.tolist() == [3, 5, 7, 11] and emb.has_text.tolist() == [False, False, True, True]
    for kind in ("image", "text", "fusion"):
        for k in (64, 128, 256):
            v = emb.vectors[kind][k]
            assert v.shape == (4, k) and v.dtype == np.float32
            np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    with torch.no_grad():
        images = normalize_images(tiny_world.images([5, 7], 64))
        alone = model.matryoshka(model.encode_fusion(images[:1]))[64]  # pin 5: no text -> image only
        input_ids, mask = tokenize(tokenizer, texts[:1])
        with_text = model.matryoshka(model.encode_fusion(images[1:], input_ids, mask))[64]
    np.testing.assert_allclose(emb.get("fusion", 64, [5, 7]), torch.cat([alone, with_text]).numpy(), atol=1e-5)
    with pytest.raises(KeyError, match="pin 4 was not embedded"):
        emb.rows([4])


def test_evaluate_structure_and_counts(model_results, tiny_world):
    r = model_results
    json.dumps(r)  # JSON-ready, as eval.json will be
    assert r["variants"] == VARIANTS and r["ks"] == [1, 10, 100]
    assert r["distractor_pins"] == SMALL.distractors
    held = heldout_split(tiny_world, T, random_share=0.2).heldout
    assert r["heldout_pins"] == len(held)
    assert list(r["tasks"]) == [t.name for t in TASKS]
    texts = pin_texts(tiny_world.pins())
    for name, task in r["tasks"].items():
        assert task["queries"] == min(SMALL.max_queries, task["pairs_available"]) > 0, name
        # PinText's distractors are the sampled pins that have a text: all of them here (captions)
        assert task["distractors"] == SMALL.distractors
        assert sum(s["queries"] for s in task["slices"].values()) == task["queries"]
        for variant in VARIANTS:
            recall = [task["recall"][variant][f"R@{k}"] for k in (1, 10, 100)]
            assert all(0.0 <= x <= 1.0 for x in recall) and recall == sorted(recall), (name, variant)
            for s in task["slices"].values():
                if s["queries"] == 0:
                    assert s["recall"][variant]["R@1"] is None
    assert texts["text"].is_not_null().all()
    assert r["tasks"]["pintext"]["slices"]["text=missing"]["queries"] > 0
    table = format_table(r)
    assert all(t.name in table for t in TASKS) and "text=missing" in table and INT8 in table


def test_model_is_left_in_its_mode(tiny_model, tiny_world):
    model, tokenizer = tiny_model
    model.train()
    Embedder(model, tokenizer, tiny_world, progress=False).embed_texts(["a lamp"])
    assert model.training
    model.eval()


# ---- the metric can fail: an oracle embedder against random embeddings ----------------------------

class TopicEmbedder:
    """A fake embedder: a pin is its true topic's code plus a little per-pin noise (the same vector for
    its image, text and fusion); a search query is the code of the topic most of its saved pins have.
    With ``oracle=False`` every vector is random."""

    prefixes = (64,)

    def __init__(self, world, oracle: bool):
        self.oracle = oracle
        self.topic = world.truth.pins.topic
        self.codes = np.random.default_rng(5).normal(size=(int(self.topic.max()) + 1, 64))
        saves = world.table("pin_search_queries").select("query", "pin_id")
        saves = saves.with_columns(topic=pl.Series(self.topic[saves["pin_id"].to_numpy()]))
        self.query_topic = dict(saves.group_by("query").agg(pl.col("topic").mode().first()).iter_rows())

    def _vectors(self, topics: np.ndarray, seeds) -> np.ndarray:
        noise = np.stack([np.random.default_rng(s).normal(size=64) for s in seeds])
        v = self.codes[topics] + 0.15 * noise if self.oracle else noise
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)

    def embed_pins(self, pin_ids, texts):
        ids = np.asarray(pin_ids)
        assert (np.diff(ids) > 0).all()
        vectors = {kind: {64: self._vectors(self.topic[ids], [(i, j) for i in ids])}
                   for j, kind in enumerate(("image", "text", "fusion"))}
        if self.oracle:
            vectors["text"] = vectors["fusion"] = vectors["image"]
        return PinEmbeddings(ids, vectors, np.array([t is not None for t in texts]))

    def embed_texts(self, texts):
        topics = np.array([self.query_topic[t] for t in texts], np.int64)
        return {64: self._vectors(topics, [(hash(t) % 2**31, 9) for t in texts])}


def test_oracle_recall_far_above_random(tiny_world):
    cfg = EvalConfig(max_queries=300, distractors=1000, random_share=0.2, progress=False)
    oracle = evaluate(None, None, tiny_world, T, cfg, embedder=TopicEmbedder(tiny_world, oracle=True))
    random = evaluate(None, None, tiny_world, T, cfg, embedder=TopicEmbedder(tiny_world, oracle=False))
    assert oracle["variants"] == random["variants"] == ["64", INT8]
    for name in oracle["tasks"]:
        good, bad = oracle["tasks"][name]["recall"], random["tasks"][name]["recall"]
        assert bad["64"]["R@10"] < 0.1, name                  # chance: about 10 / 1000
        assert good["64"]["R@10"] > bad["64"]["R@10"] + 0.3, name
        assert good["64"]["R@100"] > 0.8, name
        # int8 quantization of the 64-d prefix barely moves recall
        assert abs(good[INT8]["R@10"] - good["64"]["R@10"]) < 0.05, name
    assert oracle["tasks"]["pintext"]["recall"]["64"]["R@1"] == 1.0  # image == text: nothing scores higher


def test_distractors_capped_by_pool_and_positives_left_out(tiny_world):
    """Every held-out pin is a distractor: each query's own positives (and Related's query pin, whose
    oracle vector equals the query) are in the pool and must not count against it."""
    cfg = EvalConfig(max_queries=300, distractors=100_000, distractor_pool="heldout", random_share=0.2,
                     int8=False, progress=False)
    r = evaluate(None, None, tiny_world, T, cfg, embedder=TopicEmbedder(tiny_world, oracle=True))
    assert r["distractor_pins"] == r["heldout_pins"] == len(heldout_split(tiny_world, T, random_share=0.2).heldout)
    assert r["tasks"]["pintext"]["recall"]["64"]["R@1"] == 1.0
    assert r["tasks"]["related_image"]["recall"]["64"]["R@1"] > 0.02  # 0 if the query pin were a distractor
    assert r["tasks"]["related_image"]["recall"]["64"]["R@100"] > 0.8


def test_related_tasks_are_skipped_where_the_workspace_has_no_related_surface(tiny_workdir):
    class NoRelated(World):
        vocabulary = Vocabulary(surfaces=(*PINWORLD.of_kind(FEED), *PINWORLD.of_kind(ADS)))

    world = NoRelated(tiny_workdir)
    cfg = EvalConfig(max_queries=50, distractors=200, random_share=0.2, progress=False)
    r = evaluate(None, None, world, T, cfg, embedder=TopicEmbedder(world, oracle=True))
    assert set(r["tasks"]) == {"pintext", "search_image", "search_fusion"}
    assert set(r["skipped"]) == {"related_image", "related_fusion"}
    assert "related_image: skipped: the workspace declares no surface of kind related" in format_table(r)
