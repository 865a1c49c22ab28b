"""Validate user-supplied tables against the world schema: one line per problem, nothing written."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pinworld.images import ImageStore, resolve_inside, split_uri
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


def _check_columns(t: Table, files: list[str]) -> tuple[list[Problem], set[str]]:
    """Problems with ``t``'s columns, and the fillable columns the files leave out or hold only nulls in
    (those read as nulls or their default, so their values are not checked)."""
    for f in files:   # every file's footer: a dataset reads only the first one's schema
        try:
            pq.read_metadata(f)
        except (OSError, ValueError) as exc:  # a truncated or unreadable file: one problem, not a traceback
            return [Problem(t.name, None, "readable Parquet", f"{f}: {str(exc).splitlines()[0]}")], set()
    schema = ds.dataset(files, format="parquet").schema
    out, filled = [], set()
    for c in t.columns:
        absent = c.name not in schema.names
        if c.fillable and (absent or pa.types.is_null(schema.field(c.name).type)):
            filled.add(c.name)
        elif absent:
            out.append(Problem(t.name, c.name, f"a {c.kind} column", "no such column"))
        elif not KIND_CHECKS[c.kind](schema.field(c.name).type):
            out.append(Problem(t.name, c.name, c.kind, str(schema.field(c.name).type)))
    return out, filled


def validate_workdir(workdir: Path | str, check_images: bool = True) -> list[Problem | DeclarationProblem]:
    """All problems found in ``workdir``'s tables (empty when valid)."""
    workdir = Path(workdir)
    con = duckdb.connect()
    problems: list[Problem | DeclarationProblem] = []
    readable: dict[str, list[str]] = {}
    filled: dict[str, set[str]] = {}
    files_of = {t.name: _files(workdir, t) for t in TABLES.values()}
    present = {name for name, files in files_of.items() if files}
    for t in TABLES.values():
        files = files_of[t.name]
        if not files:
            if t.required:
                problems.append(Problem(t.name, None, "a Parquet table", "nothing"))
            continue
        found, filled[t.name] = _check_columns(t, files)
        problems += found
        if not found:
            readable[t.name] = files
            # views cannot take bound parameters: the file list is quoted as SQL string literals; the columns are
            # the files' own, as every stage reads them (a `surface=S` folder name never stands in for a row's value)
            listed = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
            con.execute(f'CREATE VIEW "{t.name}" AS SELECT * FROM read_parquet([{listed}], union_by_name = true, '
                        'hive_partitioning = false)')
    for name in readable:
        t = TABLES[name]
        for c in t.columns:
            if not c.nullable and c.name not in filled[name]:
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
            if col in filled[name] or ref_table not in readable:
                continue
            row = con.execute(
                f'SELECT count(*), min(a."{col}") FROM "{name}" a ANTI JOIN "{ref_table}" b '
                f'ON a."{col}" = b."{ref_col}" WHERE a."{col}" IS NOT NULL').fetchone()
            if row[0]:
                problems.append(Problem(name, col, f"values present in {ref}",
                                        f"{row[0]} dangling, e.g. {row[1]!r}"))
    problems += _check_referred_tables(con, readable, filled, present)
    surfaces = None
    if "impressions" in present or (workdir / DECLARATION).is_file():   # a catalog declares no surfaces
        try:
            vocab = load_vocabulary(workdir)
            surfaces = vocab.names
        except InputError as err:
            problems.append(DeclarationProblem(str(err)))
    if "impressions" in readable and surfaces:
        for surface, task in vocab.tasks:   # an action column may be left out unless a surface ranks it
            if task in filled["impressions"]:
                filled["impressions"].discard(task)
                problems.append(Problem("impressions", task, f"a bool column (a task of surface {surface!r} in "
                                        f"{DECLARATION})", "no such column or only nulls"))
        bad = con.execute('SELECT count(*), min(surface) FROM impressions WHERE surface NOT IN '
                          '(SELECT unnest($s))', {"s": list(surfaces)}).fetchone()
        if bad[0]:
            problems.append(Problem("impressions", "surface", f"a surface declared in {DECLARATION} "
                                    f"({' | '.join(surfaces)})", f"{bad[0]} rows like {bad[1]!r}"))
    if check_images and "pins" in readable and "image_uri" not in filled["pins"]:
        problems += _check_images(con, workdir)
    return problems


def _check_referred_tables(con, readable: dict, filled: dict, present: set[str]) -> list[Problem]:
    """An absent optional table is needed once a present table's rows refer to it (e.g. impressions'
    users); one problem per absent table."""
    out, reported = [], set()
    for name in readable:
        for col, ref in TABLES[name].foreign_keys.items():
            ref_table = ref.split(".")[0]
            if ref_table in present | reported or TABLES[ref_table].required or col in filled[name]:
                continue
            n = con.execute(f'SELECT count("{col}") FROM "{name}"').fetchone()[0]
            if n:
                reported.add(ref_table)
                out.append(Problem(ref_table, None, f"a Parquet table ({n} rows of {name}.{col} refer to it)",
                                   "nothing"))
    return out


def _check_images(con, workdir: Path) -> list[Problem]:
    """Every image_uri names a file (or a shard's row) inside world/; a path that escapes it is its own
    problem, naming a pin."""
    root = workdir / "world"
    store = ImageStore(root)
    rows = con.execute("SELECT pin_id, image_uri FROM pins WHERE image_uri IS NOT NULL ORDER BY pin_id").fetchall()
    escaping, missing = [], []
    for pin_id, uri in rows:
        rel, row = split_uri(uri)
        path = resolve_inside(root, rel)
        if path is None:
            escaping.append((pin_id, uri))
        elif not (path.is_file() and (not row or (row.isdigit() and int(row) < len(store._shard(rel))))):
            missing.append(uri)
    out = []
    if escaping:
        pin_id, uri = escaping[0]
        out.append(Problem("pins", "image_uri", "a path inside world/",
                           f"{len(escaping)} escaping it, e.g. pin {pin_id}: {uri!r}"))
    if missing:
        out.append(Problem("pins", "image_uri", "an image file under world/",
                           f"{len(missing)} missing, e.g. {missing[0]!r}"))
    return out
