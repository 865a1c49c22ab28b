"""Embed new content with a trained run: image files (with optional texts) or a table of new pins outside the
workspace, into every Matryoshka prefix of the fusion, image and text embeddings, optionally int8 at the
published 64-d. Images and texts take the path a workspace's pins take (``read_image``, ``normalize_images``,
the descriptive text), so a new pin's vectors are the ones the run gives it as a pin of its workspace."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pinclip.embedder import PIN_KINDS, Embedder, pin_texts
from pinclip.loading import load_run
from pinclip.quantization import PUBLISHED_DIM, quantize_unit
from pinlift.core.errors import InputError, input_error
from pinlift.core.schema import KIND_CHECKS
from pinworld.files import sha256_file
from pinworld.images import ImageStore, read_image, resolve_inside, split_uri

TEXT_COLUMNS = ("title", "description", "caption")   # a new pin's own text columns (optional, nullable)
TEXT_FILE_SUFFIXES = (".txt", ".csv", ".jsonl")


@dataclass
class Embedded:
    """Embeddings of new content, one row per item: ``ids`` under ``id_name`` (``file`` or ``pin_id``),
    ``vectors[kind][prefix]`` float32 (n, prefix), ``has_text`` where text (and fusion) saw a text."""

    id_name: str
    ids: list
    vectors: dict[str, dict[int, np.ndarray]]
    has_text: np.ndarray

    def int8(self, kind: str) -> np.ndarray:
        """int8 (n, 64) of ``kind``: the published 64-d prefix, quantized exactly as publish does."""
        return quantize_unit(self.vectors[kind][PUBLISHED_DIM])

    def to_arrow(self, int8: bool = False) -> pa.Table:
        """``id_name``, ``has_text``, then ``<kind>_<prefix>`` float32 lists (``<kind>_64_int8`` too with
        ``int8``); text columns are null for rows without text."""
        no_text = pa.array(~self.has_text)
        cols = {self.id_name: pa.array(self.ids, pa.int64() if self.id_name == "pin_id" else pa.string()),
                "has_text": pa.array(self.has_text)}

        def column(values: np.ndarray, kind: str, type_: pa.DataType) -> pa.Array:
            flat = pa.array(np.ascontiguousarray(values).reshape(-1), type_)
            return pa.FixedSizeListArray.from_arrays(flat, values.shape[1], mask=no_text if kind == "text" else None)

        for kind, by_prefix in self.vectors.items():
            for prefix, v in sorted(by_prefix.items()):
                cols[f"{kind}_{prefix}"] = column(v, kind, pa.float32())
            if int8:
                cols[f"{kind}_{PUBLISHED_DIM}_int8"] = column(self.int8(kind), kind, pa.int8())
        return pa.table(cols)

    def write(self, out: Path | str, int8: bool = False) -> Path:
        """Write :meth:`to_arrow` to ``out`` (a temporary file renamed into place: never half a file)."""
        out = Path(out)
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        try:
            pq.write_table(self.to_arrow(int8), tmp)
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
        return out


class ImageFiles:
    """Image files as an image source: an item's "pin id" is its position in ``paths``."""

    def __init__(self, paths: Sequence[Path]):
        self.paths = list(paths)

    def images(self, rows, size: int | None = None) -> np.ndarray:
        return np.stack([read_image(self.paths[int(r)], size) for r in rows])


class NewPins:
    """A pins-schema table of new content (``pin_id``, ``image_uri``, optional ``title``, ``description``,
    ``caption``) outside the workspace; its ``image_uri`` paths resolve relative to the table's folder and
    must stay inside it."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.root = self.path.parent
        try:
            table = pq.read_table(self.path)
        except (OSError, pa.ArrowInvalid) as exc:
            raise input_error(self.path, "pins", "a readable Parquet table",
                              str(exc).splitlines()[0] if self.path.exists() else "no such file") from None
        for name, kind, required in (("pin_id", "int", True), ("image_uri", "string", True),
                                     *((c, "string", False) for c in TEXT_COLUMNS)):
            if name not in table.column_names:
                if required:
                    raise input_error(self.path, name, f"a {kind} column", "no such column")
                continue
            t = table.schema.field(name).type
            if not (KIND_CHECKS[kind](t) or (not required and pa.types.is_null(t))):
                raise input_error(self.path, name, kind, t)
            if required and table.column(name).null_count:
                raise input_error(self.path, name, "no nulls", f"{table.column(name).null_count} nulls")
        df = pl.from_arrow(table.select([c for c in ("pin_id", "image_uri", *TEXT_COLUMNS) if c in table.column_names]))
        dup = df.filter(pl.col("pin_id").is_duplicated())["pin_id"]
        if len(dup):
            raise input_error(self.path, "pin_id", "unique ids", f"{dup[0]} twice")
        for pin_id, uri in df.select("pin_id", "image_uri").iter_rows():
            if resolve_inside(self.root, split_uri(uri)[0]) is None:
                raise input_error(self.path, "image_uri", f"a path inside {self.root}", f"{uri!r} at pin_id {pin_id}")
        # the columns World.pins has, so the descriptive text is pin_texts' own (a new pin has no queries yet)
        self.pins = (df.with_columns(pl.col("pin_id").cast(pl.Int64),
                                     *(pl.lit(None, pl.String).alias(c) for c in TEXT_COLUMNS if c not in df.columns),
                                     pl.lit(None, pl.List(pl.String)).alias("search_queries"),
                                     pl.lit(None, pl.List(pl.Struct({"annotation": pl.String, "score": pl.Float32})))
                                     .alias("annotations"))
                     .with_columns(pl.col(c).cast(pl.String) for c in TEXT_COLUMNS)
                     .sort("pin_id"))
        self._ids = self.pins["pin_id"].to_numpy()
        self._uris = self.pins["image_uri"].to_list()
        self._stores: dict[int | None, ImageStore] = {}

    @property
    def source(self) -> dict:
        """What a publish records of the table: its file name and sha256."""
        return {"file": self.path.name, "sha256": sha256_file(self.path)}

    def images(self, pin_ids, size: int | None = None) -> np.ndarray:
        pos = np.searchsorted(self._ids, np.asarray(pin_ids, np.int64))
        store = self._stores.setdefault(size, ImageStore(self.root, size))
        return store.load([self._uris[i] for i in pos])


def image_files(paths: Sequence[Path | str]) -> list[Path]:
    """The files of ``paths``: a file as given, a folder's image files (by PIL's extensions) sorted by name."""
    known = set(Image.registered_extensions())
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in known)
        elif p.is_file():
            out.append(p)
        else:
            raise input_error(p, "images", "an image file or a folder of them", "no such file")
    if not out:
        raise input_error(", ".join(map(str, paths)), "images", "at least one image file", "none")
    return out


def read_texts(path: Path | str, files: Sequence[Path]) -> list[str | None]:
    """The text of each of ``files`` (None: none) from ``path``: ``.txt``, one line per file in order (an empty
    line: no text), or ``.csv`` / ``.jsonl`` with ``file`` (relative to ``path``'s folder) and ``text``."""
    path = Path(path)
    if path.suffix not in TEXT_FILE_SUFFIXES:
        raise input_error(path, "texts", f"a {', '.join(TEXT_FILE_SUFFIXES)} file", f"{path.suffix or 'no suffix'}")
    if not path.is_file():
        raise input_error(path, "texts", "a file", "no such file")
    if path.suffix == ".txt":
        lines = path.read_text(encoding="utf-8").splitlines()
        if len(lines) != len(files):
            raise input_error(path, "texts", f"one line per image ({len(files)})", f"{len(lines)} lines")
        return [line.strip() or None for line in lines]
    try:
        rows = (pl.read_csv(path, infer_schema=False) if path.suffix == ".csv" else pl.read_ndjson(path))
    except (pl.exceptions.PolarsError, json.JSONDecodeError) as exc:
        raise input_error(path, "texts", f"readable {path.suffix[1:].upper()}", str(exc).splitlines()[0]) from None
    for c in ("file", "text"):
        if c not in rows.columns:
            raise input_error(path, c, "a column", "no such column")
    row_of = {f.resolve(): i for i, f in enumerate(files)}
    texts: list[str | None] = [None] * len(files)
    for file, text in rows.select(pl.col("file").cast(pl.String), pl.col("text").cast(pl.String)).iter_rows():
        row = row_of.get((path.parent / (file or "")).resolve())
        if row is None:
            raise input_error(path, "file", "one of the images embedded", repr(file))
        texts[row] = (text.strip() or None) if text else None
    return texts


class ContentEmbedder:
    """A trained run, loaded once, embedding new content."""

    def __init__(self, workdir: Path | str, run: str, *, batch_size: int = 256, progress: bool = False):
        self.model, self.tokenizer, self.saved = load_run(workdir, run)
        self.batch_size = batch_size
        self.progress = progress

    def embedder(self, source) -> Embedder:
        """An ``Embedder`` of this run reading images from ``source`` (every Matryoshka prefix)."""
        return Embedder(self.model, self.tokenizer, source, batch_size=self.batch_size, progress=self.progress)

    def images(self, files: Sequence[Path | str], texts: Sequence[str | None] | None = None) -> Embedded:
        """Embeddings of image files, each with its text (None or missing: image-only fusion, no text)."""
        files = [Path(f) for f in files]
        texts = list(texts) if texts is not None else [None] * len(files)
        if len(texts) != len(files):
            raise InputError(f"pinclip embed: expected one text per image ({len(files)}), found {len(texts)}")
        emb = self.embedder(ImageFiles(files)).embed_pins(np.arange(len(files)), texts, PIN_KINDS)
        return Embedded("file", [str(f) for f in files], emb.vectors, emb.has_text)

    def pins(self, table: NewPins | Path | str) -> Embedded:
        """Embeddings of a table of new pins, in pin_id order."""
        table = table if isinstance(table, NewPins) else NewPins(table)
        texts = pin_texts(table.pins)
        emb = self.embedder(table).embed_pins(texts["pin_id"].to_numpy(), texts["text"].to_list(), PIN_KINDS)
        return Embedded("pin_id", emb.pin_ids.tolist(), emb.vectors, emb.has_text)

    def texts(self, texts: Sequence[str]) -> dict[int, np.ndarray]:
        """Text embeddings {prefix: float32 (n, prefix)} of free texts."""
        return self.embedder(None).embed_texts(texts)


def embed(workdir: Path | str, run: str, *, images: Sequence[Path | str] | None = None,
          texts: Path | str | Sequence[str | None] | None = None, pins: Path | str | None = None,
          batch_size: int = 256, progress: bool = False) -> Embedded:
    """Embed image files (files or folders; ``texts`` a texts file or one text per image) or a table of new
    ``pins`` with run ``run`` of ``workdir``."""
    if (images is None) == (pins is None):
        raise InputError("pinclip embed: expected --images or --pins (one of them)")
    if pins is not None and texts is not None:
        raise InputError("pinclip embed: --texts: expected none with --pins (a pin's text is its title, "
                         "description or caption)")
    if pins is not None:
        table = NewPins(pins)    # checked before the model loads
        return ContentEmbedder(workdir, run, batch_size=batch_size, progress=progress).pins(table)
    files = image_files(images)
    if isinstance(texts, (str, Path)):
        texts = read_texts(texts, files)
    return ContentEmbedder(workdir, run, batch_size=batch_size, progress=progress).images(files, texts)
