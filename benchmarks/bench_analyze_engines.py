"""abtest's metric queries on DuckDB and on local Spark, side by side, and DuckDB's time against a bare DuckDB
scan of the same Parquet (how close the analysis comes to reading speed), on the synthetic experiment of
``bench_analyze`` (50M event rows by default, ``--events``; cached in ``--data``).

Per engine, best of ``--repeats`` runs (all kept): wall seconds of ``metrics.sufficient_stats`` over the
experiment's 17 cells (views and query; the SparkSession's start is timed apart) and events/s, and apart the log
checks that run before any statistic (``logs.check_logs``, on the same engine; their results must be equal). The bare scan
reads every events column once (``SELECT`` of a sum over each). Both engines must agree (counts exactly, sums
within 1e-9 relative) or the benchmark fails. Figures go to ``--out`` (JSON) with the machine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

from bench_analyze import ensure_data, max_relative_difference
from machine_info import machine, save


def _timed(fn, repeats: int) -> tuple[list[float], object]:
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return times, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=50_000_000, help="event rows to generate")
    ap.add_argument("--users", type=int, default=None, help="user population (default: events / 25)")
    ap.add_argument("--days", type=int, default=14)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default=None, help="cache directory of the experiment (default: under the system temp)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per engine; the fastest is reported")
    ap.add_argument("--spark-master", default="local[*]", help="the SparkSession's master (default local[*])")
    ap.add_argument("--out", default="benchmarks/results/analyze_engines.json")
    args = ap.parse_args(argv)

    import duckdb
    from pyspark.sql import SparkSession

    from abtest.config import VARIANTS, load_config
    from abtest.logs import check_logs, scan
    from abtest.metrics import Sources, cells_of, open_engine, open_readonly, sufficient_stats

    users = args.users or max(args.events // 25, 1000)     # bench_analyze's defaults and cache: the same data
    name = f"pinlift_bench_analyze_{args.events}_{users}_{args.days}_{args.seed}"
    root = Path(args.data or Path(tempfile.gettempdir()) / name).resolve()
    data = ensure_data(root, args.events, users, args.days, args.seed)
    cfg = load_config(root / "exp.yaml", workdir=str(root))
    src = Sources.for_experiment(root, cfg.experiment_dir)
    cells = cells_of(cfg.metric_list())

    bare = duckdb.connect()
    columns = ("day", "user_id", "request_id", "pin_id", "position", "value")
    scan_sql = (f"SELECT COUNT(*), {', '.join(f'SUM({c})' for c in columns)}, COUNT(DISTINCT surface), "
                f"COUNT(DISTINCT action) FROM {scan(src.events)}")
    scan_times, scanned = _timed(lambda: bare.execute(scan_sql).fetchone(), args.repeats)
    rows = int(scanned[0])
    bare.close()

    def checks(engine):
        return check_logs(engine, src.exposures, src.events, experiment=cfg.name, variants=VARIANTS,
                          surfaces=cfg.vocabulary.names, start=cfg.days.start, end=cfg.days.end)

    with open_readonly(src) as con:
        duck_times, duck = _timed(lambda: sufficient_stats(con, cells, None), args.repeats)
        duck_check_times, duck_checked = _timed(lambda: checks(con), args.repeats)
    t = time.perf_counter()
    session = (SparkSession.builder.master(args.spark_master).appName("bench_analyze_engines")
               .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false").getOrCreate())
    spark_start = time.perf_counter() - t

    def on_spark():
        with open_engine("spark", src) as engine:
            return sufficient_stats(engine, cells, None)

    def checks_on_spark():
        with open_engine("spark", src) as engine:
            return checks(engine)

    spark_times, spark = _timed(on_spark, args.repeats)
    spark_check_times, spark_checked = _timed(checks_on_spark, args.repeats)
    session.stop()
    if any(duck[v]["n"] != spark[v]["n"] for v in duck) or max_relative_difference(duck, spark) > 1e-9:
        raise SystemExit("bench_analyze_engines: DuckDB and Spark disagree")
    if duck_checked != spark_checked:
        raise SystemExit(f"bench_analyze_engines: the log checks disagree: {duck_checked} against {spark_checked}")

    def figures(times):
        return {"seconds": min(times), "all_seconds": times, "events_per_s": rows / min(times)}

    result = {
        "benchmark": "abtest metric queries on DuckDB and Spark (issue 31)", "machine": machine(),
        "versions": {p: version(p) for p in ("duckdb", "ibis-framework", "pyspark")},
        "data": data, "events": rows, "cells": len(cells),
        "bare_duckdb_scan": figures(scan_times),
        "duckdb": figures(duck_times),
        "spark": {**figures(spark_times), "master": args.spark_master, "session_start_seconds": spark_start},
        "max_relative_difference": max_relative_difference(duck, spark),
        "log_checks": {"duckdb": figures(duck_check_times), "spark": figures(spark_check_times),
                       "excluded": vars(duck_checked.excluded)},
    }
    result["duckdb_over_bare_scan"] = result["duckdb"]["seconds"] / result["bare_duckdb_scan"]["seconds"]
    result["spark_over_duckdb"] = result["spark"]["seconds"] / result["duckdb"]["seconds"]
    save(result, args.out)
    print(f"{rows:,} events: bare scan {min(scan_times):.2f} s, DuckDB {min(duck_times):.2f} s "
          f"({result['duckdb_over_bare_scan']:.2f}x the scan), Spark {min(spark_times):.2f} s "
          f"({result['spark_over_duckdb']:.2f}x DuckDB); log checks: DuckDB {min(duck_check_times):.2f} s, "
          f"Spark {min(spark_check_times):.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
