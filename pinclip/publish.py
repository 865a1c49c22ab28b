"""Publish embeddings as a versioned, checksummed artifact: ``embeddings/<name>/<version>/``.

A version is written to a hidden temporary directory, fsynced, renamed into place, and only then is
``LATEST`` replaced (write-then-rename), so a reader never sees half a version and a publish killed
midway leaves the previous version and ``LATEST`` as they were. An incremental publish hard-links the
previous version's parts and adds parts for the new pins only. Processes publishing in parallel each stage
a shard (a contiguous range of the sorted pin ids) under ``.staging/``; one commit checks every shard and
publishes them as one version.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pinclip.embeddings import KINDS, VERSION_RE, embeddings_dir, latest_version, versions
from pinclip.quantization import (
    MAX_CLAMPED_SHARE, PUBLISHED_DIM, QMAX, QMIN, SCALE, UNIT_NORM_TOLERANCE, clamped, l2_normalize, max_clamped,
    quantization_spec, quantize_unit,
)
from pinlift.core.errors import input_error
from pinworld.files import sha256_file as sha256

PART_ROWS = 131_072
QUANTIZE_BLOCK_ROWS = 8_192     # 2 MiB of float32 at a time: cache-sized, and no part-sized temporaries


class PublishError(ValueError):
    """Embeddings refused at publish time."""


@dataclass
class EmbeddingBatch:
    """Embeddings to publish: ``pin_ids`` (n,) and per kind an (n, 64) array — float (normalized and
    quantized at publish) or int8 (already quantized, e.g. copied from another version); a kind may
    have a row mask (``present``) when it does not apply to every pin (e.g. text for pins without text)."""

    pin_ids: np.ndarray
    vectors: dict[str, np.ndarray]
    present: dict[str, np.ndarray] | None = None


def _check(batch: EmbeddingBatch) -> np.ndarray:
    """Refuse bad input with a clear error; returns the rows in pin_id order (one sort serves both)."""
    ids = np.asarray(batch.pin_ids)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise PublishError(f"pinclip publish: pin_ids: expected a 1-D integer array, found {ids.dtype} {ids.shape}")
    order = np.argsort(ids, kind="stable")
    if len(ids) > 1 and (np.diff(ids[order]) == 0).any():
        raise PublishError("pinclip publish: pin_ids: expected unique ids, found duplicates")
    if "fusion" not in batch.vectors:
        raise PublishError("pinclip publish: expected a 'fusion' kind, found " + ", ".join(batch.vectors))
    for kind, v in batch.vectors.items():
        if kind not in KINDS:
            raise PublishError(f"pinclip publish: kind {kind!r}: expected one of {', '.join(KINDS)}")
        v = np.asarray(v)
        if v.shape != (len(ids), PUBLISHED_DIM):
            raise PublishError(f"pinclip publish: {kind} embeddings: expected shape ({len(ids)}, {PUBLISHED_DIM}), "
                               f"found {v.shape}")
        mask = None if not batch.present or kind not in batch.present else np.asarray(batch.present[kind], bool)
        rows = v if mask is None else v[mask]

        def pin_of(r: int) -> int:   # row r of the checked rows -> its pin id
            return int(ids[r if mask is None else np.flatnonzero(mask)[r]])

        _check_rows(kind, rows, pin_of)
    return order


ROTATE = ("apply a random orthogonal rotation before publishing (numpy: v @ scipy.stats.ortho_group.rvs(64, "
          "random_state=0)): a one-hot-like vector concentrates its norm on one axis")


def _clamped_counts(rows: np.ndarray) -> tuple[int, int]:
    """How many components, and rows, of float ``rows`` quantization clamps: block by block, normalized as
    publish normalizes them."""
    components = n_rows = 0
    for start in range(0, len(rows), QUANTIZE_BLOCK_ROWS):
        mask = clamped(l2_normalize(rows[start:start + QUANTIZE_BLOCK_ROWS]))
        n = np.count_nonzero(mask)
        components += n
        n_rows += np.count_nonzero(mask.any(axis=1)) if n else 0
    return components, n_rows


def _check_rows(kind: str, rows: np.ndarray, pin_of: Callable[[int], int]) -> None:
    """Finite, non-zero, unit-norm (int8: in dequantized units, where a clamped row may fall short) rows
    of which int8 quantization clamps at most ``MAX_CLAMPED_SHARE`` of the components (``max_clamped``)."""
    what = f"pinclip publish: {kind} embeddings"
    if rows.dtype == np.int8:
        if (rows < QMIN).any():
            r = int(np.flatnonzero((rows < QMIN).any(axis=1))[0])
            raise PublishError(f"{what}: expected int8 codes in [{QMIN}, {QMAX}], found {rows.min()} at pin_id "
                               f"{pin_of(r)}")
        squared = np.einsum("ij,ij->i", rows, rows, dtype=np.int64)
        saturated = (np.abs(rows) == QMAX).sum(axis=1)
        norm = np.sqrt(squared) * SCALE
        off = (norm > 1 + UNIT_NORM_TOLERANCE) | ((norm < 1 - UNIT_NORM_TOLERANCE) & (saturated == 0))
        if off.any():
            r = int(np.flatnonzero(off)[0])
            raise PublishError(f"{what}: expected int8 rows of unit norm (within {UNIT_NORM_TOLERANCE} in "
                               f"dequantized units, scale {SCALE:.6g}), found norm {norm[r]:.3f} at pin_id {pin_of(r)}")
        clipped = saturated.sum(), (saturated > 0).sum()
    else:
        # one pass: a row's squared norm is finite and non-zero exactly when the row is usable (a
        # finite row whose squared norm overflows is refused too: it cannot be normalized as given)
        squared = np.einsum("ij,ij->i", rows, rows)
        bad_rows = np.flatnonzero(~np.isfinite(squared))
        if len(bad_rows):
            r = int(bad_rows[0])
            bad = rows[r][~np.isfinite(rows[r])]
            found = bad[0] if len(bad) else f"a row whose norm overflows {rows.dtype}"
            raise PublishError(f"{what}: expected finite values, found {found} at pin_id {pin_of(r)}")
        clipped = None
    if (squared == 0).any():
        raise PublishError(f"{what}: expected non-zero vectors, found zero at pin_id "
                           f"{pin_of(int(np.flatnonzero(squared == 0)[0]))}")
    if clipped is None:
        clipped = _clamped_counts(rows)
    n_clipped, n_rows = map(int, clipped)
    if n_clipped > MAX_CLAMPED_SHARE * rows.size and n_clipped > max_clamped(rows.size):
        raise PublishError(f"{what}: expected at most {MAX_CLAMPED_SHARE:.1%} of components beyond int8's "
                           f"+-{QMAX * SCALE:.2g} after L2 normalization, found {n_clipped:,} of {rows.size:,} "
                           f"({n_clipped / rows.size:.1%}) in {n_rows:,} of {len(rows):,} rows: {ROTATE}")


def _quantized_rows(v: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """int8 codes of the L2-normalized ``v[rows]``, block by block. Part-sized float temporaries (four per
    part, 32 MiB each) cost more in fresh-page faults than the arithmetic does."""
    if v.dtype == np.int8:
        return v[rows]
    out = np.empty((len(rows), v.shape[1]), np.int8)
    for start in range(0, len(rows), QUANTIZE_BLOCK_ROWS):
        block = rows[start:start + QUANTIZE_BLOCK_ROWS]
        out[start:start + len(block)] = quantize_unit(v[block])
    return out


def _part_table(batch: EmbeddingBatch, rows: np.ndarray) -> pa.Table:
    cols = {"pin_id": pa.array(np.asarray(batch.pin_ids)[rows], pa.int64())}
    for kind in KINDS:
        if kind not in batch.vectors:
            continue
        q = _quantized_rows(np.asarray(batch.vectors[kind]), rows)
        mask = None
        if batch.present and kind in batch.present:
            mask = ~np.asarray(batch.present[kind], bool)[rows]
        values = pa.array(q.reshape(-1), pa.int8())
        cols[kind] = pa.FixedSizeListArray.from_arrays(values, PUBLISHED_DIM, mask=pa.array(mask) if mask is not None else None)
    return pa.table(cols)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _next_version(root: Path) -> str:
    """The version after the newest complete one under ``root``."""
    existing = versions(root.parent.parent, root.name)
    return f"v{int(VERSION_RE.match(existing[-1]).group(1)) + 1 if existing else 1:04d}"


def _write_parts(batch: EmbeddingBatch, order: np.ndarray, directory: Path, first: int,
                 on_part: Callable[[int, int], None] | None) -> list[dict]:
    """The rows of ``batch`` in ``order`` as fsynced parts ``part-<first + i>.parquet`` of ``PART_ROWS``
    rows each in ``directory``; returns their manifest entries."""
    chunks = [order[i:i + PART_ROWS] for i in range(0, len(order), PART_ROWS)] or [order]

    def write_part(i: int) -> dict:
        rows = chunks[i]
        fname = f"part-{first + i:05d}.parquet"
        # statistics on pin_id only: min/max of embedding components help no reader and cost time
        pq.write_table(_part_table(batch, rows), directory / fname, write_statistics=["pin_id"])
        _fsync(directory / fname)
        ids = np.asarray(batch.pin_ids)[rows]
        return {"file": fname, "rows": int(len(rows)), "sha256": sha256(directory / fname),
                "min_pin_id": int(ids.min()) if len(ids) else None,
                "max_pin_id": int(ids.max()) if len(ids) else None, "reused_from": None}

    parts = []
    # Arrow releases the GIL while encoding and writing: parts are written on every core
    with ThreadPoolExecutor(max_workers=min(len(chunks), os.cpu_count() or 1)) as pool:
        for i, part in enumerate(pool.map(write_part, range(len(chunks)))):
            parts.append(part)
            if on_part is not None:
                on_part(i, len(chunks))
    return parts


def _install(root: Path, tmp: Path, manifest: dict) -> None:
    """Write ``manifest`` into the finished ``tmp``, rename it to its version and move ``LATEST`` to it."""
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    _fsync(tmp / "manifest.json")
    os.rename(tmp, root / manifest["version"])
    latest_tmp = root / f".tmp-LATEST-{os.getpid()}"
    latest_tmp.write_text(manifest["version"] + "\n")
    _fsync(latest_tmp)
    os.replace(latest_tmp, root / "LATEST")


def _manifest(name: str, version: str, parent: str | None, source: dict, kinds: list[str],
              as_of_day: int | None, parts: list[dict]) -> dict:
    return {   # the fields of pinlift.core.schema's manifest, in its order
        "name": name, "version": version, "parent": parent, "source": source,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "dim": PUBLISHED_DIM, "dtype": "int8", "kinds": kinds, "l2_normalized": True,
        "quantization": quantization_spec(), "as_of_day": as_of_day,
        "rows": int(sum(p["rows"] for p in parts)), "parts": parts,
    }


def publish(workdir: Path | str, name: str, batch: EmbeddingBatch, *, source: dict,
            incremental: bool = False, as_of_day: int | None = None,
            on_part: Callable[[int, int], None] | None = None) -> dict:
    """Write a new version of ``name`` and move ``LATEST`` to it; returns its manifest.

    With ``incremental`` the previous version's parts are reused (hard-linked) and ``batch`` must
    hold only pins that version lacks. ``on_part(i, n_parts)`` is called after each new part.
    """
    order = _check(batch)
    root = embeddings_dir(workdir, name)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    version = _next_version(root)
    parent = latest_version(workdir, name) if incremental else None
    if incremental and parent is None:
        raise PublishError(f"pinclip publish: {root}: --since-day needs a previous version, found none")
    tmp = root / f".tmp-{version}-{os.getpid()}"
    tmp.mkdir()
    parts = []
    kinds = [k for k in KINDS if k in batch.vectors]
    if parent is not None:
        prev = json.loads((root / parent / "manifest.json").read_text())
        if prev["kinds"] != kinds:
            shutil.rmtree(tmp)
            raise PublishError(f"pinclip publish: {root / parent}: kinds {prev['kinds']} differ from {kinds}")
        old_ids = np.concatenate([pq.read_table(root / parent / p["file"], columns=["pin_id"]).column(0).to_numpy()
                                  for p in prev["parts"]])
        overlap = np.intersect1d(old_ids, batch.pin_ids)
        if len(overlap):
            shutil.rmtree(tmp)
            raise PublishError(f"pinclip publish: incremental batch: expected only pins missing from {parent}, "
                               f"found {len(overlap)} already published, e.g. pin_id {int(overlap[0])}")
        for p in prev["parts"]:
            _link(root / parent / p["file"], tmp / p["file"])
            parts.append({**p, "reused_from": p.get("reused_from") or parent})
    parts += _write_parts(batch, order, tmp, len(parts), on_part)
    manifest = _manifest(name, version, parent, source, kinds, as_of_day, parts)
    _install(root, tmp, manifest)
    return manifest


def _link(src: Path, dst: Path) -> None:
    """Hard-link ``src`` as ``dst`` (a copy across file systems)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


# ---- publishing in parallel: shards staged by independent processes, then one commit ----

STAGING = ".staging"   # embeddings/<name>/.staging/<build key>/shard-<i>-of-<n>/: parts and shard.json


@dataclass(frozen=True)
class Shard:
    """Share ``index`` of ``count`` of a catalog: a contiguous range of its sorted pin ids."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"i/n"`` with 0 <= i < n, or ``"env"``: ``$RANK/$WORLD_SIZE`` (as torchrun sets them)."""
        given = f"{os.environ.get('RANK')}/{os.environ.get('WORLD_SIZE')}" if text == "env" else text
        i, _, n = given.partition("/")
        if not (i.isdigit() and n.isdigit() and int(i) < int(n)):
            raise input_error("pinclip publish", "--shard", "I/N with 0 <= I < N (e.g. 0/2), or env "
                              "($RANK/$WORLD_SIZE)", repr(given))
        return cls(int(i), int(n))

    @property
    def label(self) -> str:
        return f"shard-{self.index:05d}-of-{self.count:05d}"

    def rows(self, total: int, align: int = 1) -> slice:
        """This share of ``total`` sorted rows; boundaries fall on multiples of ``align`` (the embedder's
        batch size, so every shard embeds exactly the batches a one-process publish does)."""
        blocks = -(-total // align)
        lo, hi = (min(total, blocks * k // self.count * align) for k in (self.index, self.index + 1))
        return slice(lo, hi)


def staging_key(source: dict, kinds: list[str], as_of_day: int | None, count: int) -> str:
    """The build every shard of the same publish stages into: a hash of what it publishes."""
    what = {"source": source, "kinds": kinds, "as_of_day": as_of_day, "shards": count}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:12]


def stage_shard(workdir: Path | str, name: str, batch: EmbeddingBatch, shard: Shard, *, total_rows: int,
                source: dict, as_of_day: int | None = None,
                on_part: Callable[[int, int], None] | None = None) -> dict:
    """Check and write one shard's parts (``batch``: its share of ``total_rows`` pins) into the staging area
    of the version being built, atomically (a rerun replaces it); returns its record (``shard.json``)."""
    order = _check(batch)
    kinds = [k for k in KINDS if k in batch.vectors]
    key = staging_key(source, kinds, as_of_day, shard.count)
    build = embeddings_dir(workdir, name) / STAGING / key
    build.mkdir(parents=True, exist_ok=True)
    tmp = build / f".tmp-{shard.label}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    parts = _write_parts(batch, order, tmp, 0, on_part)
    record = {"name": name, "key": key, "shard": shard.index, "shards": shard.count, "total_rows": total_rows,
              "source": source, "kinds": kinds, "as_of_day": as_of_day,
              "rows": int(sum(p["rows"] for p in parts)), "parts": parts}
    (tmp / "shard.json").write_text(json.dumps(record, indent=2))
    _fsync(tmp / "shard.json")
    shutil.rmtree(build / shard.label, ignore_errors=True)
    os.rename(tmp, build / shard.label)
    return record


def _staged_build(root: Path, key: str | None) -> Path:
    """The build to commit: ``key``, or the only one staged."""
    builds = sorted(p.name for p in (root / STAGING).glob("*") if p.is_dir()) if (root / STAGING).is_dir() else []
    if key:
        if key not in builds:
            raise input_error(root / STAGING, "--commit", f"a staged build ({', '.join(builds) or 'none staged'})",
                              repr(key))
        return root / STAGING / key
    if len(builds) != 1:
        raise input_error(root / STAGING, "--commit", "one build staged by `pinclip publish --shard I/N` "
                          "(else --commit KEY)", ", ".join(builds) or "none")
    return root / STAGING / builds[0]


def _complete_shards(build: Path) -> list[dict]:
    """Every shard's record, in order, each part present with its rows and sha256; else one line naming
    the first shard or part that is missing, half-written or different."""
    records = [json.loads(p.read_text()) for p in sorted(build.glob("shard-*/shard.json"))]
    if not records:
        raise input_error(build, "shards", "complete shards (shard-I-of-N/shard.json)", "none")
    first = records[0]
    by_index = {r["shard"]: r for r in records}
    for i in range(first["shards"]):
        label = Shard(i, first["shards"]).label
        if i not in by_index:
            writing = any(build.glob(f".tmp-{label}-*"))
            raise input_error(build / label, f"shard {i}/{first['shards']}", "complete (shard.json written last)",
                              "half-written" if writing else "missing")
        r = by_index[i]
        for field in ("key", "shards", "total_rows", "source", "kinds", "as_of_day"):
            if r[field] != first[field]:
                raise input_error(build / label / "shard.json", field, first[field], r[field])
        for p in r["parts"]:
            path = build / label / p["file"]
            if not path.is_file():
                raise input_error(path, "file", "present", "missing")
            digest = sha256(path)
            if digest != p["sha256"]:
                raise input_error(path, "sha256", p["sha256"], digest)
            rows = pq.ParquetFile(path).metadata.num_rows
            if rows != p["rows"]:
                raise input_error(path, "rows", p["rows"], rows)
    records = [by_index[i] for i in range(first["shards"])]
    bounds = [(p["min_pin_id"], p["max_pin_id"]) for r in records for p in r["parts"] if p["rows"]]
    for (_, hi), (lo, _) in zip(bounds, bounds[1:]):
        if lo <= hi:
            raise input_error(build, "pin_id ranges", "disjoint and ascending across shards", f"{lo} after {hi}")
    rows = sum(r["rows"] for r in records)
    if rows != first["total_rows"]:
        raise input_error(build, "rows", f"{first['total_rows']} over all shards", rows)
    return records


def commit_shards(workdir: Path | str, name: str, key: str | None = None) -> dict:
    """Publish the version staged by every shard of build ``key`` (default: the only one staged) exactly as a
    one-process publish would (same manifest, parts and ``LATEST``), once every shard is complete; returns
    its manifest and removes the staging area. Nothing is published when a shard or part is missing."""
    root = embeddings_dir(workdir, name)
    build = _staged_build(root, key)
    records = _complete_shards(build)
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    version = _next_version(root)
    tmp = root / f".tmp-{version}-{os.getpid()}"
    tmp.mkdir()
    parts = []
    for r in records:
        for p in (p for p in r["parts"] if p["rows"]):   # a shard with no pins stages one empty part
            fname = f"part-{len(parts):05d}.parquet"
            _link(build / Shard(r["shard"], r["shards"]).label / p["file"], tmp / fname)
            parts.append({**p, "file": fname})
    first = records[0]
    manifest = _manifest(name, version, None, first["source"], first["kinds"], first["as_of_day"], parts)
    _install(root, tmp, manifest)
    shutil.rmtree(build)
    return manifest
