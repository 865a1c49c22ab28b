"""Offline evaluation of PinCLIP (paper §4.1): Recall@K of each query's positive against random distractors.

Recall@K(Q, P, N) = 1/|Q| Σ_i 1{ |{n ∈ N : s(Q_i, n) ≥ s(Q_i, P_i)}| < K } with s the dot product, so a
tie with a distractor counts against the positive, and every query is a hit when K > |N|.

Five tasks on pins held out from training (:func:`pinclip.training.engaged.heldout_split`), each a set of
(query, positive) rows scored against one shared random sample of distractor pins:

* ``pintext``: a held-out pin's image embedding -> its descriptive text (title, else description, else
  caption); distractors are the text embeddings of the distractor pins that have text.
* ``related_image`` / ``related_fusion``: engaged Related Pins pairs from the logs (query pin -> the pin
  saved or clicked from its slate), image -> image and fusion -> fusion; skipped, with a note under
  ``skipped``, in a workspace that declares no surface of kind related.
* ``search_image`` / ``search_fusion``: engaged Search pairs (query text -> the pin saved after it),
  the query's text embedding -> the pin's image or fusion embedding.

For each row the distractors that are in fact positives of the same query (the pin itself for PinText;
the query pin and every pin engaged from it for Related; every pin saved after that query for Search)
are left out of its distractor set: they are not negatives, and a retrieved query pin is no miss.

A pin's text is its descriptive text only: the keyword source comes from the search log the Search
pairs are drawn from, so feeding it to the fusion embedding would hand the model the query.

A catalog (a workspace without logs) has none of the engaged pairs: :func:`evaluate_catalog` scores the
evaluated pins (a supplied split, or the run's held-out pins) against each other instead, with
:mod:`pinclip.training.catalog_eval`'s metrics at K = 1, 5, 10: ``pintext`` (image -> own descriptive text;
distractors: the other evaluated pins' texts) and ``board_image`` (image -> the image of one other evaluated
pin sharing a board, e.g. a category; distractors: the evaluated pins of other boards).

Each task is scored for every Matryoshka prefix (``model.matryoshka``) and, with ``int8``, for the
published 64-d prefix after int8 quantize -> dequantize (the publish quantization check), and sliced by
how much user-written text (title + description) the positive pin has: missing, short or long.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Protocol

import numpy as np
import polars as pl
import torch

from pinclip.embedder import Embedder, PinEmbeddings, pin_texts
from pinclip.loading import load_run
from pinclip.quantization import PUBLISHED_DIM, dequantize, quantize
from pinclip.training import catalog_eval
from pinclip.training.engaged import heldout_split, related_pairs, search_pairs, supplied_split
from pinlift.core.errors import input_error
from pinlift.core.vocabulary import DECLARATION, RELATED
from pinworld.files import write_text_atomic
from pinworld.world import World

INT8 = f"{PUBLISHED_DIM}-int8"
TEXT_SLICES = ("missing", "short", "long")
# Scores are accumulated in float64 from float32 embeddings: the rounding of one dot product is below
# 1e-13 (relative to |q||n|), so a tolerance of 1e-10 only makes exact ties (duplicate vectors) robust to
# the summation order of the matrix product, far below any difference float32 embeddings can express.
TIE_RTOL = 1e-10
DEFAULT_BLOCK_BYTES = 256 << 20


# ---- the metric ------------------------------------------------------------------------------------

def _as_f64(x) -> torch.Tensor:
    return (x.detach() if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))).to(torch.float64)


def distractors_at_or_above(query_vecs, positive_vecs, distractor_vecs, *,
                            exclude: tuple[np.ndarray, np.ndarray] | None = None,
                            max_block_bytes: int = DEFAULT_BLOCK_BYTES) -> np.ndarray:
    """Per query i, ``|{n ∈ N : s(Q_i, n) ≥ s(Q_i, P_i)}|`` (int64, (|Q|,)), scoring the query x distractor
    matrix in blocks of at most ``max_block_bytes``; ``exclude`` = (query rows, distractor columns)
    pairs removed from that query's distractor set."""
    q, p, d = _as_f64(query_vecs), _as_f64(positive_vecs), _as_f64(distractor_vecs)
    if q.ndim != 2 or p.shape != q.shape or d.ndim != 2 or d.shape[1] != q.shape[1]:
        raise ValueError(f"pinclip eval: expected queries (n, d), positives (n, d) and distractors (m, d), "
                         f"found {tuple(q.shape)}, {tuple(p.shape)} and {tuple(d.shape)}")
    n, m = q.shape[0], d.shape[0]
    counts = torch.zeros(n, dtype=torch.int64)
    if n == 0 or m == 0:
        return counts.numpy()
    positive = (q * p).sum(1)
    scale = max(p.norm(dim=1).max().item(), d.norm(dim=1).max().item())
    threshold = positive - TIE_RTOL * q.norm(dim=1) * scale
    ex_rows = ex_cols = None
    if exclude is not None:
        ex_rows, ex_cols = (np.asarray(a, np.int64) for a in exclude)
        if ex_rows.shape != ex_cols.shape or (len(ex_rows) and (ex_rows.min() < 0 or ex_rows.max() >= n
                                                                or ex_cols.min() < 0 or ex_cols.max() >= m)):
            raise ValueError(f"pinclip eval: exclude: expected (query row, distractor column) pairs within "
                             f"{n} x {m}")
        order = np.argsort(ex_rows, kind="stable")
        ex_rows, ex_cols = ex_rows[order], ex_cols[order]
    # a float64 score and a bool comparison per element, plus slack for the matmul's workspace
    elements = max(1, max_block_bytes // 16)
    bq = max(1, min(n, 1024, elements))
    bd = max(1, min(m, elements // bq))
    for q0 in range(0, n, bq):
        q1 = min(n, q0 + bq)
        if ex_rows is not None:
            lo, hi = np.searchsorted(ex_rows, [q0, q1])
            rows_b, cols_b = ex_rows[lo:hi], ex_cols[lo:hi]
        for d0 in range(0, m, bd):
            d1 = min(m, d0 + bd)
            scores = q[q0:q1] @ d[d0:d1].T
            if ex_rows is not None and len(rows_b):
                inside = (cols_b >= d0) & (cols_b < d1)
                scores[torch.from_numpy(rows_b[inside] - q0), torch.from_numpy(cols_b[inside] - d0)] = -torch.inf
            counts[q0:q1] += (scores >= threshold[q0:q1, None]).sum(1)
    return counts.numpy()


def recall_from_counts(counts: np.ndarray, ks: Sequence[int] = (1, 10, 100)) -> dict[int, float]:
    """{K: share of queries with fewer than K distractors at or above their positive} (NaN without queries)."""
    counts = np.asarray(counts)
    return {int(k): float((counts < k).mean()) if len(counts) else float("nan") for k in ks}


def recall_at_k(query_vecs, positive_vecs, distractor_vecs, ks: Sequence[int] = (1, 10, 100), *,
                exclude: tuple[np.ndarray, np.ndarray] | None = None,
                max_block_bytes: int = DEFAULT_BLOCK_BYTES) -> dict[int, float]:
    """Recall@K as the paper defines it: {K: Recall_K(Q, P, N)} for each K in ``ks``."""
    counts = distractors_at_or_above(query_vecs, positive_vecs, distractor_vecs, exclude=exclude,
                                     max_block_bytes=max_block_bytes)
    return recall_from_counts(counts, ks)


# ---- the embedder -------------------------------------------------------------------------------

class PinEncoder(Protocol):
    """What :func:`evaluate` needs from an embedder (``Embedder``, or a fake one in tests)."""

    prefixes: tuple[int, ...]

    def embed_pins(self, pin_ids, texts: Sequence[str | None]) -> PinEmbeddings: ...

    def embed_texts(self, texts: Sequence[str]) -> dict[int, np.ndarray]: ...


# ---- the five tasks -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Task:
    name: str
    description: str
    surface: str        # pintext | related | search: where its (query, positive) rows come from
    query_kind: str     # image | fusion | query (a search query's text embedding)
    target_kind: str    # text | image | fusion: the positive's and the distractors' embedding


TASKS = (
    Task("pintext", "PinText image->text", "pintext", "image", "text"),
    Task("related_image", "Related Pins image->image", RELATED, "image", "image"),
    Task("related_fusion", "Related Pins multimodal", RELATED, "fusion", "fusion"),
    Task("search_image", "Search text->image", "search", "query", "image"),
    Task("search_fusion", "Search multimodal", "search", "query", "fusion"),
)


@dataclass(frozen=True)
class EvalConfig:
    """How to evaluate; plain data, saved beside the results (``asdict``)."""

    max_queries: int = 5_000          # (query, positive) rows per task, sampled when more are available
    distractors: int = 50_000         # distractor pins, sampled from the pool (capped by its size)
    distractor_pool: str = "all"      # all: any pin created before `until`; heldout: held-out pins only
    random_share: float = 0.0         # heldout_split: share of pre-cutoff pins also held out from training
    split_seed: int = 0
    since: int | None = None          # engaged pairs on days [since, until); None = open
    until: int | None = None          # also the as-of day of pin texts
    ks: tuple[int, ...] = (1, 10, 100)
    int8: bool = True                 # also score the 64-d prefix after int8 quantize -> dequantize
    short_words: int = 8              # text slices: at most this many title+description words is "short"
    seed: int = 0                     # query and distractor sampling
    batch_size: int = 64
    max_block_bytes: int = DEFAULT_BLOCK_BYTES
    progress: bool = True

    def __post_init__(self):
        if self.distractor_pool not in ("all", "heldout"):
            raise ValueError(f"pinclip eval: distractor_pool {self.distractor_pool!r}: expected 'all' or 'heldout'")
        if self.max_queries < 1 or self.distractors < 1 or not self.ks or min(self.ks) < 1:
            raise ValueError("pinclip eval: max_queries, distractors and every K must be positive")


def _sample(df: pl.DataFrame, n: int, rng: np.random.Generator) -> pl.DataFrame:
    if df.height <= n:
        return df
    return df[np.sort(rng.choice(df.height, n, replace=False))]


def _exclusions(row_keys: pl.Series, positives: pl.DataFrame,
                distractor_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) pairs where distractor ``column`` is a positive (``positives``: key, pin_id) of the row's key."""
    pairs = (pl.DataFrame({"row": np.arange(len(row_keys)), "key": row_keys})
             .join(positives, on="key")
             .join(pl.DataFrame({"pin_id": distractor_ids, "col": np.arange(len(distractor_ids))}), on="pin_id"))
    return pairs["row"].to_numpy(), pairs["col"].to_numpy()


def _variants(prefixes: Sequence[int], int8: bool) -> list[str]:
    return [str(k) for k in prefixes] + ([INT8] if int8 and PUBLISHED_DIM in prefixes else [])


def _variant(vectors: np.ndarray, variant: str) -> np.ndarray:
    return dequantize(quantize(vectors)) if variant == INT8 else vectors


def _recall_dict(counts: np.ndarray, ks: Sequence[int]) -> dict[str, float | None]:
    return {f"R@{k}": (None if np.isnan(r) else r) for k, r in recall_from_counts(counts, ks).items()}


def _score_task(task: Task, rows: pl.DataFrame, positives: pl.DataFrame, queries_of: Callable[[int], np.ndarray],
                emb: PinEmbeddings, distractor_ids: np.ndarray, variants: list[str], slice_of: dict[int, str],
                cfg: EvalConfig) -> dict:
    """Counts and Recall@K of one task's rows for every variant, overall and per text slice of the positive."""
    exclude = _exclusions(rows["key"], positives, distractor_ids)
    positive_ids = rows["pin_id"].to_numpy()
    slices = np.array([slice_of[int(p)] for p in positive_ids], dtype=object)
    out = {"queries": rows.height, "distractors": len(distractor_ids), "recall": {},
           "slices": {f"text={s}": {"queries": int((slices == s).sum()), "recall": {}} for s in TEXT_SLICES}}
    for variant in variants:
        prefix = PUBLISHED_DIM if variant == INT8 else int(variant)
        counts = distractors_at_or_above(
            _variant(queries_of(prefix), variant),
            _variant(emb.get(task.target_kind, prefix, positive_ids), variant),
            _variant(emb.get(task.target_kind, prefix, distractor_ids), variant),
            exclude=exclude, max_block_bytes=cfg.max_block_bytes)
        out["recall"][variant] = _recall_dict(counts, cfg.ks)
        for s in TEXT_SLICES:
            out["slices"][f"text={s}"]["recall"][variant] = _recall_dict(counts[slices == s], cfg.ks)
    return out


def evaluate(model, tokenizer, world: World, cutoff_day: int, cfg: EvalConfig | None = None, *,
             embedder: PinEncoder | None = None, heldout: np.ndarray | None = None) -> dict:
    """Recall@K on the five tasks for a model trained with cutoff ``cutoff_day`` (see the module docstring).

    ``embedder`` replaces the model's own :class:`Embedder` (then ``model`` and ``tokenizer`` are unused);
    ``heldout`` (pin ids) replaces the held-out split the config describes.
    Returns a JSON-ready dict: per task the query and distractor counts, ``recall[variant]["R@K"]`` for
    each prefix (and ``64-int8``), and the same per text slice of the positive pin.
    """
    cfg = cfg or EvalConfig()
    if embedder is None:
        embedder = Embedder(model, tokenizer, world, batch_size=cfg.batch_size, progress=cfg.progress)
    rng = np.random.default_rng(cfg.seed)
    if heldout is None:
        heldout = heldout_split(world, cutoff_day, random_share=cfg.random_share, seed=cfg.split_seed).heldout
    texts = pin_texts(world.pins(as_of=cfg.until), cfg.short_words)
    held = np.intersect1d(heldout, texts["pin_id"].to_numpy())

    # per surface: its (key, pin_id) rows (the key is the query: a pin, or a search query's text) and every
    # (key, pin_id) that is a positive of the key; PinText's key is the pin itself
    pintext_all = (texts.filter(pl.col("pin_id").is_in(pl.Series(held).implode()) & pl.col("text").is_not_null())
                   .select(pl.col("pin_id").alias("key"), "pin_id"))
    related_all = related_pairs(world, held, cfg.since, cfg.until).select(pl.col("query_pin_id").alias("key"), "pin_id")
    search_all = search_pairs(world, held, cfg.since, cfg.until).select(pl.col("query").alias("key"), "pin_id")
    surfaces = {
        "pintext": (pintext_all, pintext_all),
        RELATED: (related_all, pl.concat([related_all, related_all.select("key", pl.col("key").alias("pin_id"))])
                    .unique()),
        "search": (search_all, search_all),
    }
    sampled = {name: _sample(all_rows, cfg.max_queries, rng) for name, (all_rows, _) in surfaces.items()}

    pool = texts["pin_id"].to_numpy() if cfg.distractor_pool == "all" else held
    distractor_ids = np.sort(rng.choice(pool, min(cfg.distractors, len(pool)), replace=False))
    needed = np.unique(np.concatenate([distractor_ids, sampled["pintext"]["pin_id"].to_numpy(),
                                       sampled[RELATED]["key"].to_numpy(), sampled[RELATED]["pin_id"].to_numpy(),
                                       sampled["search"]["pin_id"].to_numpy()]).astype(np.int64))
    needed_texts = (pl.DataFrame({"pin_id": needed}).join(texts, on="pin_id", how="left", maintain_order="left")
                    ["text"].to_list())
    emb = embedder.embed_pins(needed, needed_texts)
    queries = sorted(set(sampled["search"]["key"].to_list()))
    query_emb = embedder.embed_texts(queries)
    query_row = {q: i for i, q in enumerate(queries)}

    variants = _variants(embedder.prefixes, cfg.int8)
    slice_of = dict(zip(texts["pin_id"].to_list(), texts["text_slice"].to_list()))
    has_text = emb.has_text[emb.rows(distractor_ids)]

    def query_vectors(task: Task, rows: pl.DataFrame, prefix: int) -> np.ndarray:
        if task.query_kind == "query":
            return query_emb[prefix][[query_row[q] for q in rows["key"].to_list()]]
        return emb.get(task.query_kind, prefix, rows["key"].to_numpy())

    results, skipped = {}, {}
    for task in TASKS:
        if task.surface == RELATED and world.vocabulary.first(RELATED) is None:
            skipped[task.name] = f"the workspace declares no surface of kind {RELATED} ({DECLARATION})"
            continue
        rows, (all_rows, positives) = sampled[task.surface], surfaces[task.surface]
        # PinText needs a text to retrieve: its distractors are the sampled pins that have one
        task_distractors = distractor_ids[has_text] if task.target_kind == "text" else distractor_ids
        queries_of = partial(query_vectors, task, rows)
        results[task.name] = {"description": task.description, "query": task.query_kind,
                              "target": task.target_kind, "pairs_available": all_rows.height,
                              **_score_task(task, rows, positives, queries_of, emb, task_distractors, variants,
                                            slice_of, cfg)}
    return {"cutoff_day": cutoff_day, "config": {**asdict(cfg), "ks": list(cfg.ks)},
            "heldout_pins": int(len(held)), "distractor_pins": int(len(distractor_ids)),
            "ks": list(cfg.ks), "variants": variants, "tasks": results, "skipped": skipped}


CATALOG_TASKS = {"pintext": "PinText image->text (own descriptive text)",
                 "board_image": "image->image by board (category)"}


def evaluate_catalog(model, tokenizer, world: World, pins, cfg: EvalConfig | None = None, *,
                     embedder: PinEncoder | None = None) -> dict:
    """Recall@K of a catalog's evaluated ``pins`` against each other (see the module docstring); more than
    ``cfg.distractors`` pins are sampled down to that many. Returns the dict :func:`evaluate` does."""
    cfg = cfg or EvalConfig(ks=catalog_eval.KS)
    if embedder is None:
        embedder = Embedder(model, tokenizer, world, batch_size=cfg.batch_size, progress=cfg.progress)
    pins = np.unique(np.asarray(pins, np.int64))
    if len(pins) > cfg.distractors:
        pins = np.sort(np.random.default_rng(cfg.seed).choice(pins, cfg.distractors, replace=False))
    texts = (pl.DataFrame({"pin_id": pins}).join(pin_texts(world.pins(as_of=cfg.until), cfg.short_words),
                                                 on="pin_id", how="left", maintain_order="left"))
    emb = embedder.embed_pins(pins, texts["text"].to_list())
    boards = (world.table("pin_board").filter(pl.col("pin_id").is_in(pl.Series(pins).implode()))
              .group_by("pin_id").agg("board_id"))
    board_of = dict(zip(boards["pin_id"].to_list(), boards["board_id"].to_list()))
    categories = [board_of.get(int(p)) for p in pins]
    variants = _variants(embedder.prefixes, cfg.int8)
    results: dict = {name: {"description": description, "query": "image", "target": target, "recall": {},
                            "slices": {}} for (name, description), target in zip(CATALOG_TASKS.items(),
                                                                                  ("text", "image"))}
    for variant in variants:
        prefix = PUBLISHED_DIM if variant == INT8 else int(variant)
        image = _variant(emb.get("image", prefix, pins), variant)
        text = catalog_eval.image_text_recall(image, _variant(emb.get("text", prefix, pins), variant),
                                              emb.has_text[emb.rows(pins)], cfg.ks)
        board = catalog_eval.image_image_recall(image, categories, cfg.ks, seed=cfg.seed)
        for name, r in (("pintext", text), ("board_image", board)):
            results[name]["queries"] = r.queries
            results[name]["recall"][variant] = {f"R@{k}": (None if np.isnan(v) else v) for k, v in r.recall.items()}
    results["pintext"]["distractors"] = max(results["pintext"]["queries"] - 1, 0)
    results["board_image"]["distractors"] = len(pins)
    skipped = {name: "a catalog: no logs (logs/impressions) to draw engaged pairs from"
               for name in (t.name for t in TASKS) if name != "pintext"}
    if not board_of:
        skipped["board_image"] = "no Pin–Board edges (boards, e.g. categories) among the evaluated pins"
        del results["board_image"]
    return {"mode": "catalog", "config": {**asdict(cfg), "ks": list(cfg.ks)}, "heldout_pins": int(len(pins)),
            "distractor_pins": int(len(pins)), "ks": list(cfg.ks), "variants": variants, "tasks": results,
            "skipped": skipped}


def split_pins(world: World, spec: str, name: str) -> np.ndarray:
    """The pins of split ``name`` in ``spec`` (``supplied_split``), or every pin of a plain list of ids."""
    split = supplied_split(world, spec)
    if split["split"].null_count() < split.height:
        split = split.filter(pl.col("split") == name)
    return split["pin_id"].to_numpy()


def evaluate_run(workdir: str | Path, run: str, *, max_queries: int = 5_000, distractors: int = 50_000,
                 split: str = "", split_name: str = "validation", progress: bool = True) -> dict:
    """Evaluate a trained run and write ``pinclip/runs/RUN/eval.json``: on the pins of ``split_name`` in
    ``split`` (a split file or pins column, or a list of pin ids), else in the run's own supplied split, else
    on its held-out pins. A catalog is scored by :func:`evaluate_catalog`. No query at all is an InputError."""
    model, tokenizer, saved = load_run(workdir, run)
    train = saved["train"]
    world = World(workdir)
    catalog = not world.has("impressions")
    cfg = EvalConfig(max_queries=max_queries, distractors=distractors, random_share=train["heldout_share"],
                     split_seed=train["seed"], progress=progress, **({"ks": catalog_eval.KS} if catalog else {}))
    run_held = heldout_split(world, train["cutoff_day"], random_share=train["heldout_share"], seed=train["seed"],
                             split=train.get("split", ""))
    spec = split or train.get("split", "")
    pins = split_pins(world, spec, split_name) if spec else run_held.heldout
    where = f"split {spec!r} ({split_name})" if spec else "the run's held-out pins"
    no_queries = input_error(f"pinclip eval: {run}", "queries", "at least one query (a pin with a text, a board "
                             "partner or engaged pairs)", f"none among the {len(pins):,} pins of {where}")
    if not len(pins):
        raise no_queries
    if catalog:
        results = evaluate_catalog(model, tokenizer, world, pins, cfg)
        results["cutoff_day"] = train["cutoff_day"]
    else:
        results = evaluate(model, tokenizer, world, train["cutoff_day"], cfg, heldout=pins if spec else None)
    trained = world.table("pins", as_of=train["cutoff_day"])["pin_id"].to_numpy()
    trained_on = int(np.isin(pins, np.setdiff1d(trained, run_held.heldout)).sum())
    results.update(run=run, evaluated=where, trained_on=trained_on)
    if not any(task["queries"] for task in results["tasks"].values()):
        raise no_queries
    if trained_on and progress:
        print(f"pinclip eval: note: {trained_on:,} of the {len(pins):,} evaluated pins were trained on by {run}",
              file=sys.stderr)
    out = Path(workdir) / "pinclip" / "runs" / run / "eval.json"
    write_text_atomic(out, json.dumps(results, indent=2, default=str))
    return results


def format_table(results: dict) -> str:
    """A plain-text table: a row per task (and per text slice), a column per variant of R@K1/K2/...."""
    ks, variants = results["ks"], results["variants"]
    head = "R@" + "/".join(str(k) for k in ks)

    def cell(recall: dict) -> str:
        return "/".join("  -  " if recall[f"R@{k}"] is None else f"{recall[f'R@{k}']:.3f}" for k in ks)

    width = max(len(head) + 8, len(ks) * 6 - 1)
    lines = [f"{'task':<24}{'queries':>8}{'distr.':>8}  " + "".join(f"{v + ' ' + head:<{width + 2}}" for v in variants)]
    for name, task in results["tasks"].items():
        rows = [(name, task["queries"], task["distractors"], task["recall"])]
        rows += [(f"  {s}", sl["queries"], "", sl["recall"]) for s, sl in task["slices"].items()]
        for label, n, d, recall in rows:
            lines.append(f"{label:<24}{n:>8}{d:>8}  " + "".join(f"{cell(recall[v]):<{width + 2}}" for v in variants))
    lines += [f"{name}: skipped: {note}" for name, note in results.get("skipped", {}).items()]
    return "\n".join(lines)
