"""Publish embeddings as a versioned, checksummed artifact: ``embeddings/<name>/<version>/``.

A version is written to a hidden temporary directory, fsynced, renamed into place, and only then is
``LATEST`` replaced (write-then-rename), so a reader never sees half a version and a publish killed
midway leaves the previous version and ``LATEST`` as they were. An incremental publish hard-links the
previous version's parts and adds parts for the new pins only.
"""

from __future__ import annotations

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
    existing = versions(workdir, name)
    number = int(VERSION_RE.match(existing[-1]).group(1)) + 1 if existing else 1
    version = f"v{number:04d}"
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
            src = root / parent / p["file"]
            try:
                os.link(src, tmp / p["file"])
            except OSError:
                shutil.copy2(src, tmp / p["file"])
            parts.append({**p, "reused_from": p.get("reused_from") or parent})
    chunks = [order[i:i + PART_ROWS] for i in range(0, len(order), PART_ROWS)] or [order]
    first = len(parts)

    def write_part(i: int) -> dict:
        rows = chunks[i]
        fname = f"part-{first + i:05d}.parquet"
        # statistics on pin_id only: min/max of embedding components help no reader and cost time
        pq.write_table(_part_table(batch, rows), tmp / fname, write_statistics=["pin_id"])
        _fsync(tmp / fname)
        ids = np.asarray(batch.pin_ids)[rows]
        return {"file": fname, "rows": int(len(rows)), "sha256": sha256(tmp / fname),
                "min_pin_id": int(ids.min()) if len(ids) else None,
                "max_pin_id": int(ids.max()) if len(ids) else None, "reused_from": None}

    # Arrow releases the GIL while encoding and writing: parts are written on every core
    with ThreadPoolExecutor(max_workers=min(len(chunks), os.cpu_count() or 1)) as pool:
        for i, part in enumerate(pool.map(write_part, range(len(chunks)))):
            parts.append(part)
            if on_part is not None:
                on_part(i, len(chunks))
    manifest = {   # the fields of pinlift.core.schema's manifest, in its order
        "name": name, "version": version, "parent": parent, "source": source,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "dim": PUBLISHED_DIM, "dtype": "int8", "kinds": kinds, "l2_normalized": True,
        "quantization": quantization_spec(), "as_of_day": as_of_day,
        "rows": int(sum(p["rows"] for p in parts)), "parts": parts,
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    _fsync(tmp / "manifest.json")
    os.rename(tmp, root / version)
    latest_tmp = root / f".tmp-LATEST-{os.getpid()}"
    latest_tmp.write_text(version + "\n")
    _fsync(latest_tmp)
    os.replace(latest_tmp, root / "LATEST")
    return manifest
