"""The metric queries on DuckDB and on Spark (local mode) give the same sufficient statistics and the same
analysis of the tiny experiment. Spark must start: this test fails, never skips, where it cannot."""

from __future__ import annotations

import json

import pytest

from abtest.analyze import analyze, lift_pairs, pre_window
from abtest.cli import main
from abtest.config import load_config
from abtest.metrics import Sources, builtin_metrics, cells_of, open_engine, open_readonly, sufficient_stats
from abtest.simulate import simulate
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
