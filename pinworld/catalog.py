"""The DuckDB catalog (``catalog.duckdb``): views over the workspace's Parquet tables.

Views use paths relative to the workdir and ``connect`` points DuckDB's file search path at it, so a
workspace can be moved or copied as a whole.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from pinworld.schema import TABLES

CATALOG_FILE = "catalog.duckdb"


def _source(path: str) -> str:
    if path.endswith(".parquet"):
        return f"read_parquet('{path}')"
    return f"read_parquet('{path}/**/*.parquet', hive_partitioning = false)"


def build_catalog(workdir: Path | str) -> Path:
    """(Re)create the catalog's views for every table present in ``workdir``."""
    workdir = Path(workdir)
    target = workdir / CATALOG_FILE
    tmp = workdir / (CATALOG_FILE + ".tmp")
    tmp.unlink(missing_ok=True)
    con = duckdb.connect(str(tmp))
    try:
        con.execute(f"SET file_search_path = '{_quote(workdir.resolve())}'")
        for t in TABLES.values():
            present = (workdir / t.path).is_file() if t.path.endswith(".parquet") else any((workdir / t.path).rglob("*.parquet"))
            if present:
                con.execute(f"CREATE VIEW {t.name} AS SELECT * FROM {_source(t.path)}")
        if (workdir / TABLES["impressions"].path).exists():
            con.execute("""
                CREATE VIEW actions AS
                SELECT request_id, day, surface, user_id, query_pin_id, pin_id, position, action
                FROM impressions
                UNPIVOT (happened FOR action IN (repin, click, hide))
                WHERE happened""")
    finally:
        con.close()
    tmp.replace(target)
    return target


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
