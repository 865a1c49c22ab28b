"""The benchmark's train/validation/test split of the Open Clip Art images (``split.csv``: path, split, file).

An item is keyed by its image's path relative to the library's ``png/`` folder (``animals/birds/owl.png``),
so the split does not depend on pin ids or on how the catalog was imported. 1,221 of the 8,121 paths are
symbolic links to an image of another category (``file``: the path the item's image resolves to, itself for
a plain file); the split is dealt by file, so every copy of an image lands in the same split and no test
image is also a training image.

Stratified by category (the file's folder): categories are taken in name order, the files of each in the
order of sha256(seed, file), and the concatenated list is dealt in slots of ten, 8 train, 1 validation,
1 test. Over files the shares are 80/10/10 to within one file; within a category, validation and test each
get their tenth to within one file (train to within two), so a category of at least 20 files has at least
2 test files, enough for image→image queries. Regenerate with
``python benchmarks/openclipart/split.py --from /usr/share/openclipart`` (``--check``: exit 1 if it differs).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

HERE = Path(__file__).resolve().parent
SPLIT_CSV = HERE / "split.csv"
SEED = 0
SPLITS = ("train", "validation", "test")
SLOTS = ("train",) * 8 + ("validation", "test")   # one deal of ten items
DEFAULT_SOURCE = Path("/usr/share/openclipart")


def item_files(source: Path | str) -> dict[str, str]:
    """{path: file} of every PNG under ``source/png`` (the unpacked ``openclipart-png``), as paths relative
    to it; ``file`` is where a symbolic link resolves to (a link leaving ``png/`` counts as its own file)."""
    png = Path(source) / "png"
    if not png.is_dir():
        raise FileNotFoundError(f"openclipart: {png} not found (install openclipart-png or pass --from)")
    root, out = png.resolve(), {}
    for p in png.rglob("*.png"):
        if p.is_file():
            real = p.resolve()
            rel = p.relative_to(png).as_posix()
            out[rel] = real.relative_to(root).as_posix() if real.is_relative_to(root) else rel
    return dict(sorted(out.items()))


def category(path: str) -> str:
    """An item's category: its folder (``animals/birds`` for ``animals/birds/owl.png``)."""
    return PurePosixPath(path).parent.as_posix()


def _rank(seed: int, path: str) -> str:
    return hashlib.sha256(f"{seed}\0{path}".encode()).hexdigest()


@dataclass(frozen=True)
class Item:
    split: str
    file: str      # the path its image resolves to (itself unless a link)


def make_split(files: Mapping[str, str] | Iterable[str], seed: int = SEED) -> dict[str, Item]:
    """{path: Item} (see the module docstring) from {path: file} (or paths, each its own file); independent
    of the order they come in."""
    files = dict(files) if isinstance(files, Mapping) else {p: p for p in files}
    unique = sorted(set(files.values()))
    order = sorted(unique, key=lambda f: (category(f), _rank(seed, f), f))
    dealt = {f: SLOTS[i % len(SLOTS)] for i, f in enumerate(order)}
    return {p: Item(dealt[f], f) for p, f in sorted(files.items())}


def to_csv(split: Mapping[str, Item]) -> str:
    """The CSV text (header ``path,split,file``, rows sorted by path, ``\\n`` line ends)."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["path", "split", "file"])
    for path in sorted(split):
        w.writerow([path, split[path].split, split[path].file])
    return out.getvalue()


def read_split(path: Path | str = SPLIT_CSV) -> dict[str, Item]:
    """{path: Item} from a ``split.csv``."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    bad = [r for r in rows if r.get("split") not in SPLITS]
    if bad:
        raise ValueError(f"openclipart: {path}: split: expected one of {SPLITS}, found {bad[0].get('split')!r}")
    return {r["path"]: Item(r["split"], r.get("file") or r["path"]) for r in rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="write the Open Clip Art benchmark split (split.csv)")
    ap.add_argument("--from", dest="source", default=str(DEFAULT_SOURCE),
                    help="the library's folder holding png/ (default: %(default)s)")
    ap.add_argument("--out", default=str(SPLIT_CSV))
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if --out differs")
    a = ap.parse_args(argv)
    text = to_csv(make_split(item_files(a.source), a.seed))
    out = Path(a.out)
    if a.check:
        same = out.is_file() and out.read_text() == text
        print(f"{out}: {'up to date' if same else 'differs'}")
        return 0 if same else 1
    out.write_text(text)
    split = read_split(out)
    by_path = [item.split for item in split.values()]
    by_file = list({item.file: item.split for item in split.values()}.values())
    print(f"{out}: {len(by_path):,} items, {len(by_file):,} files: " +
          ", ".join(f"{s} {by_path.count(s):,} ({by_file.count(s):,} files)" for s in SPLITS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
