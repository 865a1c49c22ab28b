"""Experiment logs — ``exposures``, ``events`` and an optional per-user ``covariates`` table: their columns,
and the checks every analysis runs on them before any statistic.

Nothing is dropped silently. A row that cannot be used is either an error (one line naming the table, the
column and what was found) or excluded and counted (``Exclusions``, shown by the CLI and the report):

* errors: a missing or mistyped column; a null in a non-null column; an action or surface outside the
  vocabulary (the unknown values listed); exposures of another experiment, an unknown variant, a user twice,
  a first exposure outside the window; two different rows with one (request_id, position, action) key;
  covariates without a column per metric, with nulls or a user twice;
* excluded and counted: exact duplicate rows (counted once), events after the window, events before the
  user's first exposure (negative days included) and events of users without an exposure.

The checks that read rows are ibis expressions over the views (``metrics.views``), run on the analysis's
engine (``engines``: DuckDB or Spark), so both give the same errors and counts. The columns and their types
are checked before any view exists, on each table's Parquet footer (``check_columns``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import duckdb
import ibis

from abtest.engines import as_engine
from pinlift.core.errors import input_error
from pinlift.core.schema import EXPERIMENT_TABLES, column_kinds
from pinlift.core.vocabulary import ACTIONS, EVENTS

_TYPE_FAMILIES = {
    "int": ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT", "HUGEINT"),
    "string": ("VARCHAR",),
    "float": ("FLOAT", "DOUBLE", "REAL", "DECIMAL", "TINYINT", "SMALLINT", "INTEGER", "BIGINT"),
    "bool": ("BOOLEAN",),
}
_EVENTS, _EXPOSURES = EXPERIMENT_TABLES["events"], EXPERIMENT_TABLES["exposures"]   # the schemas (core)
EVENTS_COLUMNS = {c.name: c.kind for c in _EVENTS.columns}
EXPOSURES_COLUMNS = {c.name: c.kind for c in _EXPOSURES.columns}
# the columns of the workspace's tables the metrics read, with their kinds from the core schema
PINS_COLUMNS = {k: column_kinds("pins")[k] for k in ("pin_id", "created_day", "is_ad")}
IMPRESSIONS_COLUMNS = {k: column_kinds("impressions")[k]
                       for k in ("day", "user_id", "surface", "request_id", "pin_id", "position", *ACTIONS)}
# the ibis types of the views ``exposures`` and ``events`` (``metrics.views`` casts the Parquet columns to them)
LOG_SCHEMAS = {
    "exposures": {"experiment": "string", "user_id": "int64", "variant": "string", "first_exposure_day": "int32"},
    "events": {"day": "int32", "user_id": "int64", "surface": "string", "request_id": "int64", "pin_id": "int64",
               "position": "int32", "action": "string", "value": "float64"},
}
NULLABLE = tuple(c.name for t in (_EVENTS, _EXPOSURES) for c in t.columns if c.nullable)
EVENT_KEY = _EVENTS.key


def scan(path: Path) -> str:
    """DuckDB's reader of a Parquet file or of every ``*.parquet`` under a directory (the path quoted)."""
    quoted = str(Path(path).resolve()).replace("'", "''")
    if Path(path).suffix == ".parquet":
        return f"read_parquet('{quoted}')"
    return f"read_parquet('{quoted}/**/*.parquet', hive_partitioning = false)"


def check_columns(path: Path, table: str, columns: dict[str, str]) -> None:
    """Parquet at ``path`` with each of ``columns`` of its kind (int, string, float, bool); extra columns are fine.
    DuckDB reads the schema from the (first) file's footer, no rows, whichever engine runs the queries."""
    if Path(path).suffix != ".parquet" and (not Path(path).is_dir() or not any(Path(path).rglob("*.parquet"))):
        raise input_error(path, table, "Parquet files", "none" if Path(path).is_dir() else "no such directory")
    try:
        with duckdb.connect() as con:
            described = con.execute(f"DESCRIBE SELECT * FROM {scan(path)}").fetchall()
    except duckdb.Error as exc:
        raise input_error(path, table, "readable Parquet", str(exc).splitlines()[0]) from None
    types = {row[0]: row[1] for row in described}
    for name, kind in columns.items():
        if name not in types:
            raise input_error(path, f"column {name!r}", f"a {kind} column", "no such column")
        if types[name] == '"NULL"' and name in NULLABLE:      # an all-null nullable column (Arrow type null)
            continue
        if types[name].split("(")[0] not in _TYPE_FAMILIES[kind]:
            raise input_error(path, f"column {name!r}", kind, types[name])


@dataclass(frozen=True)
class Exclusions:
    """Event rows left out of every metric, by reason."""

    duplicate_rows: int = 0       # exact copies of another row (the row itself counts once)
    after_window: int = 0         # day >= days.start + days.count
    before_exposure: int = 0      # day < the user's first_exposure_day (negative days included)
    without_exposure: int = 0     # users with no row in exposures


REASONS = {"duplicate_rows": "exact duplicate rows", "after_window": "events after the window",
           "before_exposure": "events before first exposure", "without_exposure": "events of users without an exposure"}


def excluded_text(events: dict) -> str:
    """'excluded: 2,094 events before first exposure, ...' (or 'excluded: none') from analysis.json's ``events``."""
    parts = [f"{n:,} {REASONS[k]}" + (f" (day ≥ {events['window'][1] + 1})" if k == "after_window" else "")
             for k, n in events["excluded"].items() if n]
    return "excluded: " + (", ".join(parts) if parts else "none")


@dataclass(frozen=True)
class CheckedLogs:
    """What the checks found: users per variant, event rows read and counted, and the exclusions."""

    users: dict[str, int]
    rows: int
    counted: int
    excluded: Exclusions

    @property
    def distinct(self) -> bool:
        """Whether metrics must read each distinct row once (the events hold exact duplicates)."""
        return self.excluded.duplicate_rows > 0

    def record(self, start: int, end: int | None, first_day, last_day) -> dict:
        """analysis.json's ``events``."""
        return {"rows": self.rows, "counted": self.counted, "first_day": first_day, "last_day": last_day,
                "window": [start, None if end is None else end - 1], "excluded": asdict(self.excluded)}


def _plural(n: int, what: str) -> str:
    return f"{n:,} {what}{'' if n == 1 else 's'}"


def _first(engine, expr: ibis.Table) -> dict | None:
    """The first row of ``expr`` run on ``engine``, or None when it has none."""
    rows = engine.run(expr).to_pylist()
    return rows[0] if rows else None


def _no_nulls(engine, table: ibis.Table, path: Path, columns: Sequence[str]) -> int:
    """An error for the first of ``columns`` holding nulls; returns how many rows ``table`` has."""
    # COUNT(*) - COUNT(c), which DuckDB answers from the Parquet statistics without reading the rows
    found = _first(engine, table.aggregate(rows=table.count(),
                                           **{f"nulls_{c}": table.count() - table[c].count() for c in columns}))
    for c in columns:
        if found[f"nulls_{c}"]:
            raise input_error(path, f"column {c!r}", "no nulls", _plural(found[f"nulls_{c}"], "null row"))
    return found["rows"]


def _in(engine, table: ibis.Table, path: Path, column: str, allowed: Sequence[str], expected: str) -> None:
    """Every value of ``column`` in ``allowed``; the error lists the others with their row counts."""
    # a filter (which DuckDB evaluates in its Parquet scan) rather than one more count in the null aggregate
    others = table.filter(~table[column].isin(list(allowed))).group_by(column).aggregate(n=ibis._.count())
    listed = engine.run(others.order_by([ibis.desc("n"), column]).limit(5)).to_pylist()
    if listed:
        raise input_error(path, f"column {column!r}", expected,
                          ", ".join(f"{r[column]!r} ({_plural(r['n'], 'row')})" for r in listed))


def _once_per_user(engine, table: ibis.Table, path: Path) -> None:
    """One row per ``user_id`` of ``table``."""
    repeated = table.group_by("user_id").aggregate(n=ibis._.count()).filter(ibis._.n > 1)
    dup = _first(engine, repeated.order_by("user_id").limit(1))
    if dup:
        raise input_error(path, "column 'user_id'", "one row per user", f"user {dup['user_id']} {dup['n']} times")


def _users(engine, x: ibis.Table, path: Path, variants: Sequence[str], min_users: int) -> dict[str, int]:
    _once_per_user(engine, x, path)
    counts = {r["variant"]: r["n"] for r in engine.run(x.group_by("variant").aggregate(n=ibis._.count())).to_pylist()}
    users = {v: int(counts.get(v, 0)) for v in variants}
    for v, n in users.items():
        if n < min_users:
            raise input_error(path, f"variant {v!r}", f"at least {min_users} users", n)
    return users


def _first_exposures(engine, x: ibis.Table, path: Path, start: int, end: int | None) -> None:
    day = x.first_exposure_day
    out = x.filter(day < start if end is None else (day < start) | (day >= end))
    outside = _first(engine, out.aggregate(n=out.count(), first=out.first_exposure_day.min(),
                                           last=out.first_exposure_day.max(), user=out.user_id.min()))
    if outside["n"]:
        window = f"days {start}–{end - 1}" if end is not None else f"day {start} or later"
        raise input_error(path, "column 'first_exposure_day'", f"{window} (exp.yaml `days:`)",
                          f"{_plural(outside['n'], 'user')} first exposed on days {outside['first']}–"
                          f"{outside['last']} (e.g. user {outside['user']})")


def _duplicates(engine, events: ibis.Table, path: Path) -> int:
    """Exact duplicate rows; an error when two different rows share a key."""
    key, rest = list(EVENT_KEY), [c for c in EVENTS_COLUMNS if c not in EVENT_KEY]
    # one aggregate over the events finds the repeated keys; only their rows are compared
    repeated = events.group_by(key).aggregate(copies=ibis._.count()).filter(ibis._.copies > 1)
    rows = events.join(repeated, key).distinct()          # each different row of a repeated key once
    per_key = rows.group_by(key).aggregate(copies=rows.copies.max(), rows=rows.count(),
                                           **{c: rows[c].nunique() for c in rest})
    found = _first(engine, per_key.aggregate(duplicates=(per_key.copies - per_key.rows).sum(),
                                             conflicts=per_key.count(where=per_key.rows > 1)))
    if found["conflicts"]:
        row = _first(engine, per_key.filter(per_key.rows > 1).order_by(key).limit(1))
        differ = [c for c in rest if row[c] > 1] or ["value"]       # a null beside a value
        raise input_error(path, f"key ({', '.join(key)})", "one row per key (or exact duplicates)",
                          f"different rows for {tuple(row[c] for c in key)}, differing in {', '.join(differ)}")
    return int(found["duplicates"] or 0)       # a sum over no keys is null


def _exclusions(engine, events: ibis.Table, x: ibis.Table, end: int | None, duplicates: int) -> Exclusions:
    """The events no metric counts, by reason; ``events`` read once per distinct row when it holds duplicates."""
    e = events.distinct() if duplicates else events
    first = x.select(exposed_user=x.user_id, first_day=x.first_exposure_day)
    j = e.left_join(first, e.user_id == first.exposed_user)
    exposed = j.exposed_user.notnull()
    after = j.day >= end if end is not None else ibis.literal(False)
    counts = _first(engine, j.aggregate(without=j.count(where=~exposed), late=j.count(where=exposed & after),
                                        early=j.count(where=exposed & (j.day < j.first_day))))
    return Exclusions(duplicates, int(counts["late"]), int(counts["early"]), int(counts["without"]))


def check_logs(engine, exposures: Path, events: Path, *, experiment: str, variants: Sequence[str],
               surfaces: Sequence[str], start: int, end: int | None, min_users: int = 2) -> CheckedLogs:
    """Check the views ``exposures`` and ``events`` (read from those paths) on ``engine`` (``engines.as_engine``)
    for the experiment ``experiment`` on days [start, end) (end None: open) with the workspace's ``surfaces``;
    count what is excluded. Raises InputError."""
    engine = as_engine(engine)
    x, e = (ibis.table(LOG_SCHEMAS[name], name=name) for name in ("exposures", "events"))
    _no_nulls(engine, x, exposures, [c for c in EXPOSURES_COLUMNS if c not in NULLABLE])
    _in(engine, x, exposures, "experiment", [experiment], f"{experiment!r} (the experiment's name)")
    _in(engine, x, exposures, "variant", variants, f"one of {', '.join(variants)}")
    users = _users(engine, x, exposures, variants, min_users)
    _first_exposures(engine, x, exposures, start, end)
    rows = _no_nulls(engine, e, events, [c for c in EVENTS_COLUMNS if c not in NULLABLE])
    if rows == 0:
        raise input_error(events, "events", "event rows", "none")
    _in(engine, e, events, "action", EVENTS, f"one of {', '.join(EVENTS)}")
    _in(engine, e, events, "surface", surfaces, f"a surface the workspace declares ({', '.join(surfaces)})")
    excluded = _exclusions(engine, e, x, end, _duplicates(engine, e, events))
    return CheckedLogs(users, rows, rows - sum(asdict(excluded).values()), excluded)


def check_covariates(engine, path: Path, metrics: Sequence[str]) -> int:
    """The ``covariates`` view on ``engine``: ``user_id`` and a numeric column per metric, no nulls, one row per
    user. Returns how many exposed users have a row."""
    engine = as_engine(engine)
    check_columns(path, "covariates", {"user_id": "int", **dict.fromkeys(metrics, "float")})
    cv = ibis.table({"user_id": "int64", **dict.fromkeys(metrics, "float64")}, name="covariates")
    _no_nulls(engine, cv, path, ["user_id", *metrics])
    _once_per_user(engine, cv, path)
    x = ibis.table(LOG_SCHEMAS["exposures"], name="exposures")
    return _first(engine, x.join(cv, "user_id").aggregate(n=ibis._.count()))["n"]
