"""The log checks and the metric queries on DuckDB and on Spark (local mode) give the same errors, exclusion
counts and sufficient statistics, and the same analysis of the tiny experiment. Spark must start: these tests
fail, never skip, where it cannot."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from abtest.analyze import analyze, lift_pairs, pre_window
from abtest.cli import main
from abtest.config import load_config
from abtest.logs import CheckedLogs, Exclusions, check_covariates, check_logs
from abtest.metrics import Sources, builtin_metrics, cells_of, open_engine, open_readonly, sufficient_stats
from abtest.simulate import simulate
from pinlift.core.errors import InputError
from pinlift.core.vocabulary import PINWORLD


@pytest.fixture(scope="session")
def spark():
    """A local SparkSession (one core, few shuffle partitions, no UI); stopped with its JVM afterwards."""
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    session = (SparkSession.builder.master("local[1]").appName("abtest-tests")
               .config("spark.sql.shuffle.partitions", "2").config("spark.default.parallelism", "1")
               .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false").getOrCreate())
    yield session
    session.stop()
    gateway = SparkContext._gateway
    gateway.shutdown()
    gateway.proc.kill()
    gateway.proc.wait()
    SparkContext._gateway = SparkContext._jvm = None


@pytest.fixture(scope="module")
def tiny_experiment(tiny_workdir, tmp_path_factory):
    """A logging-policy experiment on the tiny world with every built-in metric, a lift and a pre-period."""
    path = tmp_path_factory.mktemp("engines") / "exp.yaml"
    path.write_text(f"name: engines\nworkdir: {tiny_workdir}\nsalt: engines\ndays: {{start: 30, count: 2}}\n"
                    "pre_period_days: 7\narms:\n  control: {ranker: logging_policy}\n"
                    "  treatment: {ranker: logging_policy, lift: {repin: 0.5}}\n"
                    f"metrics: [{', '.join(builtin_metrics(PINWORLD))}]\n")
    cfg = load_config(path)
    simulate(cfg, progress=False)
    return path, cfg


def _same_sums(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and all(a[v].keys() == b[v].keys() for v in a)
    for v in a:
        assert a[v]["n"] == b[v]["n"]
        for k, x in a[v].items():
            assert x == pytest.approx(b[v][k], rel=1e-9, abs=0), (v, k)


def test_sufficient_statistics_equal_on_duckdb_and_spark(tiny_experiment, spark):
    _, cfg = tiny_experiment
    src = Sources.for_experiment(cfg.workdir, cfg.experiment_dir)
    cells = cells_of(cfg.metric_list())
    pairs = lift_pairs(cells, cfg.surfaces)
    sums = {}
    with open_readonly(src) as con:
        for engine in ("duckdb", "spark"):
            with open_engine(engine, src, con) as e:
                window = pre_window(cfg, src, e)
                assert window == (23, 30)
                sums[engine] = sufficient_stats(e, cells, window, pairs, until=cfg.days.end, distinct=True)
    assert sums["duckdb"]["treatment"]["n"] > 0
    assert any(v > 0 for k, v in sums["duckdb"]["control"].items() if k.startswith("sc"))    # the pre-period
    _same_sums(sums["duckdb"], sums["spark"])


def test_analysis_equal_on_duckdb_and_spark(tiny_experiment, spark, capsys):
    path, cfg = tiny_experiment
    duck = analyze(cfg, write=False)
    assert main(["analyze", str(path), "--engine", "spark", "--quiet"]) == 0
    assert "abtest analyze: engines:" in capsys.readouterr().out
    on_spark = json.loads((cfg.experiment_dir / "analysis.json").read_text())
    for r in (duck, on_spark):
        r.pop("created")
    assert on_spark.pop("config").endswith("engine: spark\n") and duck.pop("config").endswith("engine: duckdb\n")
    assert duck["users"] == on_spark["users"] and duck["events"] == on_spark["events"]
    assert duck["verdict"]["sentence"] == on_spark["verdict"]["sentence"]
    assert _close(duck, on_spark)


def _close(a, b) -> bool:
    """Equal JSON-like values, numbers within 1e-9 relative."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        return all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        assert len(a) == len(b)
        return all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12)
        return True
    assert a == b
    return True


def _team_logs() -> tuple[list[dict], list[dict]]:
    """Exposures of users 0–5 (user 1 first exposed on day 11) and, per user and day of the window [10, 12)
    from that exposure on, a search and a shop request with an impression and a click each; then the rows the
    checks exclude: 2 exact duplicates, 3 after the window, 4 before a first exposure (2 on negative days) and
    2 of a user without an exposure."""
    exposures = [{"experiment": "exp", "user_id": u, "variant": ("control", "treatment")[u % 2],
                  "first_exposure_day": 11 if u == 1 else 10} for u in range(6)]
    events = []
    for u in range(6):
        for day in (10, 11) if u != 1 else (11,):
            for surface, action, value in (("search", "impression", None), ("search", "click", None),
                                           ("shop", "impression", None), ("shop", "click", 30.0)):
                events.append({"day": day, "user_id": u, "surface": surface, "request_id": 100 * u + day,
                               "pin_id": 7, "position": 0 if surface == "search" else 1, "action": action,
                               "value": value})
    extra = [{**events[0], "day": 12, "request_id": 900}, {**events[1], "day": 12, "request_id": 900},
             {**events[4], "day": 13, "request_id": 901},
             *({**events[8], "user_id": 1, "day": d, "request_id": 902 + i} for i, d in enumerate((10, 10, -1, -2))),
             {**events[2], "user_id": 99, "request_id": 910}, {**events[3], "user_id": 99, "request_id": 910}]
    return exposures, events + extra + events[5:7]


def _write(path, rows: list[dict]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path / "part-0.parquet")


def _checked(src: Sources, engine: str):
    """``check_logs`` (and ``check_covariates`` where ``src`` has covariates) on ``engine``, or the error."""
    try:
        with open_engine(engine, src) as e:
            logs = check_logs(e, src.exposures, src.events, experiment="exp", variants=("control", "treatment"),
                              surfaces=("search", "shop"), start=10, end=12)
            return logs if src.covariates is None else (logs, check_covariates(e, src.covariates, ["clicks"]))
    except InputError as exc:
        return str(exc)


def _edit(rows: list[dict], i: int, **values) -> list[dict]:
    return [{**r, **values} if j == i else r for j, r in enumerate(rows)]


EXPOSURES, EVENTS = _team_logs()
CLICK = next(e for e in EVENTS if e["action"] == "click" and e["surface"] == "shop")


@pytest.mark.parametrize("exposures, events, found", [
    (EXPOSURES, EVENTS, CheckedLogs({"control": 3, "treatment": 3}, len(EVENTS), len(EVENTS) - 11,
                                    Exclusions(duplicate_rows=2, after_window=3, before_exposure=4,
                                               without_exposure=2))),
    (EXPOSURES, EVENTS + [{**CLICK, "value": 45.0}],
     "key (request_id, position, action): expected one row per key (or exact duplicates), found different rows "
     f"for ({CLICK['request_id']}, 1, 'click'), differing in value"),
    (EXPOSURES, _edit(_edit(_edit(EVENTS, 1, action="Click"), 5, action="Click"), 9, action="CLICK"),
     "column 'action': expected one of impression, repin, click, hide, found 'Click' (2 rows), 'CLICK' (1 row)"),
    (EXPOSURES, _edit(EVENTS, 3, user_id=None), "column 'user_id': expected no nulls, found 1 null row"),
    (EXPOSURES + [EXPOSURES[3]], EVENTS, "column 'user_id': expected one row per user, found user 3 2 times"),
    (_edit(EXPOSURES, 2, first_exposure_day=9), EVENTS,
     "column 'first_exposure_day': expected days 10–11 (exp.yaml `days:`), found 1 user first exposed on days "
     "9–9 (e.g. user 2)"),
], ids=["exclusions", "conflicting-duplicate", "unknown-actions", "null", "user-twice", "early-exposure"])
def test_log_checks_equal_on_duckdb_and_spark(tmp_path, spark, exposures, events, found):
    _write(tmp_path / "exposures", exposures)
    _write(tmp_path / "events", events)
    src = Sources(tmp_path / "exposures", tmp_path / "events")
    on_duckdb, on_spark = _checked(src, "duckdb"), _checked(src, "spark")
    assert on_duckdb == on_spark
    if isinstance(found, str):
        assert on_duckdb.endswith(found), on_duckdb
    else:
        assert on_duckdb == found


def test_covariate_checks_equal_on_duckdb_and_spark(tmp_path, spark):
    _write(tmp_path / "exposures", EXPOSURES)
    _write(tmp_path / "events", EVENTS)
    rows = [{"user_id": u, "clicks": float(u)} for u in (0, 2, 3, 99)]
    _write(tmp_path / "covariates", rows)
    src = Sources(tmp_path / "exposures", tmp_path / "events", covariates=tmp_path / "covariates")
    on_duckdb = _checked(src, "duckdb")
    assert on_duckdb == _checked(src, "spark") and on_duckdb[1] == 3      # users 0, 2 and 3
    _write(tmp_path / "covariates", rows + [{"user_id": 2, "clicks": 1.0}])
    on_duckdb = _checked(src, "duckdb")
    assert on_duckdb == _checked(src, "spark")
    assert on_duckdb.endswith("covariates: column 'user_id': expected one row per user, found user 2 2 times")
