"""Metrics as ibis expressions, run on DuckDB or Spark (``engines``): per-user values, and per-variant
sufficient statistics.

A metric is an aggregate of event rows per user: the number (``count``) or the sum of a column
(``sum``) of the rows with a given action on a surface, optionally only for some pins (fresh content,
new ads, ...). A *mean* metric compares per-user values (Welch, CUPED); a *ratio* metric compares
Σ numerator / Σ denominator over users (CTR = clicks / impressions, CPC = spend / clicks) with the
delta method. Each (metric, surface) pair is one test, a *cell*.

Query safety: the queries are ibis expressions (ibis quotes identifiers and literals), built from values
the config schema has already restricted to closed vocabularies; metric names become identifiers only after
matching ``METRIC_NAME``. On DuckDB the connection is read-only (``open_readonly``); the raw Parquet tables
are the workspace's files, their paths quoted.
"""

from __future__ import annotations

import re
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Sequence

import duckdb
import ibis
import numpy as np
import pyarrow.parquet as pq

from abtest.engines import DuckDB, Spark, as_engine, open_spark
from abtest.logs import (EVENTS_COLUMNS, EXPOSURES_COLUMNS, IMPRESSIONS_COLUMNS, LOG_SCHEMAS, PINS_COLUMNS,
                         check_columns, scan)
from pinlift.core.clock import FRESH_DAYS, NEW_AD_DAYS
from pinlift.core.vocabulary import ACTIONS, ADS, CLICK, EVENTS, HIDE, IMPRESSION, REPIN, Vocabulary

EVENT_COLUMNS = ("value", "position")
PIN_FILTERS = ("any", "fresh", "new_ad", "organic", "ad")

PIN_FILTERS_NEEDING_PINS = ("fresh", "new_ad", "organic", "ad")
METRIC_NAME = r"^[a-z][a-z0-9_]{0,47}$"   # metric names: labels, and the covariates' column names


@dataclass(frozen=True)
class Aggregate:
    """Per user: count (column None) or sum of ``column`` over events with ``action`` on ``pins``."""

    action: str
    column: str | None = None
    pins: str = "any"

    def __post_init__(self):
        # closed vocabularies: enforce them here as well
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
    """One (metric, surface) pair: one test. Its per-user columns are x{i}, y{i} (ratio), c{i} (covariate)."""

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


RAW = "_parquet"      # the suffix of the raw Parquet tables the views read
_SCHEMAS = {**LOG_SCHEMAS, "pins": {"pin_id": "int64", "created_day": "int32", "is_ad": "boolean"}}
_IMPRESSIONS = {**{c: t for c, t in _SCHEMAS["events"].items() if c not in ("action", "value")},
                **dict.fromkeys(ACTIONS, "boolean")}


def raw_tables(src: Sources) -> dict[str, Path]:
    """The Parquet tables the views read, by name (``<view>_parquet``)."""
    paths = {"exposures": src.exposures, "events": src.events, "pins": src.pins, "impressions": src.impressions,
             "covariates": src.covariates}
    return {name + RAW: path for name, path in paths.items() if path is not None}


def _raw(name: str, path: Path) -> ibis.Table:
    """The Parquet table ``name`` with the Arrow schema of its (first) file."""
    path = Path(path)
    first = path if path.suffix == ".parquet" else min(path.rglob("*.parquet"))
    return ibis.table(ibis.Schema.from_pyarrow(pq.read_schema(first)), name=name)


def _typed(raw: ibis.Table, schema: dict[str, str]) -> ibis.Table:
    return raw.select(**{c: raw[c].cast(t) for c, t in schema.items()})


def views(src: Sources) -> dict[str, ibis.Table]:
    """The views metrics read, over ``raw_tables``: ``exposures``, ``events``, ``pins`` in their documented
    types, ``pre_events`` (the organic impressions logs in the events schema: one impression row per slot plus
    one row per action) and ``covariates``, each where its table is given."""
    raw = {name[:-len(RAW)]: _raw(name, path) for name, path in raw_tables(src).items()}
    out = {name: _typed(raw[name], schema) for name, schema in _SCHEMAS.items() if name in raw}
    if "impressions" in raw:
        imp = _typed(raw["impressions"], _IMPRESSIONS)
        slot = [c for c in _IMPRESSIONS if c not in ACTIONS]
        shown = imp.select(*slot, action=ibis.literal(IMPRESSION), value=ibis.null("float64"))
        acted = (imp.pivot_longer(list(ACTIONS), names_to="action", values_to="happened").filter(ibis._.happened)
                 .select(*slot, "action", value=ibis.null("float64")))
        out["pre_events"] = shown.union(acted)
    if "covariates" in raw:
        out["covariates"] = raw["covariates"].mutate(user_id=raw["covariates"].user_id.cast("int64"))
    return out


def _check_columns(src: Sources) -> None:
    """The columns the views read, in their kinds (``logs.check_columns``), before any view is created."""
    check_columns(src.exposures, "exposures", EXPOSURES_COLUMNS)
    check_columns(src.events, "events", EVENTS_COLUMNS)
    if src.pins is not None:
        check_columns(src.pins, "pins", PINS_COLUMNS)
    if src.impressions is not None:
        check_columns(src.impressions, "impressions", IMPRESSIONS_COLUMNS)
    if src.covariates is not None:
        check_columns(src.covariates, "covariates", {"user_id": "int"})


@contextmanager
def open_readonly(src: Sources) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-only DuckDB connection with the ``views`` (``exposures``, ``events``, and ``pins``, ``pre_events``,
    ``covariates`` where given), their columns checked first. The views live in a scratch database file,
    written once and reopened read-only, so no metric query can write anything."""
    with tempfile.TemporaryDirectory(prefix="abtest-duckdb-") as tmp:
        db = str(Path(tmp) / "views.duckdb")
        con = duckdb.connect(db)
        try:
            _check_columns(src)
            for name, path in raw_tables(src).items():
                con.execute(f"CREATE VIEW {name} AS SELECT * FROM {scan(path)}")
            for name, expr in views(src).items():
                con.execute(f"CREATE VIEW {name} AS {ibis.to_sql(expr, dialect='duckdb')}")
        finally:
            con.close()
        con = duckdb.connect(db, read_only=True, config={"threads": 2})
        try:
            yield con
        finally:
            con.close()


@contextmanager
def open_engine(engine: str, src: Sources, con=None) -> Iterator[DuckDB | Spark]:
    """The engine of the log checks and the metric queries, with the ``views``, their columns checked first:
    ``duckdb`` on ``con`` (an ``open_readonly(src)`` connection; without one, a new one), or ``spark``."""
    if engine == "duckdb" and con is not None:
        yield DuckDB(con)
    elif engine == "duckdb":
        with open_readonly(src) as own:
            yield DuckDB(own)
    else:
        _check_columns(src)
        with open_spark(raw_tables(src), views(src)) as spark:
            yield spark


# ---------------------------------------------------------------------------------------------
# The metric queries, as ibis expressions over the views


_COLUMN = {"value": lambda e: e.value, "position": lambda e: e.position.cast("float64")}
_PIN = {
    "any": lambda e: ibis.literal(True),
    "fresh": lambda e: (e.day - e.pin_created_day) < FRESH_DAYS,
    "new_ad": lambda e: e.pin_is_ad & ((e.day - e.pin_created_day) < NEW_AD_DAYS),
    "organic": lambda e: ~e.pin_is_ad,
    "ad": lambda e: e.pin_is_ad,
}


def _aggregate(e: ibis.Table, agg: Aggregate, surface: str):
    value = ibis.literal(1.0) if agg.column is None else _COLUMN[agg.column](e)
    return ibis.ifelse((e.surface == surface) & (e.action == agg.action) & _PIN[agg.pins](e), value, 0.0).sum()


def _cell_sums(e: ibis.Table, cells: list[Cell], covariate: bool) -> dict:
    """Per cell, the metric (x{i}, y{i}) or, with ``covariate``, the same metric over the pre-period (c, cy)."""
    num, den = ("c", "cy") if covariate else ("x", "y")
    out = {}
    for c in cells:
        out[f"{num}{c.index}"] = _aggregate(e, c.metric.numerator, c.surface)
        if c.metric.kind == "ratio":
            out[f"{den}{c.index}"] = _aggregate(e, c.metric.denominator, c.surface)
    return out or {"no_cells": e.count()}


def _with_pins(e: ibis.Table, pins: ibis.Table | None) -> ibis.Table:
    """``e`` with its pin's created_day and is_ad (null without a pins table)."""
    if pins is None:
        return e.mutate(pin_created_day=ibis.null("int32"), pin_is_ad=ibis.null("boolean"))
    joined = e.left_join(pins, e.pin_id == pins.pin_id)
    return joined.select(*e.columns, pin_created_day=pins.created_day, pin_is_ad=pins.is_ad)


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


def per_user_table(engine, cells: list[Cell], pre_window: tuple[int, int] | None, *, until: int | None = None,
                   distinct: bool = False, covariates: bool = False) -> ibis.Table:
    """One row per exposed user, by user_id: user_id, variant, first_exposure_day and the value columns.

    Events count from the user's first exposure day on and, with ``until``, before that day; ``distinct``
    reads each distinct event row once (``logs.check_logs`` found exact duplicates). The CUPED covariates
    c{i}: with ``pre_window`` [lo, hi), the same metrics over the organic logs of those days; with
    ``covariates``, the ``covariates`` view's column of each metric (0 for users without a row in either)."""
    if pre_window is not None and covariates:
        raise ValueError("abtest: covariates from the pre-period or from the covariates table, not both")
    x = ibis.table(_SCHEMAS["exposures"], name="exposures")
    events = ibis.table(_SCHEMAS["events"], name="events")
    pins = ibis.table(_SCHEMAS["pins"], name="pins") if "pins" in engine.tables else None
    events = events.distinct() if distinct else events
    on = (events.user_id == x.user_id) & (events.day >= x.first_exposure_day)
    if until is not None:
        on &= events.day < int(until)
    ev = _with_pins(events.join(x, on).select(*events.columns), pins)
    during = ev.group_by("user_id").aggregate(**_cell_sums(ev, cells, covariate=False))
    pre = None
    if pre_window is not None:
        pe = ibis.table(_SCHEMAS["events"], name="pre_events")
        pe = _with_pins(pe.filter((pe.day >= int(pre_window[0])) & (pe.day < int(pre_window[1]))), pins)
        pre = pe.group_by("user_id").aggregate(**_cell_sums(pe, cells, covariate=True))
    if covariates:
        for c in cells:
            if not re.fullmatch(METRIC_NAME, c.metric.name):     # validated by the config; it becomes an identifier
                raise ValueError(f"abtest: invalid metric name {c.metric.name!r}")
        cv = ibis.table({"user_id": "int64", **{c.metric.name: "float64" for c in cells}}, name="covariates")
        pre = cv.select("user_id", **{f"c{c.index}": cv[c.metric.name].cast("float64") for c in cells})
    u = x.left_join(during, x.user_id == during.user_id)
    if pre is not None:
        u = u.left_join(pre, x.user_id == pre.user_id)
    cols = value_columns(cells, covariate=pre is not None)
    side = {c: (pre if c[0] == "c" else during) for c in cols}
    return u.select(x.user_id, x.variant, x.first_exposure_day, **{
        c: ibis.literal(1.0) if covariates and c[:2] == "cy" else side[c][c].coalesce(0.0) for c in cols}
    ).order_by("user_id")


def per_user_values(con, cells: list[Cell], pre_window: tuple[int, int] | None, **scope) -> dict[str, np.ndarray]:
    """Per-user values as numpy arrays (user_id, variant, first_exposure_day, x*, y*, c*), by user_id; ``con``: an
    engine (``open_engine``) or an ``open_readonly`` connection; ``scope``: the keywords of ``per_user_table``."""
    engine = as_engine(con)
    out = engine.run(per_user_table(engine, cells, pre_window, **scope))
    return {k: (np.asarray(v.to_pylist()) if k == "variant" else
                v.to_numpy().astype(np.float64 if k[0] in "xyc" else np.int64))
            for k, v in zip(out.column_names, out.columns)}


def cross_sum_name(a: Cell, b: Cell) -> str:
    """Name of Σ x_a·x_b, the per-variant sum of the products of two cells' per-user values."""
    return f"sx{int(a.index)}x{int(b.index)}"


def sufficient_stats(con, cells: list[Cell], pre_window: tuple[int, int] | None,
                     pairs: Sequence[tuple[Cell, Cell]] = (), **scope) -> dict[str, dict[str, float]]:
    """Per variant: n and, per cell, Σx, Σx² (+ Σy, Σy², Σxy for ratios; + Σc, Σc², Σxc with covariates, and
    for ratios also the pre-period denominator d: Σd, Σd², Σcd, Σxd, Σyc, Σyd);
    per (a, b) in ``pairs``, Σ x_a·x_b (``cross_sum_name``), for statistics of two cells on the same users.

    One pass over the events whatever ``pairs`` holds: the cross sums are extra columns of the same
    aggregate, so paired statistics never re-run the per-user query. ``con``: as for ``per_user_values``;
    ``scope``: the keywords of ``per_user_table``."""
    engine = as_engine(con)
    u = per_user_table(engine, cells, pre_window, **scope)
    covariate = pre_window is not None or scope.get("covariates", False)
    known = set(cells)
    sums = {"n": u.count()}

    def add(name, a, b=None):
        sums[name] = (u[a] if b is None else u[a] * u[b]).sum()

    for c in cells:
        i = c.index
        add(f"sx{i}", f"x{i}"), add(f"sxx{i}", f"x{i}", f"x{i}")
        if c.metric.kind == "ratio":
            add(f"sy{i}", f"y{i}"), add(f"syy{i}", f"y{i}", f"y{i}"), add(f"sxy{i}", f"x{i}", f"y{i}")
        if covariate:
            add(f"sc{i}", f"c{i}"), add(f"scc{i}", f"c{i}", f"c{i}"), add(f"sxc{i}", f"x{i}", f"c{i}")
            if c.metric.kind == "ratio":
                add(f"sd{i}", f"cy{i}"), add(f"sdd{i}", f"cy{i}", f"cy{i}"), add(f"scd{i}", f"c{i}", f"cy{i}")
                add(f"sxd{i}", f"x{i}", f"cy{i}"), add(f"syc{i}", f"y{i}", f"c{i}"), add(f"syd{i}", f"y{i}", f"cy{i}")
    for a, b in dict.fromkeys((a, b) for a, b in pairs):
        if a not in known or b not in known:
            raise ValueError(f"abtest: pair ({a.key}, {b.key}) is not among the cells")
        add(cross_sum_name(a, b), f"x{int(a.index)}", f"x{int(b.index)}")
    rows = engine.run(u.group_by("variant").aggregate(**sums)).to_pylist()
    return {r["variant"]: {k: float(r[k]) for k in sums} for r in rows}
