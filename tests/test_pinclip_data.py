"""PinCLIP data layer: text coalescing, random-walk neighbors, engaged evaluation pairs, datasets."""

from __future__ import annotations

import re
from itertools import islice

import numpy as np
import polars as pl
import pytest
import torch

from pinclip.data.dataset import (IMAGE_MEAN, IMAGE_STD, ImageTextCollate, ImageTextDataset, NeighborCollate,
                                  NeighborPairDataset, batches, neighbor_batch_size)
from pinclip.data.sources import drop_misaligned, text_sources
from pinclip.training.engaged import heldout_split, related_pairs, search_pairs
from pinclip.training.neighbors import (LocalBatches, WalkConfig, graph_edges, neighbor_candidates, random_walk_topk,
                                        sample_positives, session_pairs)

T = 20
ANN = pl.List(pl.Struct({"annotation": pl.String, "score": pl.Float32}))


def toy_pins(rows: list[dict]) -> pl.DataFrame:
    schema = {"pin_id": pl.Int64, "title": pl.String, "description": pl.String, "caption": pl.String,
              "search_queries": pl.List(pl.String), "annotations": ANN}
    full = [{k: r.get(k) for k in schema} for r in rows]
    return pl.DataFrame(full, schema=schema)


@pytest.fixture(scope="module")
def raw(tiny_workdir):
    """The raw tables, read from the files rather than through World's as-of views."""
    world = tiny_workdir / "world"
    return {"pins": pl.read_parquet(world / "pins.parquet"),
            "pin_board": pl.read_parquet(world / "pin_board.parquet"),
            "queries": pl.read_parquet(world / "pin_search_queries.parquet"),
            "annotations": pl.read_parquet(world / "pin_annotations.parquet"),
            "impressions": pl.read_parquet(tiny_workdir / "logs" / "impressions" / "**" / "*.parquet",
                                           hive_partitioning=False)}


@pytest.fixture(scope="module")
def texts(tiny_world):
    return text_sources(tiny_world.pins(as_of=T))


@pytest.fixture(scope="module")
def candidates(tiny_world, tmp_path_factory):
    return neighbor_candidates(tiny_world, T, cache_dir=tmp_path_factory.mktemp("neighbors"))


def dummy_tokenize(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.zeros(len(texts), 12, dtype=torch.long)
    for i, t in enumerate(texts):
        b = list(t.encode())[:12]
        ids[i, :len(b)] = torch.tensor(b, dtype=torch.long)
    return ids, (ids > 0).long()


# ---- text sources -------------------------------------------------------------------------------

def test_descriptive_text_coalesces_title_description_caption():
    pins = toy_pins([
        {"pin_id": 0, "title": "t0", "description": "d0", "caption": "c0"},
        {"pin_id": 1, "title": None, "description": "d1", "caption": "c1"},
        {"pin_id": 2, "title": None, "description": None, "caption": "c2"},
        {"pin_id": 3, "title": "  ", "description": "d3", "caption": "c3"},
        {"pin_id": 4},
    ])
    got = text_sources(pins)["descriptive"].to_list()
    assert got == ["t0", "d1", "c2", "d3", None]


def test_keyword_is_most_frequent_query_else_top_annotation():
    pins = toy_pins([
        {"pin_id": 0, "search_queries": ["x", "y", "y"], "annotations": [{"annotation": "a", "score": 0.9}]},
        {"pin_id": 1, "search_queries": ["late", "early"]},  # tie: the earliest-listed wins
        {"pin_id": 2, "search_queries": [], "annotations": [{"annotation": "low", "score": 0.2},
                                                             {"annotation": "high", "score": 0.8}]},
        {"pin_id": 3, "search_queries": ["", " "], "annotations": [{"annotation": "ann", "score": 0.5}]},
        {"pin_id": 4, "title": "only a title"},
    ])
    assert text_sources(pins)["keyword"].to_list() == ["y", "late", "high", "ann", None]


def test_texts_are_single_sources_never_concatenated(tiny_world, texts):
    pins = tiny_world.pins(as_of=T).join(texts, on="pin_id")
    for r in pins.iter_rows(named=True):
        first = next(s for s in (r["title"], r["description"], r["caption"]) if s)
        assert r["descriptive"] == first
        queries = r["search_queries"] or []
        if queries:
            assert r["keyword"] in queries
        elif r["annotations"]:
            assert r["keyword"] == max(r["annotations"], key=lambda a: a["score"])["annotation"]
        else:
            assert r["keyword"] is None
    assert texts["keyword"].is_null().sum() > 0  # some pins lack keyword text; they keep their other pair


def test_text_sources_only_use_rows_before_cutoff(texts, raw):
    created = dict(zip(raw["pins"]["pin_id"], raw["pins"]["created_day"]))
    assert max(created[p] for p in texts["pin_id"]) < T
    early = pl.concat([raw["queries"].filter(pl.col("day") < T).select("pin_id", keyword="query"),
                       raw["annotations"].filter(pl.col("day") < T).select("pin_id", keyword="annotation")])
    kw = texts.drop_nulls("keyword").select("pin_id", "keyword")
    assert kw.join(early.unique(), on=["pin_id", "keyword"], how="anti").height == 0
    # pins whose only queries came at/after T fall back to an annotation known before T
    late_only = (raw["queries"].group_by("pin_id").agg(pl.col("day").min())
                 .filter(pl.col("day") >= T)["pin_id"])
    fallback = kw.filter(pl.col("pin_id").is_in(late_only.implode()))
    assert fallback.height > 0
    assert fallback.join(raw["annotations"].filter(pl.col("day") < T).select("pin_id", keyword="annotation"),
                         on=["pin_id", "keyword"], how="anti").height == 0


def test_drop_misaligned_nulls_low_scoring_pairs_only(texts):
    ids = texts["pin_id"][:3].to_list()
    scores = pl.DataFrame({"pin_id": [ids[0], ids[0], ids[1], ids[2]],
                           "kind": ["descriptive", "keyword", "keyword", "descriptive"],
                           "score": [0.1, 0.9, 0.3, 0.6]})
    out = drop_misaligned(texts, scores, {"descriptive": 0.5, "keyword": 0.5}).filter(
        pl.col("pin_id").is_in(ids)).sort("pin_id")
    before = texts.filter(pl.col("pin_id").is_in(ids)).sort("pin_id")
    assert out["descriptive"].to_list() == [None, before["descriptive"][1], before["descriptive"][2]]
    assert out["keyword"].to_list() == [before["keyword"][0], None, before["keyword"][2]]
    assert drop_misaligned(texts, scores, 0.0).equals(texts)  # nothing below 0, unscored pairs kept
    with pytest.raises(ValueError, match="unknown text kinds"):
        drop_misaligned(texts, scores, {"caption": 0.5})


# ---- neighbors ----------------------------------------------------------------------------------

def expected_visits(edges: pl.DataFrame, cfg: WalkConfig) -> dict[int, dict[int, float]]:
    """Exact expected visits per walk, from powers of the pin->board->pin transition matrix."""
    pins = np.unique(edges["pin_id"].to_numpy())
    boards = np.unique(edges["board_id"].to_numpy())
    a = np.zeros((len(pins), len(boards)))
    a[np.searchsorted(pins, edges["pin_id"].to_numpy()), np.searchsorted(boards, edges["board_id"].to_numpy())] = 1
    m = (a / a.sum(1, keepdims=True)) @ (a.T / a.T.sum(1, keepdims=True))
    out = {}
    for q in range(len(pins)):
        start = np.eye(len(pins))[q]
        x, total = start, np.zeros(len(pins))
        for _ in range(cfg.walk_length):
            y = x @ m
            total += y
            x = (1 - cfg.restart_prob) * y + cfg.restart_prob * start
        out[int(pins[q])] = {int(pins[j]): total[j] for j in range(len(pins)) if j != q and total[j] > 0}
    return out


def test_random_walk_counts_match_exact_expectation_on_toy_graph():
    pairs = [(0, 0), (1, 0), (2, 0), (0, 1), (3, 1), (3, 2), (4, 2), (5, 2), (1, 1), (6, 3), (5, 3)]
    edges = pl.DataFrame({"pin_id": [10 * p + 7 for p, _ in pairs], "board_id": [100 + b for _, b in pairs]})
    cfg = WalkConfig(num_walks=20_000, walk_length=3, restart_prob=0.3, top_k=3, seed=1)
    got = random_walk_topk(edges, WalkConfig(**{**cfg.__dict__, "top_k": 100}))
    exact = expected_visits(edges, cfg)
    for q, row in exact.items():
        mine = got.filter(pl.col("pin_id") == q)
        counts = dict(zip(mine["neighbor_id"], mine["visits"] / cfg.num_walks))
        assert set(counts) == set(row)
        for p, e in row.items():
            assert abs(counts[p] - e) < 0.04, (q, p, counts[p], e)
    top = random_walk_topk(edges, cfg)
    for q, row in exact.items():
        ranked = sorted(row.values(), reverse=True)
        mine = top.filter(pl.col("pin_id") == q)
        assert mine.height == min(3, len(row))
        assert mine["visits"].is_sorted(descending=True)
        for p in mine["neighbor_id"]:  # every kept pin is clearly among the top 3 expected
            assert row[p] >= ranked[min(3, len(ranked)) - 1] - 0.04
    assert top.equals(random_walk_topk(edges, cfg))
    assert not got.equals(random_walk_topk(edges, WalkConfig(**{**cfg.__dict__, "top_k": 100, "seed": 2})))


def test_neighbors_use_only_graph_before_cutoff(tiny_world, candidates, raw):
    created = raw["pins"].select("pin_id", "created_day")
    early_edges = (raw["pin_board"].filter(pl.col("day") < T)
                   .join(created, on="pin_id").filter(pl.col("created_day") < T).select("pin_id", "board_id"))
    assert candidates.equals(random_walk_topk(early_edges, WalkConfig()))
    used = pl.concat([candidates["pin_id"], candidates["neighbor_id"]]).unique()
    assert used.is_in(early_edges["pin_id"].implode()).all()
    late = created.filter(pl.col("created_day") >= T)["pin_id"]
    assert not used.is_in(late.implode()).any()
    assert candidates.group_by("pin_id").len()["len"].max() <= 50
    assert (candidates["pin_id"] != candidates["neighbor_id"]).all()


def test_session_pairs_are_same_user_same_day_repins_before_cutoff(tiny_world, raw):
    pairs = session_pairs(tiny_world, T)
    assert pairs.height > 0
    saves = raw["impressions"].filter(pl.col("repin") & (pl.col("day") < T)).select("user_id", "day", "pin_id")
    truth = (saves.join(saves.rename({"pin_id": "neighbor_id"}), on=["user_id", "day"])
             .filter(pl.col("pin_id") != pl.col("neighbor_id")).unique(["user_id", "day", "pin_id", "neighbor_id"])
             .group_by("pin_id", "neighbor_id").agg(pl.len().cast(pl.Int64).alias("sessions")))
    assert pairs.sort("pin_id", "neighbor_id").equals(truth.sort("pin_id", "neighbor_id"))
    assert session_pairs(tiny_world, T, max_session_saves=1).height == 0  # bulk sessions are skipped
    assert 0 < session_pairs(tiny_world, T, max_session_saves=2).height < pairs.height


def test_neighbors_share_topic_far_more_than_random_pins(tiny_world, candidates):
    topic = tiny_world.truth.pins.topic
    positives = sample_positives(candidates, 5, seed=0)
    agree = (topic[positives["pin_id"].to_numpy()] == topic[positives["neighbor_id"].to_numpy()]).mean()
    rng = np.random.default_rng(0)
    q = positives["pin_id"].to_numpy()
    random = (topic[q] == topic[rng.choice(q, len(q))]).mean()
    assert agree > 0.7 and agree > 10 * random, (agree, random)


def test_local_batches_group_graph_neighbours_as_hard_negatives(tiny_world, candidates):
    topic = tiny_world.truth.pins.topic
    pairs = sample_positives(candidates, 5, seed=0)
    query, positive = pairs["pin_id"].to_numpy(), pairs["neighbor_id"].to_numpy()
    near = set(zip(candidates["pin_id"].to_list(), candidates["neighbor_id"].to_list()))
    local = LocalBatches(pairs, candidates, group=8)
    rows = [local.rows(64, np.random.default_rng([0, i])) for i in range(20)]
    np.testing.assert_array_equal(rows[3], local.rows(64, np.random.default_rng([0, 3])))  # seeded: resumable
    same_topic = {"local": [], "uniform": []}
    for i, r in enumerate(rows):
        assert len(r) == 64 and len(np.unique(query[r])) == 64       # distinct queries, one pair each
        q = query[r]
        # a batch is groups: an anchor followed by queries among its walk candidates
        grouped = sum(any((int(a), int(b)) in near for a in q[:j]) for j, b in enumerate(q))
        assert grouped >= 64 * 3 // 4, grouped
        uniform = np.random.default_rng([1, i]).permutation(len(query))[:64]
        for name, b in (("local", r), ("uniform", uniform)):
            t = topic[query[b]][:, None] == topic[positive[b]][None, :]
            same_topic[name].append(t[~np.eye(64, dtype=bool)].mean())   # negatives of the query's topic
    assert np.mean(same_topic["local"]) > 2 * np.mean(same_topic["uniform"]), same_topic
    with pytest.raises(ValueError, match="at least 2"):
        LocalBatches(pairs, candidates, group=1)
    with pytest.raises(ValueError, match="fewer than one batch"):
        local.rows(len(np.unique(query)) + 1, np.random.default_rng(0))


def test_sample_positives_weighted_by_visits_without_replacement():
    n_queries, weights = 5_000, np.array([1, 2, 3, 4])
    cand = pl.DataFrame({"pin_id": np.repeat(np.arange(n_queries), 4), "neighbor_id": np.tile(np.arange(4), n_queries),
                         "visits": np.tile(weights, n_queries)})
    one = sample_positives(cand, 1, seed=3)
    freq = np.bincount(one["neighbor_id"].to_numpy(), minlength=4) / n_queries
    np.testing.assert_allclose(freq, weights / weights.sum(), atol=0.02)
    three = sample_positives(cand, 3, seed=3)
    per_query = three.group_by("pin_id").agg(pl.col("neighbor_id").n_unique().alias("u"), pl.len())
    assert (per_query["u"] == 3).all() and (per_query["len"] == 3).all()
    assert sample_positives(cand, 10, seed=0).height == cand.height  # fewer candidates than n: all of them
    assert three.equals(sample_positives(cand, 3, seed=3))
    assert not three.equals(sample_positives(cand, 3, seed=4))


def test_neighbor_cache_reused_and_keyed_by_cutoff(tiny_world, tmp_path):
    first = neighbor_candidates(tiny_world, T, cache_dir=tmp_path)
    (path,) = tmp_path.glob("*.parquet")
    mtime = path.stat().st_mtime_ns
    again = neighbor_candidates(tiny_world, T, cache_dir=tmp_path)
    assert again.equals(first) and path.stat().st_mtime_ns == mtime
    later = neighbor_candidates(tiny_world, T + 5, cache_dir=tmp_path)
    neighbor_candidates(tiny_world, T, WalkConfig(num_walks=8), cache_dir=tmp_path)
    names = sorted(p.name for p in tmp_path.glob("*.parquet"))
    assert len(names) == 3 and sum(n.startswith(f"neighbors-T{T}-") for n in names) == 2
    assert later.height > first.height


# ---- engaged evaluation pairs -------------------------------------------------------------------

def test_heldout_split_and_engaged_pairs_stay_held_out(tiny_world, raw):
    split = heldout_split(tiny_world, T, random_share=0.2, seed=1)
    held = set(split.heldout.tolist())
    created = dict(zip(raw["pins"]["pin_id"], raw["pins"]["created_day"]))
    assert {p for p, d in created.items() if d >= T} <= held
    early = [p for p, d in created.items() if d < T]
    share = np.mean([p in held for p in early])
    assert 0.15 < share < 0.25
    assert heldout_split(tiny_world, T, random_share=0.2, seed=1).heldout.tolist() == split.heldout.tolist()

    related = related_pairs(tiny_world, split.heldout, since=T)
    search = search_pairs(tiny_world, split.heldout, since=T)
    assert related.height > 0 and search.height > 0
    assert set(related["query_pin_id"]) <= held and set(related["pin_id"]) <= held and set(search["pin_id"]) <= held
    assert related["day"].min() >= T and search["day"].min() >= T
    engaged = raw["impressions"].filter((pl.col("surface") == "related") & (pl.col("repin") | pl.col("click")))
    assert related.join(engaged, on=["query_pin_id", "pin_id", "day"], how="anti").height == 0
    assert search.join(raw["queries"], on=["query", "pin_id", "day"], how="anti").height == 0

    train = graph_edges(tiny_world, T, exclude=split.heldout)
    assert not train["pin_id"].is_in(pl.Series(split.heldout).implode()).any()


# ---- datasets -----------------------------------------------------------------------------------

def test_neighbor_batch_keeps_paper_ratio():
    assert neighbor_batch_size(32_768) == 4_096
    assert neighbor_batch_size(256) == 32
    assert neighbor_batch_size(4) == 1


def test_image_text_dataset_and_collate(tiny_world, texts):
    ids = texts["pin_id"].to_list()
    scores = pl.DataFrame({"pin_id": ids[:40], "kind": ["keyword"] * 20 + ["descriptive"] * 20, "score": 0.0})
    filtered = drop_misaligned(texts, scores, 0.5)
    ds = ImageTextDataset(tiny_world, filtered)
    assert len(ds) == filtered.filter(pl.col("descriptive").is_not_null() | pl.col("keyword").is_not_null()).height
    image, descriptive, keyword = ds[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32 and keyword is None
    raw_image = tiny_world.images([ids[0]])[0]
    expected = (raw_image[..., 0] / 255 - IMAGE_MEAN[0]) / IMAGE_STD[0]
    np.testing.assert_allclose(image[0].numpy(), expected, atol=1e-5)

    batch = next(iter(batches(ds, ImageTextCollate(dummy_tokenize), 64, seed=0)))
    assert batch.images.shape == (64, 3, 64, 64)
    assert batch.descriptive.input_ids.shape == batch.keyword.attention_mask.shape == (64, 12)
    rows = filtered.join(pl.DataFrame({"pin_id": batch.pin_ids.numpy()}), on="pin_id", how="right")
    assert batch.has_descriptive.tolist() == rows["descriptive"].is_not_null().to_list()
    assert batch.has_keyword.tolist() == rows["keyword"].is_not_null().to_list()
    missing = ~batch.has_keyword
    assert (batch.keyword.attention_mask[missing] == 0).all()  # a missing text goes in as ""
    order = [b.pin_ids.tolist() for b in islice(batches(ds, ImageTextCollate(dummy_tokenize), 64, seed=0), 2)]
    assert order[0] == batch.pin_ids.tolist() and order[0] != order[1]


def test_neighbor_pair_dataset_and_collate(tiny_world, texts, candidates):
    pairs = sample_positives(candidates, 5, seed=0)
    ds = NeighborPairDataset(tiny_world, pairs, texts)
    assert len(ds) == pairs.height
    q_image, q_text, p_image, p_text = ds[0]
    assert q_image.shape == p_image.shape == (3, 64, 64) and isinstance(q_text, str)
    batch = next(iter(batches(ds, NeighborCollate(dummy_tokenize), neighbor_batch_size(256), seed=0)))
    assert batch.query_images.shape == batch.positive_images.shape == (32, 3, 64, 64)
    assert batch.query_text.input_ids.shape == batch.positive_text.input_ids.shape == (32, 12)
    assert batch.query_has_text.all()
    first = pairs.join(pl.DataFrame({"pin_id": batch.query_ids.numpy(), "neighbor_id": batch.positive_ids.numpy()}),
                       on=["pin_id", "neighbor_id"], how="semi")
    assert first.height > 0
    expected = (tiny_world.images([int(batch.positive_ids[0])])[0, ..., 2] / 255 - IMAGE_MEAN[2]) / IMAGE_STD[2]
    np.testing.assert_allclose(batch.positive_images[0, 2].numpy(), expected, atol=1e-5)


def test_pins_without_an_image_are_one_line(tiny_world, texts, tmp_path):
    import shutil

    from pinlift.core.errors import InputError
    from pinclip.data.dataset import CorpusPins
    from pinworld.world import World

    shutil.copytree(tiny_world.workdir / "world", tmp_path / "world", ignore=shutil.ignore_patterns("images"))
    pins = pl.read_parquet(tmp_path / "world/pins.parquet")
    pins.with_columns(image_uri=pl.when(pl.col("pin_id") < 3).then(None).otherwise(pl.col("image_uri"))).write_parquet(
        tmp_path / "world/pins.parquet")
    used = texts.filter(pl.col("pin_id") < 50)
    unset = sorted(set(used["pin_id"].to_list()) & {0, 1, 2})
    with pytest.raises(InputError, match=rf"world/pins.parquet: image_uri: expected an image for every pin PinCLIP "
                                         rf"trains on or embeds, found {len(unset)} pins without one, e\.g\. "
                                         + re.escape(str(unset))):
        CorpusPins(World(tmp_path), used)
