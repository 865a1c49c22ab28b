"""Validate user-supplied tables against the world schema: one line per problem, nothing written."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pinworld.images import ImageStore
from pinlift.core.errors import InputError
from pinlift.core.schema import KIND_CHECKS, TABLES, Table
from pinlift.core.vocabulary import DECLARATION, load_vocabulary



@dataclass(frozen=True)
class Problem:
    table: str
    column: str | None
    expected: str
    found: str

    def __str__(self) -> str:
        where = TABLES[self.table].path + (f": column '{self.column}'" if self.column else "")
        return f"pinworld validate: {where}: expected {self.expected}, found {self.found}"


@dataclass
class DeclarationProblem:
    """The workspace's declaration of its surfaces is missing or invalid (its own line, file:line)."""

    message: str

    def __str__(self) -> str:
        return f"pinworld validate: {self.message}"


def _files(workdir: Path, t: Table) -> list[str]:
    path = workdir / t.path
    if t.path.endswith(".parquet"):
        return [str(path)] if path.is_file() else []
    return sorted(str(p) for p in path.rglob("*.parquet")) if path.is_dir() else []


def _check_columns(t: Table, files: list[str]) -> list[Problem]:
    for f in files:   # every file's footer: a dataset reads only the first one's schema
        try:
            pq.read_metadata(f)
        except (OSError, ValueError) as exc:  # a truncated or unreadable file: one problem, not a traceback
            return [Problem(t.name, None, "readable Parquet", f"{f}: {str(exc).splitlines()[0]}")]
    schema = ds.dataset(files, format="parquet").schema
    out = []
    for c in t.columns:
        if c.name not in schema.names:
            out.append(Problem(t.name, c.name, f"a {c.kind} column", "no such column"))
        elif not KIND_CHECKS[c.kind](schema.field(c.name).type):
            out.append(Problem(t.name, c.name, c.kind, str(schema.field(c.name).type)))
    return out


def validate_workdir(workdir: Path | str, check_images: bool = True) -> list[Problem | DeclarationProblem]:
    """All problems found in ``workdir``'s tables (empty when valid)."""
    workdir = Path(workdir)
    con = duckdb.connect()
    problems: list[Problem | DeclarationProblem] = []
    readable: dict[str, list[str]] = {}
    for t in TABLES.values():
        files = _files(workdir, t)
        if not files:
            if t.required:
                problems.append(Problem(t.name, None, "a Parquet table", "nothing"))
            continue
        found = _check_columns(t, files)
        problems += found
        if not found:
            readable[t.name] = files
            # views cannot take bound parameters: the file list is quoted as SQL string literals
            listed = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
            con.execute(f'CREATE VIEW "{t.name}" AS SELECT * FROM read_parquet([{listed}], union_by_name = true)')
    for name in readable:
        t = TABLES[name]
        for c in t.columns:
            if not c.nullable:
                n = con.execute(f'SELECT count(*) FROM "{name}" WHERE "{c.name}" IS NULL').fetchone()[0]
                if n:
                    problems.append(Problem(name, c.name, "no nulls", f"{n} null values"))
        if t.key:
            cols = ", ".join(f'"{k}"' for k in t.key)
            row = con.execute(f'SELECT {cols}, count(*) FROM "{name}" GROUP BY ALL HAVING count(*) > 1 LIMIT 1').fetchone()
            if row:
                n = con.execute(f'SELECT count(*) FROM (SELECT {cols} FROM "{name}" GROUP BY ALL HAVING count(*) > 1)').fetchone()[0]
                problems.append(Problem(name, ", ".join(t.key), "unique values",
                                        f"{n} duplicated, e.g. {row[:-1] if len(row) > 2 else row[0]!r} x{row[-1]}"))
        for col, ref in t.foreign_keys.items():
            ref_table, ref_col = ref.split(".")
            if ref_table not in readable:
                continue
            row = con.execute(
                f'SELECT count(*), min(a."{col}") FROM "{name}" a ANTI JOIN "{ref_table}" b '
                f'ON a."{col}" = b."{ref_col}" WHERE a."{col}" IS NOT NULL').fetchone()
            if row[0]:
                problems.append(Problem(name, col, f"values present in {ref}",
                                        f"{row[0]} dangling, e.g. {row[1]!r}"))
    try:
        surfaces = load_vocabulary(workdir).names
    except InputError as err:
        surfaces = None
        problems.append(DeclarationProblem(str(err)))
    if "impressions" in readable and surfaces:
        bad = con.execute('SELECT count(*), min(surface) FROM impressions WHERE surface NOT IN '
                          '(SELECT unnest($s))', {"s": list(surfaces)}).fetchone()
        if bad[0]:
            problems.append(Problem("impressions", "surface", f"a surface declared in {DECLARATION} "
                                    f"({' | '.join(surfaces)})", f"{bad[0]} rows like {bad[1]!r}"))
    if check_images and "pins" in readable:
        problems += _check_images(con, workdir)
    return problems


def _check_images(con, workdir: Path) -> list[Problem]:
    store = ImageStore(workdir / "world")
    uris = [r[0] for r in con.execute("SELECT image_uri FROM pins").fetchall()]
    missing = []
    for uri in uris:
        if ".npy#" in uri:
            rel, row = uri.rsplit("#", 1)
            path = workdir / "world" / rel
            ok = path.is_file() and row.isdigit() and int(row) < len(store._shard(rel))
        else:
            ok = (workdir / "world" / uri).is_file()
        if not ok:
            missing.append(uri)
    if missing:
        return [Problem("pins", "image_uri", "an image file under world/", f"{len(missing)} missing, e.g. {missing[0]!r}")]
    return []
