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
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import duckdb

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
NULLABLE = tuple(c.name for t in (_EVENTS, _EXPOSURES) for c in t.columns if c.nullable)
EVENT_KEY = _EVENTS.key


def scan(path: Path) -> str:
    """DuckDB's reader of a Parquet file or of every ``*.parquet`` under a directory (the path quoted)."""
    quoted = str(Path(path).resolve()).replace("'", "''")
    if Path(path).suffix == ".parquet":
        return f"read_parquet('{quoted}')"
    return f"read_parquet('{quoted}/**/*.parquet', hive_partitioning = false)"


def check_columns(con, path: Path, table: str, columns: dict[str, str]) -> None:
    """Parquet at ``path`` with each of ``columns`` of its kind (int, string, float, bool); extra columns are fine."""
    if Path(path).suffix != ".parquet" and (not Path(path).is_dir() or not any(Path(path).rglob("*.parquet"))):
        raise input_error(path, table, "Parquet files", "none" if Path(path).is_dir() else "no such directory")
    try:
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


def _no_nulls(con, view: str, path: Path, columns) -> None:
    cols = [c for c in columns if c not in NULLABLE]
    counts = ", ".join(f'COUNT(*) - COUNT("{c}")' for c in cols)
    nulls = con.execute(f"SELECT {counts} FROM {view}").fetchone()
    for c, n in zip(cols, nulls):
        if n:
            raise input_error(path, f"column {c!r}", "no nulls", _plural(n, "null row"))


def _in(con, view: str, path: Path, column: str, allowed: Sequence[str], expected: str) -> None:
    """Every value of ``column`` in ``allowed``; the error lists the others with their row counts."""
    unknown = con.execute(f"SELECT {column}, COUNT(*) AS n FROM {view} WHERE NOT list_contains(?, {column}) "
                          f"GROUP BY {column} ORDER BY n DESC, {column} LIMIT 5", [list(allowed)]).fetchall()
    if unknown:
        raise input_error(path, f"column {column!r}", expected,
                          ", ".join(f"{v!r} ({_plural(n, 'row')})" for v, n in unknown))


def _users(con, path: Path, variants: Sequence[str], min_users: int) -> dict[str, int]:
    dup = con.execute("SELECT user_id, COUNT(*) FROM exposures GROUP BY user_id HAVING COUNT(*) > 1 "
                      "ORDER BY user_id LIMIT 1").fetchone()
    if dup:
        raise input_error(path, "column 'user_id'", "one row per user", f"user {dup[0]} {dup[1]} times")
    counts = dict(con.execute("SELECT variant, COUNT(*) FROM exposures GROUP BY variant").fetchall())
    users = {v: int(counts.get(v, 0)) for v in variants}
    for v, n in users.items():
        if n < min_users:
            raise input_error(path, f"variant {v!r}", f"at least {min_users} users", n)
    return users


def _first_exposures(con, path: Path, start: int, end: int | None) -> None:
    outside = con.execute("SELECT COUNT(*), MIN(first_exposure_day), MAX(first_exposure_day), MIN(user_id) "
                          "FROM exposures WHERE first_exposure_day < ? OR first_exposure_day >= ?",
                          [start, 2**31 - 1 if end is None else end]).fetchone()
    if outside[0]:
        window = f"days {start}–{end - 1}" if end is not None else f"day {start} or later"
        raise input_error(path, "column 'first_exposure_day'", f"{window} (exp.yaml `days:`)",
                          f"{_plural(outside[0], 'user')} first exposed on days {outside[1]}–{outside[2]} "
                          f"(e.g. user {outside[3]})")


def _duplicates(con, path: Path) -> int:
    """Exact duplicate rows; an error when two different rows share a key."""
    rest = [c for c in EVENTS_COLUMNS if c not in EVENT_KEY]
    key = ", ".join(EVENT_KEY)
    # one hash aggregate over the events finds the repeated keys; only their rows are compared
    rows = con.execute(f"WITH d AS (SELECT {key} FROM events GROUP BY {key} HAVING COUNT(*) > 1) "
                       f"SELECT {key}, COUNT(*), COUNT(DISTINCT ({', '.join(rest)})), "
                       f"{', '.join(f'COUNT(DISTINCT {c})' for c in rest)} FROM events JOIN d USING ({key}) "
                       f"GROUP BY {key} ORDER BY {key}").fetchall()
    for row in rows:
        if row[4] > 1:
            differ = [c for c, n in zip(rest, row[5:]) if n > 1] or ["value"]     # a null against a value
            raise input_error(path, f"key ({key})", "one row per key (or exact duplicates)",
                              f"different rows for {tuple(row[:3])}, differing in {', '.join(differ)}")
    return sum(row[3] - 1 for row in rows)


def events_from(distinct: bool) -> str:
    """The events every metric reads: each distinct row once when the logs hold exact duplicates."""
    return "(SELECT DISTINCT * FROM events)" if distinct else "events"


def check_logs(con, exposures: Path, events: Path, *, experiment: str, variants: Sequence[str],
               surfaces: Sequence[str], start: int, end: int | None, min_users: int = 2) -> CheckedLogs:
    """Check the views ``exposures`` and ``events`` of ``con`` (read from those paths) for the experiment
    ``experiment`` on days [start, end) (end None: open) with the workspace's ``surfaces``; count what is
    excluded. Raises InputError."""
    _no_nulls(con, "exposures", exposures, EXPOSURES_COLUMNS)
    _in(con, "exposures", exposures, "experiment", [experiment], f"{experiment!r} (the experiment's name)")
    _in(con, "exposures", exposures, "variant", variants, f"one of {', '.join(variants)}")
    users = _users(con, exposures, variants, min_users)
    _first_exposures(con, exposures, start, end)
    rows = int(con.execute("SELECT COUNT(*) FROM events").fetchone()[0])
    if rows == 0:
        raise input_error(events, "events", "event rows", "none")
    _no_nulls(con, "events", events, EVENTS_COLUMNS)
    _in(con, "events", events, "action", EVENTS, f"one of {', '.join(EVENTS)}")
    _in(con, "events", events, "surface", surfaces, f"a surface the workspace declares ({', '.join(surfaces)})")
    duplicates = _duplicates(con, events)
    after = "e.day >= ?" if end is not None else "FALSE"
    without, late, early = con.execute(
        f"SELECT COUNT(*) FILTER (WHERE x.user_id IS NULL), COUNT(*) FILTER (WHERE x.user_id IS NOT NULL AND {after}), "
        "COUNT(*) FILTER (WHERE x.user_id IS NOT NULL AND e.day < x.first_exposure_day) "
        f"FROM {events_from(duplicates > 0)} e LEFT JOIN exposures x ON e.user_id = x.user_id",
        [end] if end is not None else []).fetchone()
    excluded = Exclusions(duplicates, int(late), int(early), int(without))
    return CheckedLogs(users, rows, rows - sum(asdict(excluded).values()), excluded)


def check_covariates(con, path: Path, metrics: Sequence[str]) -> int:
    """The ``covariates`` view: ``user_id`` and a numeric column per metric, no nulls, one row per user.
    Returns how many exposed users have a row."""
    check_columns(con, path, "covariates", {"user_id": "int", **dict.fromkeys(metrics, "float")})
    _no_nulls(con, "covariates", path, ["user_id", *metrics])
    dup = con.execute("SELECT user_id, COUNT(*) FROM covariates GROUP BY user_id HAVING COUNT(*) > 1 "
                      "ORDER BY user_id LIMIT 1").fetchone()
    if dup:
        raise input_error(path, "column 'user_id'", "one row per user", f"user {dup[0]} {dup[1]} times")
    return int(con.execute("SELECT COUNT(*) FROM exposures x JOIN covariates c ON c.user_id = x.user_id").fetchone()[0])
