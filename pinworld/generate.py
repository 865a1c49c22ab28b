"""Generate a world: latents -> text and images -> organic logs -> boards, queries, annotations -> tables.

Everything is written under a temporary directory inside the workdir and moved into place at the end,
so an interrupted run never leaves a half-written world.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from pinworld import catalog
from pinworld.config import GENERATOR_VERSION, WorldConfig
from pinworld.engagement import GroundTruth
from pinworld.files import sha256_file
from pinworld.images import SHARD_SIZE, shard_uri
from pinworld.latents import (PinLatents, UserLatents, sample_pins, sample_topic_trend, sample_users, stream,
                              visible_quality_z)
from pinworld.logs import Saves, history_saves, simulate_organic_logs
from pinworld.render import STYLES, SceneRenderer
from pinlift.core.schema import ADS_TABLE, arrow_schema
from pinlift.core.vocabulary import write_vocabulary
from pinworld.taxonomy import load_taxonomy
from pinworld.text import ATTRIBUTE_WORDS, ATTRIBUTES, TEXT_MISSING, TextWriter

CATCH_ALL_BOARD = {"en": "saved ideas", "es": "ideas guardadas", "fr": "idées enregistrées",
                   "de": "gemerkte ideen", "it": "idee salvate", "pt": "ideias salvas"}
CATCH_ALL_SHARE = 0.08


def _write(table: str, columns: dict, path: Path) -> None:
    schema = arrow_schema(table)
    pq.write_table(pa.table({f.name: pa.array(columns[f.name], f.type) for f in schema}, schema=schema), path)


def _render_images(pins: PinLatents, cfg: WorldConfig, out_dir: Path, progress: bool) -> list[str]:
    tx = load_taxonomy()
    renderer = SceneRenderer(tx, cfg.image_size)
    out_dir.mkdir(parents=True)
    n, s = len(pins), cfg.image_size
    bar = tqdm(total=n, desc="render images", unit="img", disable=not progress)
    for start in range(0, n, SHARD_SIZE):
        stop = min(start + SHARD_SIZE, n)
        shard = np.lib.format.open_memmap(out_dir / f"shard-{start // SHARD_SIZE:05d}.npy", mode="w+",
                                          dtype=np.uint8, shape=(stop - start, s, s, 3))
        for lo in range(start, stop, 2_000):
            hi = min(lo + 2_000, stop)
            renderer.render_batch(pins.scene(slice(lo, hi)), shard[lo - start:hi - start])
            bar.update(hi - lo)
        shard.flush()
        del shard
    bar.close()
    return [shard_uri(i) for i in range(n)]


def _pin_texts(pins: PinLatents, cfg: WorldConfig) -> dict[str, list]:
    tx = load_taxonomy()
    writer = TextWriter(tx)
    rng = stream(cfg.seed, "text")
    langs = list(cfg.languages)
    titles, descs, captions = [], [], []
    for i in range(len(pins)):
        objs = [int(o) for o in pins.objects[i] if o >= 0]
        lang = langs[pins.language[i]]
        t, d = writer.title_description(lang, int(pins.topic[i]), objs, int(pins.attr[i]),
                                        int(pins.text_quality[i]), rng)
        titles.append(t)
        descs.append(d)
        captions.append(writer.caption(objs, int(pins.arrangement[i]), int(pins.colour[i])))
    return {"title": titles, "description": descs, "caption": captions}


def _board_facets(users: UserLatents, pins: PinLatents, user_id, pin_id, cfg: WorldConfig, seed: int) -> np.ndarray:
    """Per save, the facet its board is curated by: -1 for a plain topic board; a visual style (0..S-1)
    or a described attribute (S..S+A-1) for users who split each topic's saves by one facet, as boards
    like "pastel nursery" or "budget weddings" do. A ``curated_board_share`` of users curate, half of
    them by style and half by attribute."""
    rng = stream(seed, "history", 2)
    n_users = len(users.activity)
    curator = rng.random(n_users) < cfg.curated_board_share
    by_attr = rng.random(n_users) < 0.5
    facet = np.where(by_attr[user_id], len(STYLES) + pins.attr[pin_id].astype(np.int64), pins.style[pin_id])
    return np.where(curator[user_id], facet, -1)


def _board_name(lang: str, topic: int, facet: int, tx) -> str:
    if topic < 0:
        return CATCH_ALL_BOARD[lang]
    name = tx.topics[topic].name if lang == "en" else tx.objects[tx.topics[topic].object_ids[0]].names[lang]
    if facet < 0:
        return name
    word = STYLES[facet] if facet < len(STYLES) else ATTRIBUTE_WORDS[lang][facet - len(STYLES)]
    return f"{word} {name}"


def _boards_and_edges(saves: Saves, pins: PinLatents, users: UserLatents, cfg: WorldConfig, seed: int):
    tx = load_taxonomy()
    langs = list(cfg.languages)
    user_id, pin_id, day, _ = saves.arrays()
    rng = stream(seed, "history", 1)
    topic = np.where(rng.random(len(pin_id)) < CATCH_ALL_SHARE, -1, pins.topic[pin_id].astype(np.int64))
    n_facets = len(STYLES) + len(ATTRIBUTES) + 1
    facet = np.where(topic < 0, -1, _board_facets(users, pins, user_id, pin_id, cfg, seed))
    key = (user_id * (tx.n_topics + 1) + (topic + 1)) * n_facets + (facet + 1)
    keys, board_of_save = np.unique(key, return_inverse=True)
    first_day = np.full(len(keys), np.iinfo(np.int32).max, np.int64)
    np.minimum.at(first_day, board_of_save, day)
    b_facet = keys % n_facets - 1
    b_user, b_topic = keys // n_facets // (tx.n_topics + 1), keys // n_facets % (tx.n_topics + 1) - 1
    names = [_board_name(langs[users.language[u]], t, f, tx) for u, t, f in zip(b_user, b_topic, b_facet)]
    boards = {"board_id": np.arange(len(keys)), "user_id": b_user, "name": names, "created_day": first_day}
    # one edge per (pin, board): its first save
    order = np.lexsort((day, board_of_save, pin_id))
    pb = np.stack([pin_id[order], board_of_save[order]], 1)
    first = np.ones(len(order), bool)
    first[1:] = (pb[1:] != pb[:-1]).any(1)
    sel = order[first]
    edges = {"pin_id": pin_id[sel], "board_id": board_of_save[sel], "user_id": user_id[sel], "day": day[sel]}
    return boards, edges, b_topic


def _search_queries(saves: Saves, pins: PinLatents, users: UserLatents, cfg: WorldConfig) -> dict:
    writer = TextWriter(load_taxonomy())
    langs = list(cfg.languages)
    rng = stream(cfg.seed, "text", 1)
    user_id, pin_id, day, from_search = saves.arrays()
    idx = np.flatnonzero(from_search)
    idx = idx[np.lexsort((pin_id[idx], day[idx]))]
    queries = [writer.search_query(langs[users.language[user_id[i]]], int(pins.topic[pin_id[i]]),
                                   [int(o) for o in pins.objects[pin_id[i]] if o >= 0], int(pins.attr[pin_id[i]]), rng)
               for i in idx]
    return {"pin_id": pin_id[idx], "day": day[idx], "query": queries}


def _annotations(pins: PinLatents, cfg: WorldConfig) -> dict:
    writer = TextWriter(load_taxonomy())
    rng = stream(cfg.seed, "text", 2)
    out = {"pin_id": [], "day": [], "annotation": [], "score": []}
    lag = rng.integers(1, 4, len(pins))
    # its own stream, so that the other annotations do not depend on the share
    style_rng = stream(cfg.seed, "text", 3)
    styled = style_rng.random(len(pins)) < cfg.style_annotation_share
    style_score = style_rng.uniform(0.5, 0.95, len(pins))
    graded = quality_annotations(pins.visual_quality, cfg.visible_quality_share)
    for i in range(len(pins)):
        objs = [int(o) for o in pins.objects[i] if o >= 0]
        terms = writer.annotations(int(pins.topic[i]), objs, int(pins.attr[i]),
                                   pins.text_quality[i] != TEXT_MISSING, rng)
        if styled[i]:
            terms.append((style_annotation(int(pins.style[i])), float(style_score[i])))
            if graded[i]:
                terms.append(graded[i])
        for term, score in terms:
            out["pin_id"].append(i)
            out["day"].append(int(pins.created_day[i] + lag[i]))
            out["annotation"].append(term)
            out["score"].append(round(score, 3))
    return out


QUALITY_TERMS = ("low quality photo", "high quality photo")


def quality_annotations(visual_quality: np.ndarray, share: float) -> list:
    """Per pin, the photo-quality term an aesthetic classifier gives its image, with its score, or None:
    the tails (|z| > 0.8) of the visible quality are graded, the middle is not."""
    z = visible_quality_z(visual_quality, share)
    score = np.round(np.clip(0.5 + 0.2 * np.abs(z), 0.5, 0.95), 3)
    return [(QUALITY_TERMS[int(v > 0)], float(c)) if abs(v) > 0.8 else None for v, c in zip(z, score)]


def style_annotation(style: int) -> str:
    """The annotation term that names a visual style."""
    return f"{STYLES[style]} style"


def _write_truth(pins: PinLatents, users: UserLatents, trend: np.ndarray, truth_dir: Path) -> None:
    truth_dir.mkdir(parents=True)
    pq.write_table(pa.table({
        "pin_id": np.arange(len(pins), dtype=np.int64), "topic": pins.topic, "style": pins.style,
        "attr": pins.attr, "quality": pins.quality, "ad_quality": pins.ad_quality,
        "text_quality": pins.text_quality, "colour": pins.colour, "arrangement": pins.arrangement,
        "scale": pins.scale,
        "objects": pa.FixedSizeListArray.from_arrays(pins.objects.reshape(-1), 3),
        "rotations": pa.FixedSizeListArray.from_arrays(pins.rotations.reshape(-1), 3),
        "jitter": pa.FixedSizeListArray.from_arrays(pins.jitter.reshape(-1), 6),
        "created_day": pins.created_day, "is_ad": pins.is_ad, "advertiser_id": pins.advertiser_id,
        "bid": pins.bid, "ad_end_day": pins.ad_end_day, "language": pins.language,
        "visual_quality": pins.visual_quality,
    }), truth_dir / "pins.parquet")
    t = users.taste0.shape[1]
    fixed = lambda a: pa.FixedSizeListArray.from_arrays(a.reshape(-1), a.shape[1])  # noqa: E731
    pq.write_table(pa.table({
        "user_id": np.arange(len(users.activity), dtype=np.int64),
        "taste0": fixed(users.taste0), "taste1": fixed(users.taste1), "style_pref": fixed(users.style_pref),
        "attr_pref": fixed(users.attr_pref), "policy_taste": fixed(users.policy_taste),
        "activity": users.activity, "signup_day": users.signup_day, "language": users.language,
    }), truth_dir / "users.parquet")
    assert trend.shape[0] == t
    np.save(truth_dir / "trend.npy", trend, allow_pickle=False)


def generate_world(cfg: WorldConfig, workdir: Path | str, *, progress: bool = True, force: bool = False) -> dict:
    """Generate the world described by ``cfg`` under ``workdir`` (world/, logs/, catalog.duckdb)."""
    workdir = Path(workdir)
    if (workdir / "world").exists() and not force:
        raise FileExistsError(f"pinworld: {workdir / 'world'} already exists (use --force to replace it)")
    t0 = time.time()
    tmp = workdir / ".generate-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "world").mkdir(parents=True)
    tx = load_taxonomy()
    pins = sample_pins(cfg, tx)
    users = sample_users(cfg, tx.n_topics)
    trend = sample_topic_trend(cfg, tx.n_topics)
    truth = GroundTruth(cfg, pins, users, trend)
    timings = {}

    uris = _render_images(pins, cfg, tmp / "world" / "images", progress)
    timings["images"] = time.time() - t0
    texts = _pin_texts(pins, cfg)
    langs = np.array(list(cfg.languages))
    _write("pins", {"pin_id": np.arange(len(pins)), "created_day": pins.created_day, "image_uri": uris,
                    **texts, "language": langs[pins.language], "is_ad": pins.is_ad,
                    "advertiser_id": np.where(pins.is_ad, pins.advertiser_id, None)}, tmp / "world" / "pins.parquet")
    _write("users", {"user_id": np.arange(cfg.n_users), "signup_day": users.signup_day,
                     "language": langs[users.language]}, tmp / "world" / "users.parquet")
    _write("advertisers", {"advertiser_id": np.arange(cfg.n_advertisers),
                           "name": [f"advertiser {i:04d}" for i in range(cfg.n_advertisers)]},
           tmp / "world" / "advertisers.parquet")
    ads = np.flatnonzero(pins.is_ad)
    _write(ADS_TABLE, {"pin_id": ads, "advertiser_id": pins.advertiser_id[ads], "bid": pins.bid[ads],
                   "created_day": pins.created_day[ads], "end_day": pins.ad_end_day[ads]}, tmp / "world" / "ads.parquet")
    timings["text"] = time.time() - t0

    saves = Saves()
    history_saves(truth, saves)
    bar = tqdm(total=cfg.days, desc="organic logs", unit="day", disable=not progress)
    counts = simulate_organic_logs(truth, tmp / "logs", saves, progress=lambda d: bar.update(1))
    bar.close()
    timings["logs"] = time.time() - t0

    boards, edges, _ = _boards_and_edges(saves, pins, users, cfg, cfg.seed)
    _write("boards", boards, tmp / "world" / "boards.parquet")
    _write("pin_board", edges, tmp / "world" / "pin_board.parquet")
    _write("pin_search_queries", _search_queries(saves, pins, users, cfg), tmp / "world" / "pin_search_queries.parquet")
    _write("pin_annotations", _annotations(pins, cfg), tmp / "world" / "pin_annotations.parquet")
    _write_truth(pins, users, trend, tmp / "world" / "truth")
    write_vocabulary(tmp, truth.vocab)
    timings["tables"] = time.time() - t0

    files = sorted(p for p in tmp.rglob("*") if p.is_file())
    summary = {
        "generator_version": GENERATOR_VERSION, "preset": cfg.preset, "seed": cfg.seed,
        "config": cfg.to_dict(), "n_topics": tx.n_topics, "n_objects": tx.n_objects,
        "counts": {"pins": len(pins), "organic_pins": int((~pins.is_ad).sum()), ADS_TABLE: int(len(ads)),
                   "users": cfg.n_users, "boards": len(boards["board_id"]), "pin_board": len(edges["pin_id"]),
                   "impressions": int(sum(counts.values())), **{f"impressions_{k}": v for k, v in counts.items()}},
        "checksums": {str(p.relative_to(tmp)): sha256_file(p) for p in files},
    }
    (tmp / "world" / "world.json").write_text(json.dumps(summary, indent=2))
    for sub in ("world", "logs"):
        shutil.rmtree(workdir / sub, ignore_errors=True)
        (tmp / sub).rename(workdir / sub)
    tmp.rmdir()
    catalog.build_catalog(workdir)
    summary["seconds"] = {k: round(v, 2) for k, v in timings.items()} | {"total": round(time.time() - t0, 2)}
    return summary
