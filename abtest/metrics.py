"""Metrics in SQL on DuckDB: per-user values, and per-variant sufficient statistics.

A metric is an aggregate of event rows per user: the number (``count``) or the sum of a column
(``sum``) of the rows with a given action on a surface, optionally only for some pins (fresh content,
new ads, ...). A *mean* metric compares per-user values (Welch, CUPED); a *ratio* metric compares
Σ numerator / Σ denominator over users (CTR = clicks / impressions, CPC = spend / clicks) with the
delta method. Each (metric, surface) pair is one test, a *cell*.

SQL safety: the query text is assembled only from this module's fixed fragments, chosen by values
the config schema has already restricted to closed vocabularies; surfaces, actions and day bounds go
in as bound parameters; the connection is read-only (``open_readonly``). No user string is ever
pasted into SQL except file paths of the workspace, quoted.
"""

from __future__ import annotations

import re
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Sequence

import duckdb
import numpy as np

from abtest.logs import (EVENTS_COLUMNS, EXPOSURES_COLUMNS, IMPRESSIONS_COLUMNS, PINS_COLUMNS, check_columns,
                         events_from, scan)
from pinlift.core.clock import FRESH_DAYS, NEW_AD_DAYS
from pinlift.core.vocabulary import ACTIONS, ADS, CLICK, EVENTS, HIDE, IMPRESSION, REPIN, Vocabulary

EVENT_COLUMNS = ("value", "position")
PIN_FILTERS = ("any", "fresh", "new_ad", "organic", "ad")

_COLUMN_SQL = {"value": "e.value", "position": "CAST(e.position AS DOUBLE)"}
_PIN_SQL = {
    "any": "TRUE",
    "fresh": "(e.day - e.pin_created_day) < ?",
    "new_ad": "(e.pin_is_ad AND (e.day - e.pin_created_day) < ?)",
    "organic": "(NOT e.pin_is_ad)",
    "ad": "e.pin_is_ad",
}
_PIN_PARAMS = {"fresh": (FRESH_DAYS,), "new_ad": (NEW_AD_DAYS,)}
PIN_FILTERS_NEEDING_PINS = ("fresh", "new_ad", "organic", "ad")
METRIC_NAME = r"^[a-z][a-z0-9_]{0,47}$"   # metric names: labels, and the covariates' column names


@dataclass(frozen=True)
class Aggregate:
    """Per user: count (column None) or sum of ``column`` over events with ``action`` on ``pins``."""

    action: str
    column: str | None = None
    pins: str = "any"

    def __post_init__(self):
        # the vocabularies are what make the SQL fragments safe; enforce them here as well
        if self.action not in EVENTS or self.pins not in PIN_FILTERS or (
                self.column is not None and self.column not in EVENT_COLUMNS):
            raise ValueError(f"abtest: invalid aggregate {self}")


@dataclass(frozen=True)
class Metric:
    name: str
    kind: str                       # "mean" | "ratio"
    numerator: Aggregate
    denominator: Aggregate | None   # ratio metrics only
    surfaces: tuple[str, ...]
    doc: str = ""
    direction: str = "increase"     # the good direction: "increase" | "decrease"

    def on(self, surfaces) -> "Metric":
        return replace(self, surfaces=tuple(surfaces))

    @property
    def needs_pins(self) -> bool:
        aggs = [self.numerator] + ([self.denominator] if self.denominator else [])
        return any(a.pins in PIN_FILTERS_NEEDING_PINS for a in aggs)


def builtin_metrics(vocab: Vocabulary) -> dict[str, Metric]:
    """The built-in metrics on ``vocab``'s surfaces: the ad metrics on its surfaces of kind ads, the
    others on all."""
    every, ads = vocab.names, tuple(s.name for s in vocab.of_kind(ADS))
    return {m.name: m for m in (
        Metric("repins", "mean", Aggregate(REPIN), None, every, "repins per user"),
        Metric("fresh_repins", "mean", Aggregate(REPIN, pins="fresh"), None, every,
               f"repins of fresh pins (age < {FRESH_DAYS} days) per user"),
        Metric("clicks", "mean", Aggregate(CLICK), None, every, "clicks per user"),
        Metric("new_ad_clicks", "mean", Aggregate(CLICK, pins="new_ad"), None, ads,
               f"clicks on new ads (age < {NEW_AD_DAYS} days) per user"),
        # delivery and quality of new ads, to read new-ad clicks by: an auction that overrates new ads wins
        # them clicks by showing them more, not by showing better ones
        Metric("new_ad_impressions", "mean", Aggregate(IMPRESSION, pins="new_ad"), None, ads,
               f"impressions of new ads (age < {NEW_AD_DAYS} days) per user"),
        Metric("new_ad_ctr", "ratio", Aggregate(CLICK, pins="new_ad"), Aggregate(IMPRESSION, pins="new_ad"), ads,
               "new-ad clicks / new-ad impressions"),
        Metric("hides", "mean", Aggregate(HIDE), None, every, "hides per user", "decrease"),
        Metric("impressions", "mean", Aggregate(IMPRESSION), None, every, "impressions per user"),
        Metric("spend", "mean", Aggregate(CLICK, column="value"), None, ads, "ad spend per user (cents)"),
        Metric("ctr", "ratio", Aggregate(CLICK), Aggregate(IMPRESSION), every, "clicks / impressions"),
        Metric("cpc", "ratio", Aggregate(CLICK, column="value"), Aggregate(CLICK), ads,
               "ad spend / ad clicks (cents per click)", "decrease"),
    )}


DEFAULT_METRICS = ("repins", "fresh_repins", "new_ad_clicks", "ctr", "cpc", "hides")
LOG_METRICS = ("repins", "clicks", "ctr", "cpc", "hides")    # analysis-only configs: none needs the pins table


def metric_from_spec(vocab: Vocabulary, name: str, surfaces, aggregate: str | None, column: str | None,
                     action: str | None, pins: str | None) -> Metric:
    """A built-in metric (``aggregate`` None) or a custom one, on ``vocab``'s surfaces unless ``surfaces``
    says which; ``mean`` is Σcolumn / count per variant."""
    if aggregate is None:
        m = builtin_metrics(vocab)[name]
        return m.on(surfaces) if surfaces else m
    surfaces = tuple(surfaces or vocab.names)
    pins = pins or "any"
    if aggregate == "count":
        return Metric(name, "mean", Aggregate(action, None, pins), None, surfaces, f"{action} events per user")
    if aggregate == "sum":
        return Metric(name, "mean", Aggregate(action, column, pins), None, surfaces,
                      f"sum of {column} over {action} events per user")
    return Metric(name, "ratio", Aggregate(action, column, pins), Aggregate(action, None, pins), surfaces,
                  f"mean {column} of {action} events")


@dataclass(frozen=True)
class Cell:
    """One (metric, surface) pair: one test. Its SQL columns are x{i}, y{i} (ratio), c{i} (covariate)."""

    index: int
    metric: Metric
    surface: str

    @property
    def key(self) -> str:
        return f"{self.metric.name}/{self.surface}"


def cells_of(metrics: list[Metric]) -> list[Cell]:
    out = []
    for m in metrics:
        for s in m.surfaces:
            out.append(Cell(len(out), m, s))
    return out


# ---------------------------------------------------------------------------------------------
# Sources and the read-only connection


@dataclass(frozen=True)
class Sources:
    """Where the tables are: experiment ``exposures``/``events`` (Parquet directories), the world's
    ``pins`` table, the organic ``impressions`` logs (for the pre-period) and a per-user ``covariates``
    table (a column per metric; replaces the pre-period), the last three optional."""

    exposures: Path
    events: Path
    pins: Path | None = None
    impressions: Path | None = None
    covariates: Path | None = None

    @classmethod
    def for_experiment(cls, workdir: Path | str, experiment_dir: Path | str,
                       covariates: Path | str | None = None) -> "Sources":
        w, e = Path(workdir), Path(experiment_dir)
        pins = w / "world" / "pins.parquet"
        imp = w / "logs" / "impressions"
        return cls(e / "exposures", e / "events", pins if pins.is_file() else None,
                   imp if imp.is_dir() and any(imp.rglob("*.parquet")) else None,
                   None if covariates is None else Path(covariates))


def _create_views(con, src: Sources) -> None:
    check_columns(con, src.exposures, "exposures", EXPOSURES_COLUMNS)
    check_columns(con, src.events, "events", EVENTS_COLUMNS)
    con.execute(f"""CREATE VIEW exposures AS SELECT CAST(experiment AS VARCHAR) AS experiment,
        CAST(user_id AS BIGINT) AS user_id, CAST(variant AS VARCHAR) AS variant,
        CAST(first_exposure_day AS INTEGER) AS first_exposure_day FROM {scan(src.exposures)}""")
    con.execute(f"""CREATE VIEW events AS SELECT CAST(day AS INTEGER) AS day, CAST(user_id AS BIGINT) AS user_id,
        CAST(surface AS VARCHAR) AS surface, CAST(request_id AS BIGINT) AS request_id,
        CAST(pin_id AS BIGINT) AS pin_id, CAST(position AS INTEGER) AS position,
        CAST(action AS VARCHAR) AS action, CAST(value AS DOUBLE) AS value FROM {scan(src.events)}""")
    if src.pins is not None:
        check_columns(con, src.pins, "pins", PINS_COLUMNS)
        con.execute(f"""CREATE VIEW pins AS SELECT CAST(pin_id AS BIGINT) AS pin_id,
            CAST(created_day AS INTEGER) AS created_day, CAST(is_ad AS BOOLEAN) AS is_ad FROM {scan(src.pins)}""")
    else:
        con.execute("CREATE VIEW pins AS SELECT CAST(NULL AS BIGINT) AS pin_id, CAST(NULL AS INTEGER) AS created_day, "
                    "CAST(NULL AS BOOLEAN) AS is_ad WHERE FALSE")
    if src.impressions is not None:
        check_columns(con, src.impressions, "impressions", IMPRESSIONS_COLUMNS)
        # organic logs in the events schema: one impression row per slot plus one row per action
        actions = ", ".join(ACTIONS)
        con.execute(f"""CREATE VIEW pre_events AS
            WITH imp AS (SELECT CAST(day AS INTEGER) AS day, CAST(user_id AS BIGINT) AS user_id,
                                CAST(surface AS VARCHAR) AS surface, CAST(request_id AS BIGINT) AS request_id,
                                CAST(pin_id AS BIGINT) AS pin_id, CAST(position AS INTEGER) AS position,
                                {actions} FROM {scan(src.impressions)})
            SELECT day, user_id, surface, request_id, pin_id, position, '{IMPRESSION}' AS action,
                   CAST(NULL AS DOUBLE) AS value FROM imp
            UNION ALL
            SELECT day, user_id, surface, request_id, pin_id, position, action, CAST(NULL AS DOUBLE) AS value
            FROM imp UNPIVOT (happened FOR action IN ({actions})) WHERE happened""")
    if src.covariates is not None:
        check_columns(con, src.covariates, "covariates", {"user_id": "int"})
        con.execute("CREATE VIEW covariates AS SELECT * REPLACE (CAST(user_id AS BIGINT) AS user_id) "
                    f"FROM {scan(src.covariates)}")


@contextmanager
def open_readonly(src: Sources) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-only DuckDB connection with views ``exposures``, ``events``, ``pins``, (when organic
    logs exist) ``pre_events`` and (when given) ``covariates``. The views live in a scratch database file, written once and reopened
    read-only, so no metric query can write anything."""
    with tempfile.TemporaryDirectory(prefix="abtest-duckdb-") as tmp:
        db = str(Path(tmp) / "views.duckdb")
        con = duckdb.connect(db)
        try:
            _create_views(con, src)
        finally:
            con.close()
        con = duckdb.connect(db, read_only=True, config={"threads": 2})
        try:
            yield con
        finally:
            con.close()


# ---------------------------------------------------------------------------------------------
# SQL


class _Sql:
    """Query text and its positional parameters, assembled left to right."""

    def __init__(self):
        self.parts: list[str] = []
        self.params: list = []

    def add(self, text: str, *params) -> "_Sql":
        self.parts.append(text)
        self.params.extend(params)
        return self

    @property
    def text(self) -> str:
        return "".join(self.parts)


def _aggregate(q: _Sql, agg: Aggregate, surface: str, alias: str) -> None:
    value = "1.0" if agg.column is None else _COLUMN_SQL[agg.column]
    q.add("SUM(CASE WHEN e.surface = ? AND e.action = ? AND ", surface, agg.action)
    q.add(_PIN_SQL[agg.pins], *_PIN_PARAMS.get(agg.pins, ()))
    q.add(f" THEN {value} ELSE 0.0 END) AS {alias}")


def _select_cells(q: _Sql, cells: list[Cell], covariate: bool) -> None:
    first = True
    for c in cells:
        # the metric (x, y) or, with ``covariate``, the same metric over the pre-period (c, cy)
        num, den = ("c", "cy") if covariate else ("x", "y")
        pairs = [(c.metric.numerator, f"{num}{c.index}")] + (
            [(c.metric.denominator, f"{den}{c.index}")] if c.metric.kind == "ratio" else [])
        for agg, alias in pairs:
            q.add("" if first else ", ")
            _aggregate(q, agg, c.surface, alias)
            first = False
    if first:
        q.add("0.0 AS no_cells")


def value_columns(cells: list[Cell], covariate: bool) -> list[str]:
    """Per-user columns of the per-user query: x{i} [y{i}] for every cell, then with covariates c{i}
    [cy{i}], the same sums over the pre-period."""
    cols = []
    for c in cells:
        cols.append(f"x{c.index}")
        if c.metric.kind == "ratio":
            cols.append(f"y{c.index}")
    if covariate:
        for c in cells:
            cols.append(f"c{c.index}")
            if c.metric.kind == "ratio":
                cols.append(f"cy{c.index}")
    return cols


def _covariate_columns(q: _Sql, cells: list[Cell]) -> None:
    """c{i} of every cell from the ``covariates`` view's column named after its metric (cy{i} = 1: a ratio's
    covariate is that per-user value itself)."""
    for c in cells:
        if not re.fullmatch(METRIC_NAME, c.metric.name):     # validated by the config; it becomes an identifier
            raise ValueError(f"abtest: invalid metric name {c.metric.name!r}")
        q.add(f', CAST(cv."{c.metric.name}" AS DOUBLE) AS c{c.index}')


def per_user_query(cells: list[Cell], pre_window: tuple[int, int] | None, *, until: int | None = None,
                   distinct: bool = False, covariates: bool = False) -> tuple[str, list]:
    """SQL for one row per exposed user: user_id, variant, first_exposure_day and the value columns.

    Events count from the user's first exposure day on and, with ``until``, before that day; ``distinct``
    reads each distinct event row once (``logs.check_logs`` found exact duplicates). The CUPED covariates
    c{i}: with ``pre_window`` [lo, hi), the same metrics over the organic logs of those days; with
    ``covariates``, the ``covariates`` view's column of each metric (0 for users without a row in either)."""
    q = _Sql()
    q.add("WITH ev AS (SELECT e.day, e.user_id, e.surface, e.action, e.value, e.position, "
          f"p.created_day AS pin_created_day, p.is_ad AS pin_is_ad FROM {events_from(distinct)} e "
          "JOIN exposures x ON e.user_id = x.user_id AND e.day >= x.first_exposure_day ")
    if until is not None:
        q.add("AND e.day < ? ", int(until))
    q.add("LEFT JOIN pins p ON e.pin_id = p.pin_id), ")
    q.add("during AS (SELECT e.user_id, ")
    _select_cells(q, cells, covariate=False)
    q.add(" FROM ev e GROUP BY e.user_id)")
    if pre_window is not None and covariates:
        raise ValueError("abtest: covariates from the pre-period or from the covariates table, not both")
    if pre_window is not None:
        q.add(", pre AS (SELECT e.user_id, ")
        _select_cells(q, cells, covariate=True)
        q.add(" FROM (SELECT pe.day, pe.user_id, pe.surface, pe.action, pe.value, pe.position, "
              "p.created_day AS pin_created_day, p.is_ad AS pin_is_ad FROM pre_events pe "
              "LEFT JOIN pins p ON pe.pin_id = p.pin_id WHERE pe.day >= ? AND pe.day < ?) e "
              "GROUP BY e.user_id)", int(pre_window[0]), int(pre_window[1]))
    if covariates:
        q.add(", pre AS (SELECT cv.user_id")
        _covariate_columns(q, cells)
        q.add(" FROM covariates cv)")
    cols = value_columns(cells, covariate=pre_window is not None or covariates)
    select = ", ".join(("1.0" if covariates and c[:2] == "cy" else f"COALESCE({'pr' if c[0] == 'c' else 'd'}.{c}, 0.0)")
                       + f" AS {c}" for c in cols)
    q.add(f" SELECT x.user_id, x.variant, x.first_exposure_day, {select} FROM exposures x "
          "LEFT JOIN during d ON d.user_id = x.user_id")
    if pre_window is not None or covariates:
        q.add(" LEFT JOIN pre pr ON pr.user_id = x.user_id")
    q.add(" ORDER BY x.user_id")
    return q.text, q.params


def per_user_values(con, cells: list[Cell], pre_window: tuple[int, int] | None, **scope) -> dict[str, np.ndarray]:
    """Per-user values as numpy arrays (user_id, variant, first_exposure_day, x*, y*, c*); ``scope``: the
    keywords of ``per_user_query``."""
    sql, params = per_user_query(cells, pre_window, **scope)
    out = con.execute(sql, params).fetchnumpy()
    return {k: (np.asarray(v) if k == "variant" else np.asarray(v, dtype=np.float64 if k[0] in "xyc" else np.int64))
            for k, v in out.items()}


def cross_sum_name(a: Cell, b: Cell) -> str:
    """Name of Σ x_a·x_b, the per-variant sum of the products of two cells' per-user values."""
    return f"sx{int(a.index)}x{int(b.index)}"


def sufficient_stats(con, cells: list[Cell], pre_window: tuple[int, int] | None,
                     pairs: Sequence[tuple[Cell, Cell]] = (), **scope) -> dict[str, dict[str, float]]:
    """Per variant: n and, per cell, Σx, Σx² (+ Σy, Σy², Σxy for ratios; + Σc, Σc², Σxc with covariates, and
    for ratios also the pre-period denominator d: Σd, Σd², Σcd, Σxd, Σyc, Σyd);
    per (a, b) in ``pairs``, Σ x_a·x_b (``cross_sum_name``), for statistics of two cells on the same users.

    One pass over the events whatever ``pairs`` holds: the cross sums are extra columns of the same
    aggregate, so paired statistics never re-run the per-user query. ``scope``: the keywords of
    ``per_user_query``."""
    sql, params = per_user_query(cells, pre_window, **scope)
    covariate = pre_window is not None or scope.get("covariates", False)
    known = set(cells)
    sums = ["COUNT(*) AS n"]
    for c in cells:
        i = c.index
        sums += [f"SUM(x{i}) AS sx{i}", f"SUM(x{i} * x{i}) AS sxx{i}"]
        if c.metric.kind == "ratio":
            sums += [f"SUM(y{i}) AS sy{i}", f"SUM(y{i} * y{i}) AS syy{i}", f"SUM(x{i} * y{i}) AS sxy{i}"]
        if covariate:
            sums += [f"SUM(c{i}) AS sc{i}", f"SUM(c{i} * c{i}) AS scc{i}", f"SUM(x{i} * c{i}) AS sxc{i}"]
            if c.metric.kind == "ratio":
                sums += [f"SUM(cy{i}) AS sd{i}", f"SUM(cy{i} * cy{i}) AS sdd{i}", f"SUM(c{i} * cy{i}) AS scd{i}",
                         f"SUM(x{i} * cy{i}) AS sxd{i}", f"SUM(y{i} * c{i}) AS syc{i}", f"SUM(y{i} * cy{i}) AS syd{i}"]
    for a, b in dict.fromkeys((a, b) for a, b in pairs):
        if a not in known or b not in known:
            raise ValueError(f"abtest: pair ({a.key}, {b.key}) is not among the cells")
        sums.append(f"SUM(x{int(a.index)} * x{int(b.index)}) AS {cross_sum_name(a, b)}")
    rows = con.execute(f"WITH u AS ({sql}) SELECT variant, {', '.join(sums)} FROM u GROUP BY variant",
                       params).fetchall()
    names = ["variant"] + [s.rsplit(" AS ", 1)[1] for s in sums]
    return {r[0]: {k: float(v) for k, v in zip(names[1:], r[1:])} for r in rows}
