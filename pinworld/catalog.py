"""The DuckDB catalog (``catalog.duckdb``): views over the workspace's Parquet tables.

Besides the world's tables and logs: ``embeddings`` (every published version, with its ``name`` and
``version``), ``experiment_exposures`` and ``experiment_events`` (every experiment under
``experiments/``, events tagged with their ``experiment``). ``pinclip publish`` and ``abtest simulate``
refresh the catalog, so new versions and experiments appear in it.

Views use paths relative to the workdir and ``connect`` points DuckDB's file search path at it, so a
workspace can be moved or copied as a whole.
"""

from __future__ import annotations

import os
from pathlib import Path

import duckdb

from pinlift.core.errors import input_error
from pinlift.core.schema import TABLES, Table

CATALOG_FILE = "catalog.duckdb"
SQL_TYPES = {"int": "BIGINT", "float": "FLOAT", "string": "VARCHAR", "bool": "BOOLEAN"}


def _source(path: str) -> str:
    if path.endswith(".parquet"):
        return f"read_parquet('{path}')"
    return f"read_parquet('{path}/**/*.parquet', hive_partitioning = false)"


def build_catalog(workdir: Path | str) -> Path:
    """(Re)create the catalog's views for every table present in ``workdir``; an unreadable table is an
    InputError and leaves the previous catalog as it was."""
    workdir = Path(workdir)
    target = workdir / CATALOG_FILE
    tmp = workdir / f"{CATALOG_FILE}.{os.getpid()}.tmp"  # jobs side by side may refresh it at once
    tmp.unlink(missing_ok=True)
    try:
        with duckdb.connect(str(tmp)) as con:
            _create_views(con, workdir)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(target)
    return target


def _create_views(con: duckdb.DuckDBPyConnection, workdir: Path) -> None:
    con.execute(f"SET file_search_path = '{_quote(workdir.resolve())}'")
    for t in TABLES.values():
        present = (workdir / t.path).is_file() if t.path.endswith(".parquet") else any((workdir / t.path).rglob("*.parquet"))
        if present:
            _view(con, t.name, f"SELECT * FROM {_source(t.path)}", workdir / t.path)
            _fill_columns(con, t)
        else:   # an absent table reads as empty, as World.table reads it
            con.execute(f"CREATE VIEW {t.name} AS SELECT " + ", ".join(
                f'CAST(NULL AS {SQL_TYPES[c.kind]}) AS "{c.name}"' for c in t.columns) + " WHERE false")
    con.execute("""
            CREATE VIEW actions AS
            SELECT request_id, day, surface, user_id, query_pin_id, pin_id, position, action
            FROM impressions
            UNPIVOT (happened FOR action IN (repin, click, hide))
            WHERE happened""")
    for name, (files, query) in _OUTPUT_VIEWS.items():
        if any(workdir.glob(files)):
            _view(con, name, query.format(files=files), workdir / files)


def _fill_columns(con: duckdb.DuckDBPyConnection, t: Table) -> None:
    """Redefine ``t``'s view so that a column its files leave out (or hold only nulls in) reads as typed
    nulls or its default, as World.scan reads it."""
    found = dict(con.execute(f"SELECT column_name, column_type FROM (DESCRIBE {t.name})").fetchall())
    fills = {c.name: f'CAST({_literal(c.default)} AS {SQL_TYPES[c.kind]}) AS "{c.name}"' for c in t.columns
             if c.fillable and found.get(c.name, '"NULL"') == '"NULL"'}
    if fills:
        replaced = [v for k, v in fills.items() if k in found]
        added = [v for k, v in fills.items() if k not in found]
        star = f"* REPLACE ({', '.join(replaced)})" if replaced else "*"
        con.execute(f"CREATE OR REPLACE VIEW {t.name} AS SELECT {', '.join([star, *added])} FROM {_source(t.path)}")


def _literal(value) -> str:
    return "NULL" if value is None else str(value).upper() if isinstance(value, bool) else repr(value)


def _view(con: duckdb.DuckDBPyConnection, name: str, query: str, where: Path) -> None:
    """CREATE VIEW ``name``; a file DuckDB cannot read (truncated, not Parquet) is one InputError line."""
    try:
        con.execute(f"CREATE VIEW {name} AS {query}")
    except duckdb.Error as exc:
        raise input_error(where, name, "readable Parquet files", str(exc).splitlines()[0]) from None


# views over what later stages write: name -> (files, query); each is created when its files exist
# (DuckDB resolves a view's files when it is created)
_OUTPUT_VIEWS = {
    "embeddings": ("embeddings/*/v*/part-*.parquet",
                   "SELECT regexp_extract(filename, 'embeddings/([^/]+)/', 1) AS name, "
                   "regexp_extract(filename, '/(v[0-9]+)/', 1) AS version, * EXCLUDE (filename) "
                   "FROM read_parquet('{files}', filename = true, union_by_name = true)"),
    "experiment_exposures": ("experiments/*/exposures/*.parquet",
                             "SELECT * FROM read_parquet('{files}', union_by_name = true)"),
    "experiment_events": ("experiments/*/events/**/*.parquet",
                          "SELECT regexp_extract(filename, 'experiments/([^/]+)/events/', 1) AS experiment, "
                          "* EXCLUDE (filename) FROM read_parquet('{files}', filename = true, "
                          "hive_partitioning = false, union_by_name = true)"),
}


def _quote(path: Path) -> str:
    return str(path).replace("'", "''")


def connect(workdir: Path | str, read_only: bool = True) -> duckdb.DuckDBPyConnection:
    """Open the workspace's catalog with its relative paths resolved against ``workdir``."""
    workdir = Path(workdir)
    path = workdir / CATALOG_FILE
    if not path.exists():
        raise FileNotFoundError(f"pinworld: {path} not found (run `pinworld generate` or `pinworld catalog`)")
    con = duckdb.connect(str(path), read_only=read_only)
    con.execute(f"SET file_search_path = '{_quote(workdir.resolve())}'")
    return con
