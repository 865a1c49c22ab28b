"""Neighbor pairs for the Pin-to-Pin objective (paper §3.2.1): random walks over the Pin–Board graph.

For every query pin, ``num_walks`` walks of ``walk_length`` pin→board→pin steps start at the pin; after
each step a walk jumps back to its query with probability ``restart_prob``. The pins a query's walks land
on are counted, and the ``top_k`` most visited (the query itself excluded; ties to the lower pin id) are
cached as Parquet (``pin_id, neighbor_id, visits``). Training then samples ``n`` positives per query from
that cache, weighted by visits. All walkers of a chunk of queries advance together as numpy arrays over
the CSR adjacency, so the cost is ``num_walks * walk_length`` gathers per query, with no Python loop per
pin.

The graph is ``World.table('pin_board', as_of=T)`` restricted to pins created before T: nothing from day
T onward enters. Pairs of pins repinned by the same user on the same day (``session_pairs``) are the
engagement-based alternative the paper mentions.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl
import scipy.sparse as sp

from pinclip.settings import WalkConfig
from pinlift.core.schema import TABLES
from pinlift.core.vocabulary import REPIN
from pinworld.world import World

MAX_VISITS_IN_MEMORY = 1 << 23  # walk steps held at once; queries are processed in chunks below this
CACHE_VERSION = 1               # bump when the walk changes, so old caches are not reused


@dataclass(frozen=True)
class _Graph:
    pin_ids: np.ndarray       # dense pin index -> pin_id
    pin_indptr: np.ndarray    # CSR pin -> boards
    pin_boards: np.ndarray
    board_indptr: np.ndarray  # CSR board -> pins
    board_pins: np.ndarray


def _graph(edges: pl.DataFrame) -> _Graph:
    pin_ids, pin = np.unique(edges["pin_id"].to_numpy(), return_inverse=True)
    _, board = np.unique(edges["board_id"].to_numpy(), return_inverse=True)
    adj = sp.csr_matrix((np.ones(len(pin), np.int8), (pin, board)))
    adj.sum_duplicates()
    adj_t = adj.T.tocsr()
    return _Graph(pin_ids, adj.indptr.astype(np.int64), adj.indices.astype(np.int64),
                  adj_t.indptr.astype(np.int64), adj_t.indices.astype(np.int64))


def _step(indptr: np.ndarray, indices: np.ndarray, nodes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One uniformly random neighbour of each node (every node has at least one)."""
    start = indptr[nodes]
    degree = indptr[nodes + 1] - start
    offset = np.minimum((rng.random(len(nodes)) * degree).astype(np.int64), degree - 1)
    return indices[start + offset]


def _top_visited(query: np.ndarray, pin: np.ndarray, n_pins: int, top_k: int) -> tuple[np.ndarray, ...]:
    """Visit counts of (query, pin) pairs, the top ``top_k`` pins per query (ties to the lower pin)."""
    keep = query != pin
    pair, visits = np.unique(query[keep] * n_pins + pin[keep], return_counts=True)  # sorted by (query, pin)
    query, pin = np.divmod(pair, n_pins)
    most = int(visits.max(initial=0))
    order = np.argsort(query * (most + 1) + (most - visits), kind="stable")  # stable: pin order within ties
    query, pin, visits = query[order], pin[order], visits[order]
    first = np.flatnonzero(np.r_[True, query[1:] != query[:-1]])
    rank = np.arange(len(query)) - np.repeat(first, np.diff(np.r_[first, len(query)]))
    top = rank < top_k
    return query[top], pin[top], visits[top]


def _walk_chunk(g: _Graph, queries: np.ndarray, cfg: WalkConfig, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    walker_query = np.repeat(queries, cfg.num_walks)
    current = walker_query
    visits = np.empty((cfg.walk_length, len(current)), np.int64)
    for t in range(cfg.walk_length):
        landed = _step(g.board_indptr, g.board_pins, _step(g.pin_indptr, g.pin_boards, current, rng), rng)
        visits[t] = landed
        current = landed
        if cfg.restart_prob > 0:
            current = np.where(rng.random(len(current)) < cfg.restart_prob, walker_query, landed)
    return _top_visited(np.tile(walker_query, cfg.walk_length), visits.reshape(-1), len(g.pin_ids), cfg.top_k)


def random_walk_topk(edges: pl.DataFrame, cfg: WalkConfig = WalkConfig()) -> pl.DataFrame:
    """Top-``cfg.top_k`` visited pins of every pin of the ``pin_id, board_id`` edges:
    ``pin_id, neighbor_id, visits`` sorted by pin, then visits descending. Deterministic given the seed."""
    schema = {"pin_id": pl.Int64, "neighbor_id": pl.Int64, "visits": pl.Int64}
    if edges.height == 0:
        return pl.DataFrame(schema=schema)
    g = _graph(edges)
    n = len(g.pin_ids)
    chunk = max(1, MAX_VISITS_IN_MEMORY // (cfg.num_walks * cfg.walk_length))
    parts = [_walk_chunk(g, np.arange(lo, min(lo + chunk, n)), cfg, np.random.default_rng([cfg.seed, i]))
             for i, lo in enumerate(range(0, n, chunk))]
    query, pin, visits = (np.concatenate(a) for a in zip(*parts))
    return pl.DataFrame({"pin_id": g.pin_ids[query], "neighbor_id": g.pin_ids[pin], "visits": visits},
                        schema=schema)


def _live_pins(world: World, as_of: int, exclude) -> pl.Series:
    ids = world.table("pins", as_of=as_of)["pin_id"]
    return ids if exclude is None else ids.filter(~ids.is_in(pl.Series(np.asarray(exclude, np.int64)).implode()))


def graph_edges(world: World, as_of: int, exclude=None) -> pl.DataFrame:
    """Pin–Board edges saved before ``as_of`` between pins created before it, minus the ``exclude`` pins."""
    live = _live_pins(world, as_of, exclude)
    return (world.table("pin_board", as_of=as_of).select("pin_id", "board_id")
            .filter(pl.col("pin_id").is_in(live.implode())))


def _cache_path(world: World, as_of: int, cfg: WalkConfig, exclude, cache_dir: Path) -> Path:
    excluded = np.unique(np.asarray([] if exclude is None else exclude, np.int64))
    sources = {}
    for table in ("pins", "pin_board"):
        rel = TABLES[table].path
        path = world.workdir / rel
        stat = path.stat() if path.exists() else None   # a catalog alone has no pin_board table
        sources[table] = (world.meta.get("checksums", {}).get(rel)
                          or (f"{stat.st_size}-{stat.st_mtime_ns}" if stat else "absent"))
    key = json.dumps({"version": CACHE_VERSION, "as_of": as_of, "walk": asdict(cfg), "sources": sources,
                      "exclude": hashlib.sha256(excluded.tobytes()).hexdigest()}, sort_keys=True)
    return cache_dir / f"neighbors-T{as_of}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.parquet"


def neighbor_candidates(world: World, as_of: int, cfg: WalkConfig = WalkConfig(), *,
                        cache_dir: Path | str | None = None, exclude=None) -> pl.DataFrame:
    """The random-walk top-K of every pin in the graph before ``as_of`` (see ``graph_edges``), read from
    ``cache_dir`` (default ``<workdir>/pinclip/cache``) when this cutoff, config, exclusion and world
    were computed before, else computed and cached there."""
    cache_dir = Path(cache_dir) if cache_dir is not None else world.workdir / "pinclip" / "cache"
    path = _cache_path(world, as_of, cfg, exclude, cache_dir)
    if path.is_file():
        return pl.read_parquet(path)
    top = random_walk_topk(graph_edges(world, as_of, exclude), cfg)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    top.write_parquet(tmp)
    os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file
    return top


def session_pairs(world: World, as_of: int, *, exclude=None, max_session_saves: int = 50) -> pl.DataFrame:
    """``pin_id, neighbor_id, sessions``: ordered pairs of distinct pins repinned by one user on one day
    before ``as_of``, with the number of such sessions. Sessions with more than ``max_session_saves``
    saves (bulk saving, quadratic in pairs) are skipped."""
    live = _live_pins(world, as_of, exclude)
    saves = (world.impressions(as_of=as_of).filter(pl.col(REPIN))
             .select("user_id", "day", "pin_id").unique()
             .filter(pl.col("pin_id").is_in(live.implode()))
             .filter(pl.len().over("user_id", "day") <= max_session_saves))
    return (saves.join(saves.rename({"pin_id": "neighbor_id"}), on=["user_id", "day"])
            .filter(pl.col("pin_id") != pl.col("neighbor_id"))
            .group_by("pin_id", "neighbor_id").agg(pl.len().cast(pl.Int64).alias("sessions"))
            .sort("pin_id", "neighbor_id"))


def sample_positives(candidates: pl.DataFrame, n: int = 5, *, seed: int = 0,
                     weight: str = "visits") -> pl.DataFrame:
    """``pin_id, neighbor_id``: up to ``n`` distinct positives per query drawn from ``candidates``
    without replacement, with probability proportional to ``weight`` at each draw
    (Efraimidis–Spirakis keys). Deterministic given the seed and the candidate set."""
    cand = candidates.select("pin_id", "neighbor_id", weight).sort("pin_id", "neighbor_id")
    rng = np.random.default_rng(seed)
    key = rng.exponential(size=cand.height) / cand[weight].to_numpy().astype(np.float64)
    return (cand.with_columns(pl.Series("key", key))
            .sort(["pin_id", "key"])
            .group_by("pin_id", maintain_order=True).head(n)
            .select("pin_id", "neighbor_id"))


class LocalBatches:
    """Pin-to-Pin batches built from graph neighbourhoods, for hard in-batch negatives.

    A uniform batch of a few hundred pairs holds almost no two queries of one topic, so the sigmoid loss is
    met by the topic alone. Here each batch is ``batch_size // group`` anchor queries, each followed by up to
    ``group - 1`` queries drawn (by visits) from the anchor's walk candidates: a query's in-batch negatives
    then include the positives of pins near it in the graph, which share its topic but mostly not its
    board, as PinSage's hard negatives do. Every query is used once per batch, with one of its pairs.
    Rows index the ``pairs`` frame (``pin_id, neighbor_id`` as ``sample_positives`` returns it)."""

    def __init__(self, pairs: pl.DataFrame, candidates: pl.DataFrame, group: int):
        if group < 2:
            raise ValueError(f"pinclip: neighbor group {group}: expected at least 2 queries per anchor")
        self.group = group
        query = pairs["pin_id"].to_numpy()
        self.row_order = np.argsort(query, kind="stable")     # a query's pair rows: first[q] .. first[q]+count[q]
        self.queries, self.first, self.count = np.unique(query[self.row_order], return_index=True, return_counts=True)
        # the walk candidates between queries, as CSR over query indices
        known = pl.Series(self.queries).implode()
        cand = (candidates.filter(pl.col("pin_id").is_in(known) & pl.col("neighbor_id").is_in(known))
                .sort("pin_id", "neighbor_id"))
        src = np.searchsorted(self.queries, cand["pin_id"].to_numpy())
        self.indptr = np.r_[0, np.cumsum(np.bincount(src, minlength=len(self.queries)))]
        self.near = np.searchsorted(self.queries, cand["neighbor_id"].to_numpy())
        self.visits = cand["visits"].to_numpy().astype(np.float64)

    def rows(self, batch_size: int, rng: np.random.Generator) -> np.ndarray:
        """One batch of ``batch_size`` distinct pair rows (distinct queries too)."""
        n = len(self.queries)
        if n < batch_size:
            raise ValueError(f"pinclip: {n} neighbor queries are fewer than one batch of {batch_size}")
        used = np.zeros(n, bool)
        picked: list[int] = []
        while len(picked) < batch_size:
            anchor = int(rng.integers(n))
            if used[anchor]:
                continue
            members = [anchor]
            lo, hi = self.indptr[anchor], self.indptr[anchor + 1]
            near, w = self.near[lo:hi], self.visits[lo:hi]
            fresh = ~used[near]
            near, w = near[fresh], w[fresh]
            take = min(self.group - 1, len(near), batch_size - len(picked) - 1)
            if take > 0:
                members += rng.choice(near, size=take, replace=False, p=w / w.sum()).tolist()
            used[members] = True
            picked += members
        q = np.asarray(picked, np.int64)
        return self.row_order[self.first[q] + (rng.random(len(q)) * self.count[q]).astype(np.int64)]
