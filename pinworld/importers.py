"""Import a catalog of images and their texts as a workspace: ``import_folder`` for any folder of images
(with an optional CSV or JSON-lines sidecar of texts), ``import_openclipart`` for the Open Clip Art Library
(Debian's openclipart-png and openclipart-svg). ``write_sample`` derives the small sample shipped in
``examples/openclipart/``.

A catalog has no time, users or logs, and none are invented: every pin is created on day 0, each image file
is copied unchanged under ``world/images/``, a category becomes a board no user owns, and keywords become
annotations (score 1.0, day 0).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from tqdm import tqdm

from pinlift.core.errors import input_error
from pinlift.core.schema import arrow_schema
from pinworld.images import resolve_inside

OPENCLIPART = Path("/usr/share/openclipart")
GET_OPENCLIPART = ("apt-get install openclipart-png openclipart-svg, or give --deb FILE --deb FILE "
                   "after `apt-get download openclipart-png openclipart-svg`")
PLACEHOLDER_SUBJECT = "unsorted"     # Open Clip Art's subject for a drawing nobody tagged: not a keyword
SIDECAR_TEXTS = ("title", "description", "category", "language")
DC = "{http://purl.org/dc/elements/1.1/}"
RDF = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}"
IMAGE_SUFFIXES = frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


@dataclass(frozen=True)
class Item:
    """One image of a catalog and the texts found for it (None where missing or blank)."""

    file: str                          # path of the image relative to the catalog's folder, with /
    category: str | None = None
    title: str | None = None
    description: str | None = None
    keywords: tuple[str, ...] = ()
    language: str | None = None


# ---- any folder of images ----------------------------------------------------------------------------

def import_folder(folder: Path | str, workdir: Path | str, texts: Path | str | None = None, force: bool = False,
                  progress: bool = True, max_side: int | None = None) -> dict:
    """Every image under ``folder`` (recursive) as a pin, its category its parent folder's path relative to
    ``folder``; a sidecar ``texts`` (CSV or JSON lines, one row per ``file``) adds texts and categories."""
    folder = Path(folder)
    if not folder.is_dir():
        raise input_error(folder, "folder", "a folder of images", "no such folder")
    refuse_existing_world(Path(workdir), force)
    found = {p.relative_to(folder).as_posix() for p in folder.rglob("*")
             if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
             and not any(part.startswith(".") for part in p.relative_to(folder).parts)}
    rows: dict[str, tuple[str, Item]] = {}
    for where, item in read_sidecar(Path(texts)) if texts else ():
        path = resolve_inside(folder, item.file)
        rel = path.relative_to(folder.resolve()).as_posix() if path else None
        if rel not in found:
            raise input_error(where, "file", f"an image file under {folder}", repr(item.file))
        if rel in rows:
            raise input_error(where, "file", "each file once", f"{item.file!r} again (first at {rows[rel][0]})")
        rows[rel] = (where, item)
    items = []
    for file in sorted(found):
        item = rows[file][1] if file in rows else Item(file)
        parent = Path(file).parent.as_posix()
        items.append(replace(item, file=file, category=item.category or (None if parent == "." else parent)))
    source = {"kind": "folder", "folder": str(folder), "texts": None if texts is None else str(texts)}
    return write_catalog(items, folder, workdir, source, force, progress, max_side)


def read_sidecar(path: Path) -> list[tuple[str, Item]]:
    """The rows of a CSV (header row) or JSON-lines sidecar as (``file:line``, Item): ``file`` required;
    ``title``, ``description``, ``category``, ``language`` strings; ``keywords`` a list or ``;``-separated."""
    if not path.is_file():
        raise input_error(path, "texts", "a CSV or JSON-lines file", "no such file")
    if path.suffix.lower() == ".csv":
        rows = _csv_rows(path)
    elif path.suffix.lower() in (".jsonl", ".ndjson"):
        rows = _jsonl_rows(path)
    else:
        raise input_error(path, "texts", "a .csv or .jsonl file", f"a {path.suffix or 'suffixless'} file")
    out = []
    try:
        for where, row in rows:
            file = row.get("file")
            if not isinstance(file, str) or not file.strip():
                raise input_error(where, "file", "an image path relative to the folder", repr(file))
            for name in SIDECAR_TEXTS:
                if row.get(name) is not None and not isinstance(row[name], str):
                    raise input_error(where, name, "a string", repr(row[name]))
            out.append((where, Item(file.strip(), *(_text(row.get(n)) for n in ("category", "title", "description")),
                                    _sidecar_keywords(where, row.get("keywords")), _text(row.get("language")))))
    except UnicodeDecodeError as exc:
        raise input_error(path, "texts", "UTF-8 text", f"byte {exc.object[exc.start]:#x}") from None
    return out


def _csv_rows(path: Path) -> Iterable[tuple[str, dict]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if "file" not in (reader.fieldnames or ()):
            raise input_error(f"{path}:1", "file", "a header row with a `file` column", reader.fieldnames)
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if None in row:   # more fields than the header names
                n = len(reader.fieldnames)
                raise input_error(where, "row", f"{n} fields", n + len(row[None]))
            yield where, row


def _jsonl_rows(path: Path) -> Iterable[tuple[str, dict]]:
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise input_error(f"{path}:{n}", "row", "a JSON object", f"invalid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise input_error(f"{path}:{n}", "row", "a JSON object", type(row).__name__)
            yield f"{path}:{n}", row


def _sidecar_keywords(where: str, value) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return _keywords(value.split(";"))
    if isinstance(value, list) and all(isinstance(k, str) for k in value):
        return _keywords(value)
    raise input_error(where, "keywords", "a list of strings or a ;-separated string", repr(value))


def _text(value: str | None) -> str | None:
    """The text as found, without surrounding blanks; None when missing or blank."""
    return (value or "").strip() or None


def _keywords(values: Iterable[str | None], drop: frozenset[str] = frozenset()) -> tuple[str, ...]:
    """Non-blank keywords, each once, in order, without those in ``drop`` (compared in lower case)."""
    kept = (k for k in map(_text, values) if k and k.lower() not in drop)
    return tuple(dict.fromkeys(kept))


# ---- the Open Clip Art Library --------------------------------------------------------------------------

def import_openclipart(workdir: Path | str, source: Path | str | None = None, debs: Iterable[Path | str] = (),
                       force: bool = False, progress: bool = True, max_side: int | None = None) -> dict:
    """Every PNG of the library as a pin with its SVG's title, description, keywords and language;
    from ``source`` (a folder holding png/ and svg/), the two ``debs``, or the installed packages."""
    debs = [Path(d) for d in debs]
    refuse_existing_world(Path(workdir), force)   # before the minutes unpacking may take
    with tempfile.TemporaryDirectory(prefix="openclipart-") as unpacked:
        for deb in debs:
            unpack_deb(deb, Path(unpacked))
        root = library_root(Path(unpacked) if debs else Path(source) if source else OPENCLIPART)
        origin = {"debs": [d.name for d in debs]} if debs else {"from": str(root)}
        return write_catalog(read_openclipart(root, progress), root / "png", workdir,
                             {"kind": "openclipart", **origin}, force, progress, max_side)


def library_root(path: Path) -> Path:
    """The folder holding the library's png/ and svg/: ``path`` itself or its usr/share/openclipart."""
    for root in (path, path / "usr/share/openclipart"):
        if (root / "png").is_dir() and (root / "svg").is_dir():
            return root
    missing = " and ".join(d for d in ("png/", "svg/") if not (path / d).is_dir())
    raise input_error(path, "openclipart", f"the Open Clip Art Library's png/ and svg/ ({GET_OPENCLIPART})",
                      f"no {missing}")


def unpack_deb(deb: Path, into: Path) -> None:
    """Extract a Debian package's files (``dpkg-deb -x``)."""
    if not deb.is_file():
        raise input_error(deb, "deb", "a Debian package file", "no such file")
    if shutil.which("dpkg-deb") is None:
        raise input_error(deb, "deb", "dpkg-deb to unpack it", "no dpkg-deb (unpack it with `dpkg -x` and give --from)")
    done = subprocess.run(["dpkg-deb", "-x", str(deb), str(into)], capture_output=True, text=True)
    if done.returncode:
        raise input_error(deb, "deb", "a Debian package", (done.stderr.strip().splitlines() or ["unreadable"])[-1])


def read_openclipart(root: Path, progress: bool = False) -> list[Item]:
    """An Item per PNG under ``root/png``, in path order: its category is its folder's path under png/, its
    texts come from the SVG of the same path under svg/ (none without one)."""
    pngs = sorted((root / "png").rglob("*.png"))
    items = []
    for png in tqdm(pngs, desc="reading SVG metadata", unit="file", disable=not progress, file=sys.stderr):
        rel = png.relative_to(root / "png")
        svg = root / "svg" / rel.with_suffix(".svg")
        texts = svg_texts(svg) if svg.is_file() else {}
        items.append(Item(rel.as_posix(), None if rel.parent == Path(".") else rel.parent.as_posix(), **texts))
    return items


def svg_texts(path: Path) -> dict:
    """``title``, ``description``, ``keywords`` (the subjects, without the placeholder) and ``language`` of an
    SVG's Dublin Core metadata. ElementTree expands no external entity (the files are Debian's, trusted)."""
    metadata = None
    try:
        with open(path, "rb") as f:
            for _, element in ET.iterparse(f):   # the metadata comes first: stop reading there
                if element.tag.rpartition("}")[2] == "metadata":
                    metadata = element
                    break
    except ET.ParseError as exc:
        raise input_error(path, "metadata", "a well-formed SVG", f"a parse error ({exc})") from None
    if metadata is None:
        return {}
    work = next((e for e in metadata.iter() if e.tag.rpartition("}")[2] == "Work"), metadata)
    return {"title": _text(work.findtext(f"{DC}title")), "description": _text(work.findtext(f"{DC}description")),
            "keywords": _keywords((li.text for li in work.iterfind(f"{DC}subject//{RDF}li")),
                                  frozenset({PLACEHOLDER_SUBJECT})),
            "language": iso_639_1(work.findtext(f"{DC}language"))}


def iso_639_1(value: str | None) -> str | None:
    """The two-letter code a dc:language starts with (``EN``, ``es-ES``, ``en_GB en_US``); None for anything
    else (``English``, ``all``, ``eng``)."""
    first = (value or "").split()[:1]
    code = first[0].replace("_", "-").split("-")[0].lower() if first else ""
    return code if len(code) == 2 and code.isalpha() else None


# ---- writing a workspace ------------------------------------------------------------------------------

def write_catalog(items: list[Item], folder: Path, workdir: Path | str, source: dict, force: bool = False,
                  progress: bool = True, max_side: int | None = None) -> dict:
    """``world/`` of ``workdir`` from ``items`` (files under ``folder``): pin ids in the items' path order,
    images copied unchanged, or with ``max_side`` stored as PNGs whose longest side is at most that (every
    epoch then decodes small files: a 10,000-px drawing takes seconds to read); an image over Pillow's pixel limit, which no stage could read, is left out and
    listed under ``too_large``. Built in a temporary folder and renamed into place; an existing non-empty
    world/ or logs/ is refused unless ``force`` (which replaces world/ and removes logs/)."""
    workdir = Path(workdir)
    world, logs = workdir / "world", workdir / "logs"
    refuse_existing_world(workdir, force)
    if not items:
        raise input_error(folder, "images", "at least one image file", "none")
    workdir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".world-import-", dir=workdir))
    try:
        kept, too_large = [], []
        for item in tqdm(sorted(items, key=lambda i: i.file), desc="copying images", unit="image",
                         disable=not progress, file=sys.stderr):
            file = item.file
            if _readable_image(folder / file):
                if max_side:
                    item = replace(item, file=file if file.lower().endswith(".png") else f"{file}.png")
                    _downscale(folder / file, tmp / "images" / item.file, max_side, optimize=False)
                else:
                    (tmp / "images" / item.file).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(folder / item.file, tmp / "images" / item.file)
                kept.append(item)
            else:
                too_large.append(item.file)
        counts = {**_write_tables(kept, tmp), "too_large": too_large}
        (tmp / "import.json").write_text(json.dumps({"source": source, "max_side": max_side, "counts": counts},
                                                    indent=2) + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if world.exists():
        old = Path(tempfile.mkdtemp(prefix=".world-replaced-", dir=workdir))
        world.rename(old / "world")
        tmp.rename(world)
        shutil.rmtree(old)
    else:
        tmp.rename(world)
    shutil.rmtree(logs, ignore_errors=True)
    from pinworld.catalog import build_catalog   # after the tables: the catalog holds views over them

    build_catalog(workdir)
    return counts


def refuse_existing_world(workdir: Path, force: bool) -> None:
    """A FileExistsError when ``workdir`` holds a non-empty world/ or logs/ and ``force`` is not given."""
    taken = [d for d in (workdir / "world", workdir / "logs") if d.is_dir() and any(d.iterdir())]
    if taken and not force:
        raise FileExistsError(f"pinworld import: {taken[0]} exists and is not empty; use --force to replace it")


def _readable_image(path: Path) -> bool:
    """Whether Pillow opens ``path`` (False: it is over Pillow's pixel limit); anything else it cannot open
    is one line naming it."""
    try:
        # only the header is read here: a large image's warning is noise
        with (warnings.catch_warnings(action="ignore", category=Image.DecompressionBombWarning),
              Image.open(path) as im):
            im.size
    except Image.DecompressionBombError:
        return False
    except (OSError, ValueError) as exc:
        raise input_error(path, "image", "an image file Pillow can open", str(exc).splitlines()[0]) from None
    return True


def _write_tables(items: list[Item], world: Path) -> dict:
    n = len(items)
    pins = pa.table({"pin_id": range(n), "created_day": [0] * n,
                     "image_uri": [f"images/{i.file}" for i in items],
                     "title": [i.title for i in items], "description": [i.description for i in items],
                     "caption": [None] * n, "language": [i.language for i in items],
                     "is_ad": [False] * n, "advertiser_id": [None] * n}, schema=arrow_schema("pins"))
    pq.write_table(pins, world / "pins.parquet")
    boards = {c: b for b, c in enumerate(sorted({i.category for i in items if i.category}))}
    edges = [(p, boards[i.category]) for p, i in enumerate(items) if i.category]
    annotations = [(p, k) for p, i in enumerate(items) for k in i.keywords]
    if boards:
        pq.write_table(pa.table({"board_id": list(boards.values()), "user_id": [None] * len(boards),
                                 "name": list(boards), "created_day": [0] * len(boards)},
                                schema=arrow_schema("boards")), world / "boards.parquet")
        pq.write_table(pa.table({"pin_id": [p for p, _ in edges], "board_id": [b for _, b in edges],
                                 "user_id": [None] * len(edges), "day": [0] * len(edges)},
                                schema=arrow_schema("pin_board")), world / "pin_board.parquet")
    if annotations:
        pq.write_table(pa.table({"pin_id": [p for p, _ in annotations], "day": [0] * len(annotations),
                                 "annotation": [k for _, k in annotations], "score": [1.0] * len(annotations)},
                                schema=arrow_schema("pin_annotations")), world / "pin_annotations.parquet")
    return {"pins": n, "boards": len(boards), "pin_board": len(edges), "pin_annotations": len(annotations),
            "titles": sum(i.title is not None for i in items),
            "descriptions": sum(i.description is not None for i in items)}


# ---- the shipped sample -----------------------------------------------------------------------------

SAMPLE_NOTICE = """# Open Clip Art Library sample

Public domain. These {items} images and their texts come from the Open Clip Art Library 0.18, as packaged
by Debian (`openclipart-png` and `openclipart-svg`, version {version}), whose copyright file dedicates
every work to the public domain (Creative Commons Public Domain Dedication); no attribution is required.
Each SVG's metadata names its author.

What was derived, by `python scripts/make_openclipart_sample.py --size {size} --seed {seed} --side {side}`
(`pinworld.importers.write_sample`):

- the draw: {items} PNGs over {categories} categories ({pairs} with two or more items), two per category
  per round over the categories in an order drawn with seed {seed}, skipping byte-identical copies of an
  image already drawn and images over Pillow's pixel limit;
- each PNG downscaled to {side} px on its longest side (Lanczos, transparency kept) and saved as an
  optimized PNG under its category's folder (the folder path relative to the library's `png/`);
- `items.jsonl`, one row per image: `file`, `title`, `description`, `keywords`, `category`, `language`,
  read from the SVG of the same path (`dc:title`, `dc:description`, the `dc:subject` keywords without the
  placeholder `unsorted`, `dc:language` as an ISO 639-1 code); null where missing or blank.

Import it with `pinworld import folder examples/openclipart --texts examples/openclipart/items.jsonl
--workdir DIR`.
"""


def write_sample(root: Path, out: Path | str, size: int = 300, seed: int = 0, side: int = 96,
                 progress: bool = True) -> dict:
    """A sample of the library at ``root`` (png/ and svg/) in ``out``: ``size`` PNGs drawn by ``seed``, two
    per category per round over the categories in a seeded order (so most drawn categories have a pair),
    skipping byte-identical copies of a drawn image; each downscaled to ``side`` px on its longest side
    (transparency kept), under its category's folder, with ``items.jsonl`` (its texts) and ``NOTICE.md``."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"pinworld: {out} exists and is not empty; remove it first")
    by_category: dict[str, list[Item]] = {}
    for item in read_openclipart(root, progress):
        by_category.setdefault(item.category or "", []).append(item)
    rng = np.random.default_rng(seed)
    queues = {c: [items[k] for k in rng.permutation(len(items))] for c, items in sorted(by_category.items())}
    order = [list(queues)[k] for k in rng.permutation(len(queues))]
    drawn, seen = [], set()
    while len(drawn) < size and any(queues.values()):
        for category in order:
            taken = 0
            while queues[category] and taken < 2 and len(drawn) < size:
                item = queues[category].pop()
                digest = hashlib.sha256((root / "png" / item.file).read_bytes()).hexdigest()
                if digest not in seen and _readable_image(root / "png" / item.file):
                    seen.add(digest)
                    drawn.append(item)
                    taken += 1
    drawn.sort(key=lambda i: i.file)
    per_category = [sum(i.category == c for i in drawn) for c in {i.category for i in drawn}]
    summary = {"items": len(drawn), "categories": len(per_category),
               "categories_with_pairs": sum(n >= 2 for n in per_category)}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        for item in tqdm(drawn, desc="downscaling", unit="image", disable=not progress, file=sys.stderr):
            _downscale(root / "png" / item.file, tmp / item.file, side)
        with open(tmp / "items.jsonl", "w", encoding="utf-8") as f:
            for i in drawn:
                f.write(json.dumps({"file": i.file, "title": i.title, "description": i.description,
                                    "keywords": list(i.keywords), "category": i.category,
                                    "language": i.language}, ensure_ascii=False) + "\n")
        (tmp / "NOTICE.md").write_text(SAMPLE_NOTICE.format(
            items=summary["items"], categories=summary["categories"], pairs=summary["categories_with_pairs"],
            version=debian_version(root) or "unknown", size=size, seed=seed, side=side))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return {**summary, "bytes": sum(p.stat().st_size for p in out.rglob("*") if p.is_file())}


def debian_version(root: Path) -> str | None:
    """The Debian version of the openclipart packages whose files are at ``root`` (from their changelog)."""
    changelog = root.parent / "doc/openclipart-png/changelog.Debian.gz"
    if not changelog.is_file():
        return None
    with gzip.open(changelog, "rt", encoding="utf-8") as f:
        first = f.readline()
    return first.partition("(")[2].partition(")")[0] or None


def _downscale(src: Path, dst: Path, side: int, optimize: bool = True) -> None:
    """``src`` with its longest side at most ``side`` px, transparency kept, as a PNG (``optimize``: smallest)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    # large images under the limit warn; they are read once, here
    with (warnings.catch_warnings(action="ignore", category=Image.DecompressionBombWarning),
          Image.open(src) as im):
        has_alpha = im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info
        im = im.convert("RGBA" if has_alpha else "RGB")
        im.thumbnail((side, side), Image.Resampling.LANCZOS)   # RGBA is resized premultiplied: no dark fringes
        im.save(dst, optimize=optimize)
