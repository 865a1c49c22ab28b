"""Publish a team's own vectors from a Parquet file (``pin_id`` and one vector column) through the same
publish contract and checks as every source: 64-d, finite, L2-normalized (float rows) or of unit norm
(int8 rows), and few enough components clamped by int8 quantization."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pinclip.publish import EmbeddingBatch, PublishError, publish
from pinworld.files import sha256_file


def _refuse(path: Path, field: str, expected: str, found) -> PublishError:
    return PublishError(f"pinclip publish: {path}: {field}: expected {expected}, found {found}")


def read_vectors(path: Path | str) -> EmbeddingBatch:
    """``pin_id`` (integers, no nulls) and one vector column — a fixed-size list or list of floats, or of
    int8 codes already quantized — as a batch of ``fusion`` vectors."""
    path = Path(path)
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise _refuse(path, "vectors", "a readable Parquet file",
                      str(exc).splitlines()[0] if path.exists() else "no such file") from None
    if "pin_id" not in table.column_names:
        raise _refuse(path, "pin_id", "an integer column", "no such column")
    others = [c for c in table.column_names if c != "pin_id"]
    if len(others) != 1:
        raise _refuse(path, "columns", "pin_id and one vector column", ", ".join(table.column_names))
    ids, vec = table.column("pin_id"), table.column(others[0]).combine_chunks()
    if not pa.types.is_integer(ids.type) or ids.null_count:
        raise _refuse(path, "pin_id", "integers, no nulls", f"{ids.type} with {ids.null_count} nulls")
    t = vec.type
    is_list = pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)
    value_type = t.value_type if is_list else None
    if value_type is None or not (pa.types.is_floating(value_type) or pa.types.is_int8(value_type)):
        raise _refuse(path, others[0], "a list of floats or of int8 codes", t)
    ids = ids.to_numpy()
    if vec.null_count:
        first = ids[np.flatnonzero(vec.is_null().to_numpy(zero_copy_only=False))[0]]
        raise _refuse(path, others[0], "a vector in every row", f"null at pin_id {first}")
    lengths = pc.list_value_length(vec).to_numpy(zero_copy_only=False)
    if len(lengths) and (lengths != lengths[0]).any():
        r = int(np.flatnonzero(lengths != lengths[0])[0])
        raise _refuse(path, others[0], f"{lengths[0]} values in every row", f"{lengths[r]} at pin_id {ids[r]}")
    values = pc.list_flatten(vec)
    if values.null_count:
        raise _refuse(path, others[0], "no null values", f"{values.null_count} nulls")
    dim = int(lengths[0]) if len(lengths) else 0
    dtype = np.int8 if pa.types.is_int8(value_type) else np.float64 if pa.types.is_float64(value_type) else np.float32
    arr = values.to_numpy(zero_copy_only=False).astype(dtype, copy=False).reshape(len(ids), dim)
    return EmbeddingBatch(ids.astype(np.int64), {"fusion": arr})


def publish_vectors(workdir: Path | str, path: Path | str, name: str, *, on_part=None) -> dict:
    """Publish the vectors of ``path`` (see :func:`read_vectors`) as a new version of ``name``; the manifest's
    ``source`` records ``kind: parquet``, the file's name and sha256."""
    path = Path(path)
    batch = read_vectors(path)
    source = {"kind": "parquet", "file": path.name, "sha256": sha256_file(path)}
    return publish(workdir, name, batch, source=source, on_part=on_part)
