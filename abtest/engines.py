"""Where the metric queries run: DuckDB (embedded, the default) or Spark, the same ibis expressions on both.

``metrics`` writes the views and every metric query once, as ibis expressions over tables by name; an
engine holds those tables as views and runs expressions, returning Arrow tables. DuckDB compiles them to
its SQL on ``metrics.open_readonly``'s read-only connection; Spark compiles them to Spark SQL on the active
SparkSession (the one spark-submit starts on a cluster) or, without one, a new session (local by default).
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from typing import Iterator

import ibis
import pyarrow as pa

from pinlift.core.errors import input_error

ENGINES = ("duckdb", "spark")


class DuckDB:
    """Expressions compiled to DuckDB SQL on a connection of ``metrics.open_readonly``."""

    def __init__(self, con):
        self.con = con
        self.tables = frozenset(r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal")
                                .fetchall())

    def run(self, expr: ibis.Table) -> pa.Table:
        return self.con.sql(ibis.to_sql(expr, dialect="duckdb")).to_arrow_table()


class Spark:
    """Expressions compiled to Spark SQL on ``session``, whose temporary views are ``tables``."""

    def __init__(self, session, tables):
        self.session, self.tables = session, frozenset(tables)

    def run(self, expr: ibis.Table) -> pa.Table:
        return self.session.sql(ibis.to_sql(expr, dialect="pyspark")).toArrow()


def as_engine(con) -> DuckDB | Spark:
    """``con`` itself when it is an engine, else a DuckDB connection of ``metrics.open_readonly`` as one."""
    return con if isinstance(con, (DuckDB, Spark)) else DuckDB(con)


def spark_session(where: str = "engine"):
    """The active SparkSession, else a new one (``spark.master`` from spark-submit or Spark's defaults: local).
    Raises InputError naming what is missing (pyspark, Java) or why Spark did not start."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise input_error(where, "spark", "pyspark installed (scripts/install.sh installs it)", "no pyspark") from None
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    if not os.environ.get("JAVA_HOME") and shutil.which("java") is None:
        raise input_error(where, "spark", "a Java runtime for PySpark (java on PATH or JAVA_HOME; Debian: "
                          "default-jre-headless)", "no java") from None
    try:
        session = SparkSession.builder.appName("abtest").getOrCreate()
    except Exception as exc:        # PySpark reports a JVM that would not start in several exception types
        raise input_error(where, "spark", "a SparkSession that starts", str(exc).strip().splitlines()[0]) from None
    return session


@contextmanager
def open_spark(raw: dict, views: dict[str, ibis.Table], where: str = "engine") -> Iterator[Spark]:
    """A Spark engine whose temporary views are ``views`` (ibis expressions) over the Parquet tables ``raw``
    ({name: path}, read recursively, no partition columns); the views are dropped afterwards."""
    session = spark_session(where)
    ibis.pyspark.connect(session)   # registers ibis's PySpark compile options
    names = list(raw) + list(views)
    try:
        for name, path in raw.items():
            session.read.option("recursiveFileLookup", "true").parquet(str(path)).createOrReplaceTempView(name)
        for name, expr in views.items():
            session.sql(ibis.to_sql(expr, dialect="pyspark")).createOrReplaceTempView(name)
        yield Spark(session, views)
    finally:
        for name in names:
            session.catalog.dropTempView(name)
