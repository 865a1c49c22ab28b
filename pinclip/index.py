"""Candidate generation: a faiss HNSW index (inner product) over published fusion embeddings.

Related Pins queries with a pin's fusion embedding, Search with a query text's text embedding; both
search the corpus of fusion embeddings. Indexes live in ``indexes/<name>/<version>/``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from pinclip.embeddings import EmbeddingError, PublishedEmbeddings, open_embeddings


@dataclass(frozen=True)
class HNSWConfig:
    m: int = 32
    ef_construction: int = 200
    ef_search: int = 64


class CandidateIndex:
    """An HNSW index over a published version's fusion embeddings, returning pin ids."""

    def __init__(self, index: faiss.Index, pin_ids: np.ndarray, ref: str, cfg: HNSWConfig):
        self.index = index
        self.pin_ids = pin_ids
        self.ref = ref
        self.cfg = cfg
        self.set_ef_search(cfg.ef_search)

    def set_ef_search(self, ef: int) -> None:
        faiss.downcast_index(self.index).hnsw.efSearch = ef

    @classmethod
    def build(cls, emb: PublishedEmbeddings, cfg: HNSWConfig = HNSWConfig()) -> "CandidateIndex":
        look = emb.lookup(emb.pin_ids, "fusion", dequantize_values=True)
        vectors = np.ascontiguousarray(look.values[look.found])
        index = faiss.IndexHNSWFlat(vectors.shape[1], cfg.m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = cfg.ef_construction
        index.add(vectors)
        return cls(index, emb.pin_ids[look.found], emb.ref, cfg)

    def search(self, vectors: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, pin ids) for float query vectors (n, 64); -1 ids where fewer exist."""
        scores, rows = self.index.search(np.ascontiguousarray(vectors, np.float32), k)
        return scores, np.where(rows >= 0, self.pin_ids[np.maximum(rows, 0)], -1)

    def related(self, emb: PublishedEmbeddings, query_pin_ids, k: int = 10) -> np.ndarray:
        """Related Pins candidates for query pins (the query pin itself excluded)."""
        look = emb.lookup(query_pin_ids, "fusion", dequantize_values=True)
        if not look.found.all():
            missing = np.asarray(query_pin_ids)[~look.found][0]
            raise EmbeddingError(f"{emb.ref}: pin_id {int(missing)}: expected a fusion embedding, found none")
        _, ids = self.search(look.values, k + 1)
        out = np.full((len(ids), k), -1, np.int64)
        for i, (q, row) in enumerate(zip(np.asarray(query_pin_ids), ids)):
            kept = row[(row != q) & (row >= 0)][:k]
            out[i, : len(kept)] = kept
        return out

    def save(self, directory: Path) -> Path:
        """Write atomically: hnsw.faiss, pin_ids.npy, index.json."""
        directory = Path(directory)
        tmp = directory.with_name(f".tmp-{directory.name}-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        faiss.write_index(self.index, str(tmp / "hnsw.faiss"))
        np.save(tmp / "pin_ids.npy", self.pin_ids, allow_pickle=False)
        (tmp / "index.json").write_text(json.dumps({"ref": self.ref, "m": self.cfg.m,
                                                    "ef_construction": self.cfg.ef_construction,
                                                    "ef_search": self.cfg.ef_search, "rows": len(self.pin_ids)}))
        shutil.rmtree(directory, ignore_errors=True)
        os.rename(tmp, directory)
        return directory

    @classmethod
    def load(cls, directory: Path) -> "CandidateIndex":
        directory = Path(directory)
        meta_path = directory / "index.json"
        if not meta_path.is_file():
            raise EmbeddingError(f"{meta_path}: not found (run `pinclip index build`)")
        meta = json.loads(meta_path.read_text())
        cfg = HNSWConfig(meta["m"], meta["ef_construction"], meta["ef_search"])
        return cls(faiss.read_index(str(directory / "hnsw.faiss")),
                   np.load(directory / "pin_ids.npy", allow_pickle=False), meta["ref"], cfg)


def index_dir(workdir: Path | str, emb: PublishedEmbeddings) -> Path:
    return Path(workdir) / "indexes" / emb.name / emb.version


def recall_against_exact(index: CandidateIndex, queries: np.ndarray, k: int = 10) -> dict:
    """Recall@k of the HNSW results against exact inner-product search, and single-thread QPS."""
    exact = faiss.IndexFlatIP(index.index.d)
    exact.add(faiss.downcast_index(index.index).storage.reconstruct_n(0, index.index.ntotal))
    _, truth_rows = exact.search(np.ascontiguousarray(queries, np.float32), k)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        start = time.perf_counter()
        _, rows = index.index.search(np.ascontiguousarray(queries, np.float32), k)
        seconds = time.perf_counter() - start
    finally:
        faiss.omp_set_num_threads(threads)
    hits = sum(len(np.intersect1d(a, b)) for a, b in zip(rows, truth_rows))
    return {"recall_at_k": hits / (k * len(queries)), "k": k, "queries": len(queries),
            "qps_single_thread": len(queries) / max(seconds, 1e-9),
            "ef_search": faiss.downcast_index(index.index).hnsw.efSearch}


def build_index(workdir: Path | str, ref: str, cfg: HNSWConfig = HNSWConfig()) -> Path:
    emb = open_embeddings(workdir, ref)
    return CandidateIndex.build(emb, cfg).save(index_dir(workdir, emb))
