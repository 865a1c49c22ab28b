"""Publish-side throughput: quantize + write (target >= 1M pins/s), reader lookup of 4,096 ids
(target <= 1 ms), HNSW recall@10 vs exact at >= 5k queries/s single-threaded on 100k items, and with
``--workdir W --run R`` publishing a trained PinCLIP run end to end (target >= 500 pins/s, tiny model).

The HNSW figures use the published fusion embeddings of ``--embeddings NAME`` in ``--workdir`` when
given (real structure), else clustered synthetic unit vectors."""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from machine_info import machine, save
from pinclip.embeddings import open_embeddings
from pinclip.index import CandidateIndex, HNSWConfig, recall_against_exact
from pinclip.publish import EmbeddingBatch, publish
from pinclip.quantization import l2_normalize


def clustered(n: int, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors around 2,000 centres: closer to real embeddings than isotropic noise."""
    centres = rng.normal(size=(2_000, 64)).astype(np.float32)
    return l2_normalize(centres[rng.integers(0, 2_000, n)] + 0.35 * rng.normal(size=(n, 64)).astype(np.float32))


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pins", type=int, default=1_000_000)
    ap.add_argument("--index-items", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=10_000)
    ap.add_argument("--ef-search", type=int, nargs="+", default=[32, 64, 128])
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--run", default=None, help="a PinCLIP run in --workdir to publish end to end")
    ap.add_argument("--embeddings", default=None, help="published embeddings in --workdir for the HNSW figures")
    ap.add_argument("--m", type=int, default=32)
    ap.add_argument("--out", default="benchmarks/results/publish.json")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    vectors = clustered(args.pins, rng)
    ids = np.arange(args.pins, dtype=np.int64)
    out: dict = {"machine": machine()}
    with tempfile.TemporaryDirectory() as tmp:
        n = [0]

        def write():
            n[0] += 1
            publish(Path(tmp) / str(n[0]), "bench", EmbeddingBatch(ids, {"fusion": vectors}), source={"kind": "bench"})

        seconds = best_of(write, 3)
        out["quantize_write"] = {"pins": args.pins, "seconds": seconds, "pins_per_s": args.pins / seconds,
                                 "target_pins_per_s": 1_000_000}
        emb = open_embeddings(Path(tmp) / "1", "bench")
        query_ids = rng.choice(ids, 4096, replace=False)
        lookup_s = best_of(lambda: emb.lookup(query_ids), 50)
        deq_s = best_of(lambda: emb.lookup(query_ids, dequantize_values=True), 50)
        out["lookup_4096"] = {"ms": lookup_s * 1e3, "ms_dequantized": deq_s * 1e3, "target_ms": 1.0}
    if args.workdir and args.run:
        from pinclip.run_source import publish_run

        t = time.perf_counter()
        m = publish_run(args.workdir, args.run, "bench_publish", progress=False)
        seconds = time.perf_counter() - t
        out["publish_run"] = {"run": args.run, "pins": m["rows"], "seconds": seconds, "pins_per_s": m["rows"] / seconds,
                              "target_pins_per_s": 500}
    if args.workdir and args.embeddings:
        emb = open_embeddings(args.workdir, args.embeddings)
        vecs = emb.lookup(emb.pin_ids, dequantize_values=True).values
        pick = rng.permutation(len(vecs))
        items = vecs[pick[: args.index_items]]
        queries = vecs[pick[args.index_items: args.index_items + args.queries]]
        if len(queries) < args.queries:     # fewer pins than items + queries: query with indexed pins
            queries = items[rng.choice(len(items), args.queries)]
        out["hnsw_data"] = f"{emb.ref} fusion ({len(items):,} items)"
    else:
        items = clustered(args.index_items, rng)
        queries = clustered(args.queries, rng)
        out["hnsw_data"] = "clustered synthetic unit vectors"
    faiss.omp_set_num_threads(2)
    t = time.perf_counter()
    index = faiss.IndexHNSWFlat(64, args.m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 200
    index.add(items)
    build_s = time.perf_counter() - t
    cand = CandidateIndex(index, np.arange(len(items)), "bench@v0001", HNSWConfig(m=args.m))
    out["hnsw"] = {"items": len(items), "m": args.m, "build_seconds": build_s, "targets": {"recall_at_10": 0.95, "qps": 5000},
                   "by_ef_search": []}
    for ef in args.ef_search:
        cand.set_ef_search(ef)
        out["hnsw"]["by_ef_search"].append(recall_against_exact(cand, queries, k=10))
    print(json.dumps(out, indent=2))
    save(out, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
