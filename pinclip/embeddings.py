"""Read published embeddings: verify the manifest and checksums, look up pins, report coverage.

Consumers (ranking, the A/B simulator, the HNSW index) never run PinCLIP; they open a version here.
A pin without an embedding is reported in ``Lookup.found`` and counted, never returned as a silent zero.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pinclip.quantization import PUBLISHED_DIM, SCHEME, dequantize, quantization_spec
from pinlift.core.schema import EMBEDDING_TABLES
from pinworld.files import sha256_file as sha256

MANIFEST = EMBEDDING_TABLES["manifest"]
KINDS = tuple(c.name for c in EMBEDDING_TABLES["embedding_parts"].columns if c.name != "pin_id")  # fusion first
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
VERSION_RE = re.compile(r"^v(\d{4,})$")


def embeddings_dir(workdir: Path | str, name: str) -> Path:
    """``W/embeddings/<name>``; the name is a name, never a path."""
    if not NAME_RE.match(name):
        raise ValueError(f"pinclip: embeddings name {name!r}: expected letters, digits, '_', '-' or '.'")
    return Path(workdir) / "embeddings" / name


def versions(workdir: Path | str, name: str) -> list[str]:
    """Complete versions of ``name``, oldest first."""
    root = embeddings_dir(workdir, name)
    if not root.is_dir():
        return []
    found = [p.name for p in root.iterdir() if p.is_dir() and VERSION_RE.match(p.name) and (p / "manifest.json").is_file()]
    return sorted(found, key=lambda v: int(VERSION_RE.match(v).group(1)))


def latest_version(workdir: Path | str, name: str) -> str | None:
    """The current version of ``name``, or None before its first publish."""
    path = embeddings_dir(workdir, name) / "LATEST"
    return path.read_text().strip() if path.is_file() else None


class EmbeddingError(ValueError):
    """A published version is missing, malformed or corrupted."""


@dataclass
class Lookup:
    """Rows for requested pins: ``values`` int8 (or float32 when dequantized), ``found`` bool mask.
    Rows of missing pins are zero *and* flagged in ``found``; check ``found`` before using them."""

    values: np.ndarray
    found: np.ndarray

    @property
    def missing(self) -> int:
        return int((~self.found).sum())


class PublishedEmbeddings:
    """One verified version of a published embedding, held in memory (64 bytes per pin and kind)."""

    def __init__(self, directory: Path, manifest: dict, pin_ids: np.ndarray, data: dict[str, np.ndarray],
                 present: dict[str, np.ndarray]):
        self.directory = directory
        self.manifest = manifest
        self.pin_ids = pin_ids          # sorted int64
        self.data = data                # kind -> int8 (n, 64)
        self.present = present          # kind -> bool (n,)

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def kinds(self) -> list[str]:
        return list(self.manifest["kinds"])

    def __len__(self) -> int:
        return len(self.pin_ids)

    def lookup(self, pin_ids, kind: str = "fusion", dequantize_values: bool = False) -> Lookup:
        """Embeddings of ``pin_ids`` (any order, repeats allowed)."""
        if kind not in self.data:
            raise EmbeddingError(f"{self.directory}: kind {kind!r}: expected one of {', '.join(self.data)}")
        ids = np.asarray(pin_ids, np.int64)
        pos = np.searchsorted(self.pin_ids, ids)
        pos = np.minimum(pos, max(len(self.pin_ids) - 1, 0))
        found = (self.pin_ids[pos] == ids) if len(self.pin_ids) else np.zeros(len(ids), bool)
        found &= self.present[kind][pos] if len(self.pin_ids) else found
        values = self.data[kind][pos]
        values[~found] = 0
        if dequantize_values:
            values = dequantize(values)
        return Lookup(values, found)

    def coverage(self, pin_ids, kind: str = "fusion") -> dict:
        """How many of ``pin_ids`` have an embedding of ``kind``."""
        found = self.lookup(pin_ids, kind).found
        return {"requested": int(len(found)), "found": int(found.sum()), "missing": int((~found).sum()),
                "coverage": float(found.mean()) if len(found) else 1.0}


def resolve(workdir: Path | str, ref: str) -> tuple[str, str]:
    """'NAME@VERSION' or 'NAME' (LATEST) -> (name, version)."""
    name, _, version = ref.partition("@")
    version = version or "LATEST"
    if version == "LATEST":
        latest = latest_version(workdir, name)
        if latest is None:
            raise EmbeddingError(f"{embeddings_dir(workdir, name)}: no LATEST: nothing published under {name!r}")
        version = latest
    return name, version


def _expect(cond: bool, where: Path, field: str, expected, found) -> None:
    if not cond:
        raise EmbeddingError(f"{where}: {field}: expected {expected}, found {found}")


def open_embeddings(workdir: Path | str, ref: str = "pinclip", verify: bool = True) -> PublishedEmbeddings:
    """Open ``NAME[@VERSION]`` (default LATEST); verify dim, dtype, quantization and checksums."""
    name, version = resolve(workdir, ref)
    directory = embeddings_dir(workdir, name) / version
    mpath = directory / "manifest.json"
    if not mpath.is_file():
        raise EmbeddingError(f"{mpath}: not found: no version {version!r} of {name!r}")
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError as exc:
        raise EmbeddingError(f"{mpath}: expected JSON, found {exc.msg} at line {exc.lineno}") from None
    for field in MANIFEST.columns:
        _expect(field.name in manifest, mpath, field.name, f"a {field.kind} (docs/data.md, manifest)", "no such field")
    _expect(manifest.get("dim") == PUBLISHED_DIM, mpath, "dim", PUBLISHED_DIM, manifest.get("dim"))
    _expect(manifest.get("dtype") == "int8", mpath, "dtype", "int8", manifest.get("dtype"))
    q = manifest.get("quantization", {})
    _expect(q.get("scheme") == SCHEME and q == quantization_spec(), mpath, "quantization", quantization_spec(), q)
    kinds = manifest.get("kinds", [])
    _expect(bool(kinds) and set(kinds) <= set(KINDS) and KINDS[0] in kinds, mpath, "kinds",
            f"{KINDS[0]}[, {', '.join(KINDS[1:])}]", kinds)
    ids, data, present = [], {k: [] for k in kinds}, {k: [] for k in kinds}
    for part in manifest["parts"]:
        path = directory / part["file"]
        _expect(path.is_file(), path, "file", "present", "missing")
        if verify:
            digest = sha256(path)
            _expect(digest == part["sha256"], path, "sha256", part["sha256"], digest)
        try:
            table = pq.read_table(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise EmbeddingError(f"{path}: expected readable Parquet, found {str(exc).splitlines()[0]}") from None
        _expect(table.num_rows == part["rows"], path, "rows", part["rows"], table.num_rows)
        _expect(pa.types.is_int64(table.schema.field("pin_id").type), path, "pin_id", "int64", table.schema.field("pin_id").type)
        ids.append(table.column("pin_id").to_numpy())
        for kind in kinds:
            t = table.schema.field(kind).type
            _expect(pa.types.is_fixed_size_list(t) and t.list_size == PUBLISHED_DIM and pa.types.is_int8(t.value_type),
                    path, kind, f"fixed_size_list<int8>[{PUBLISHED_DIM}]", t)
            col = table.column(kind).combine_chunks()
            present[kind].append(~col.is_null().to_numpy(zero_copy_only=False))
            # the child array keeps a slot for every row, null or not
            lo = col.offset * PUBLISHED_DIM
            full = col.values.to_numpy(zero_copy_only=False)[lo:lo + len(col) * PUBLISHED_DIM]
            full = full.reshape(-1, PUBLISHED_DIM).copy()
            full[~present[kind][-1]] = 0
            data[kind].append(full)
    all_ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
    order = np.argsort(all_ids, kind="stable")
    all_ids = all_ids[order]
    if len(all_ids) > 1 and (all_ids[1:] == all_ids[:-1]).any():
        dup = all_ids[1:][all_ids[1:] == all_ids[:-1]][0]
        raise EmbeddingError(f"{directory}: pin_id: expected unique ids, found {int(dup)} twice")
    _expect(len(all_ids) == manifest["rows"], mpath, "rows", manifest["rows"], len(all_ids))
    cat = lambda xs, shape, dt: np.concatenate(xs)[order] if xs else np.zeros(shape, dt)  # noqa: E731
    return PublishedEmbeddings(
        directory, manifest, all_ids,
        {k: cat(data[k], (0, PUBLISHED_DIM), np.int8) for k in kinds},
        {k: cat(present[k], (0,), bool) for k in kinds})
