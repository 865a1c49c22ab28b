"""A/B analysis throughput: pinlift's DuckDB path against straightforward polars and pandas code
computing the same metrics, on a synthetic experiment of >= 50M event rows (``--events``).

The experiment is written once (cached in ``--data``; its generation time is reported apart) in the
documented ``exposures/`` and ``events/day=D/part-<variant>.parquet`` schemas, plus the
``world/pins.parquet`` columns the analysis reads (pin_id, created_day, is_ad): 2M users for 50M rows
(``--users``), 2 variants, 3 surfaces, 14 days, slates of 10/8/3 impressions with repin/click/hide
rows, ad clicks with a second-price ``value``, fresh pins and new ads in proportions like pinworld's.

Metrics: repins, fresh repins, clicks, new-ad clicks and hides per user (mean metrics), CTR and CPC
(ratios), on their surfaces: 17 cells. Each implementation runs in its own child process, which
returns per-variant sufficient statistics (n, Σx, Σx², and Σy, Σy², Σxy for ratios):

* ``pinlift_stats``: ``abtest.metrics.open_readonly`` + ``sufficient_stats`` (the SQL that
  ``abtest analyze`` runs) — the same work as the two below;
* ``abtest_analyze``: the whole ``abtest analyze exp.yaml`` command (statistics, lift differences,
  reports); only its means and ratio sums can be checked;
* ``polars``: lazy scan, joins, group by (user, surface, action), per-user cells, per-variant sums;
* ``pandas``: ``read_parquet`` (pyarrow), merges, groupby + unstack, per-variant sums.

All must agree (max relative difference <= 1e-9) or the benchmark fails. Per implementation, best
of ``--repeats`` runs (interleaved; all times are kept): wall seconds of the work in the child
(library import included), events/s, and peak RSS (the largest over the runs): the child's
own ``VmHWM``. Not ``ru_maxrss``: on Linux a child's ``ru_maxrss`` (getrusage, wait4) starts at the
high-water mark of the address space it was spawned from, here this process after generating the
data. A child whose RSS passes ``--max-rss-gib`` (polled) is killed and recorded as not finished,
with the reason. Ratios are other / pinlift_stats (> 1: pinlift is faster / leaner).
No target is set in issue 6 beyond measuring these side by side; the load average is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import psutil
from tqdm import tqdm

from machine_info import machine, save
from pinlift.core.clock import FRESH_DAYS, NEW_AD_DAYS

MIB = 1024 ** 2
SURFACES = ("homefeed", "related", "ads")
VARIANTS = ("control", "treatment")
# metric: (numerator, denominator or None, surfaces); an aggregate is (action, field) with field
# n (count), fresh (count on pins younger than FRESH_DAYS), new_ad (count on ads younger than
# NEW_AD_DAYS) or value (Σ value). The same names go into exp.yaml, so these are abtest's built-ins.
METRICS = {
    "repins": (("repin", "n"), None, SURFACES),
    "fresh_repins": (("repin", "fresh"), None, SURFACES),
    "clicks": (("click", "n"), None, SURFACES),
    "new_ad_clicks": (("click", "new_ad"), None, ("ads",)),
    "hides": (("hide", "n"), None, SURFACES),
    "ctr": (("click", "n"), ("impression", "n"), SURFACES),
    "cpc": (("click", "value"), ("click", "n"), ("ads",)),
}
CELLS = [(f"{m}/{s}", num, den, s) for m, (num, den, surfaces) in METRICS.items() for s in surfaces]
IMPLS = ("pinlift_stats", "abtest_analyze", "polars", "pandas")
TOLERANCE = 1e-9

# the synthetic traffic (rates close to a simulated pinworld experiment)
START_DAY = 60
SLATE = {"homefeed": 10, "related": 8, "ads": 3}
REQUESTS = {"homefeed": 1.2, "related": 0.5, "ads": 0.6}            # Poisson, per active user-day
P_ACTION = {"homefeed": (0.10, 0.075, 0.008), "related": (0.10, 0.075, 0.015), "ads": (0.06, 0.10, 0.03)}
RECENT_SHARE = {"homefeed": 0.30, "related": 0.16, "ads": 0.35}     # impressions of fresh pins / new ads
FRESH_REPIN_LIFT = 0.10                                               # treatment, on fresh pins


# ---------------------------------------------------------------------------------------------
# the synthetic experiment


def rows_per_active_day() -> float:
    """Expected event rows of one active user-day: impressions plus repin, click and hide rows."""
    return sum(REQUESTS[s] * SLATE[s] * (1 + (1 - h) * (r + c) + h) for s, (r, c, h) in P_ACTION.items())


class PinCatalog:
    """Organic pins then ads, each sorted by creation day, so the pins live on a day are a prefix."""

    def __init__(self, rng, n_organic: int, n_ads: int, last_day: int):
        self.created = np.concatenate([np.sort(rng.integers(-730, last_day, n_organic)),
                                       np.sort(rng.integers(-180, last_day, n_ads))]).astype(np.int32)
        self.is_ad = np.arange(n_organic + n_ads) >= n_organic
        self.ranges = {False: (0, n_organic), True: (n_organic, n_organic + n_ads)}

    def draw(self, rng, ads: bool, day: int, recent_days: int, recent: np.ndarray) -> np.ndarray:
        """Pin ids live on ``day``: created within ``recent_days`` where ``recent``, older elsewhere."""
        lo, hi = self.ranges[ads]
        cut, end = np.searchsorted(self.created[lo:hi], [day - recent_days + 1, day + 1]) + lo
        u = rng.random(len(recent))
        return np.where(recent, cut + u * (end - cut), lo + u * (cut - lo)).astype(np.int64)


def generate(root: Path, events: int, users: int, days: int, seed: int) -> dict:
    """Write the experiment under ``root`` (world/pins.parquet, experiments/bench/, exp.yaml)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from abtest.assign import assign
    from abtest.simulate import EVENTS_SCHEMA, EXPOSURES_SCHEMA
    from pinlift.core.vocabulary import PINWORLD, write_vocabulary

    rng = np.random.default_rng(seed)
    pins = PinCatalog(rng, users // 2, max(users // 40, 100), START_DAY + days)
    (root / "world").mkdir()
    write_vocabulary(root, PINWORLD)
    pq.write_table(pa.table({"pin_id": np.arange(len(pins.created), dtype=np.int64), "created_day": pins.created,
                             "is_ad": pins.is_ad}), root / "world" / "pins.parquet")
    variant = assign("bench_analyze", np.arange(users), (0.5, 0.5))
    taste = rng.gamma(2.0, 0.5, users)                     # per-user engagement propensity, mean 1
    activity = rng.gamma(0.8, 1.25, users)                 # mean 1; scaled to the target row count
    p_active = np.minimum(activity * events * 1.01 / (users * days * rows_per_active_day()), 1.0)
    first_day = np.full(users, -1, np.int32)
    request, exp = 0, root / "experiments" / "bench"
    for day in tqdm(range(START_DAY, START_DAY + days), desc="generate", unit="day"):
        active = np.flatnonzero(rng.random(users) < p_active)
        tables = []
        for s in SURFACES:
            req_user = np.repeat(active, rng.poisson(REQUESTS[s], len(active)))
            k = SLATE[s]
            user, req = np.repeat(req_user, k), np.repeat(request + np.arange(len(req_user)), k)
            request += len(req_user)
            first_day[req_user[first_day[req_user] < 0]] = day
            ads = s == "ads"
            pin = pins.draw(rng, ads, day, NEW_AD_DAYS if ads else FRESH_DAYS, rng.random(len(user)) < RECENT_SHARE[s])
            fresh = day - pins.created[pin] < FRESH_DAYS
            p_repin, p_click, p_hide = (p * taste[user] for p in P_ACTION[s])
            hide = rng.random(len(user)) < p_hide
            repin = ~hide & (rng.random(len(user)) < p_repin * np.where(fresh & (variant[user] == 1),
                                                                         1 + FRESH_REPIN_LIFT, 1.0))
            click = ~hide & (rng.random(len(user)) < p_click)
            rows = [np.arange(len(user))] + [np.flatnonzero(m) for m in (repin, click, hide)]
            idx = np.concatenate(rows)
            action = np.repeat(np.arange(4, dtype=np.int8), [len(r) for r in rows])
            value = np.full(len(idx), np.nan)
            if ads:
                is_click = action == 2
                value[is_click] = rng.lognormal(np.log(80.0), 0.4, int(is_click.sum()))
            tables.append(pa.table({
                "day": np.full(len(idx), day, np.int32), "user_id": user[idx].astype(np.int64),
                "surface": pa.DictionaryArray.from_arrays(np.zeros(len(idx), np.int8), [s]).dictionary_decode(),
                "request_id": req[idx], "pin_id": pin[idx],
                "position": np.tile(np.arange(k, dtype=np.int16), len(req_user))[idx],
                "action": pa.DictionaryArray.from_arrays(action, ["impression", "repin", "click", "hide"])
                .dictionary_decode(),
                "value": pa.array(value, mask=np.isnan(value))}, schema=EVENTS_SCHEMA))
        table = pa.concat_tables(tables)
        row_variant = variant[table["user_id"].to_numpy()]
        (exp / "events" / f"day={day}").mkdir(parents=True)
        for v, name in enumerate(VARIANTS):
            pq.write_table(table.filter(row_variant == v), exp / "events" / f"day={day}" / f"part-{name}.parquet")
    exposed = np.flatnonzero(first_day >= 0)
    (exp / "exposures").mkdir()
    pq.write_table(pa.table({"experiment": ["bench"] * len(exposed), "user_id": exposed.astype(np.int64),
                             "variant": np.asarray(VARIANTS)[variant[exposed]].tolist(),
                             "first_exposure_day": first_day[exposed]}, schema=EXPOSURES_SCHEMA),
                   exp / "exposures" / "part-0.parquet")
    (root / "exp.yaml").write_text(
        "name: bench\nworkdir: .\nsalt: bench_analyze\n"
        "arms: {control: {ranker: logging_policy}, treatment: {ranker: logging_policy}}\n"
        f"days: {{start: {START_DAY}, count: {days}}}\npre_period_days: 0\nmetrics: [{', '.join(METRICS)}]\n")
    rows = sum(pq.ParquetFile(p).metadata.num_rows for p in (exp / "events").rglob("*.parquet"))
    return {"events": rows, "users": users, "exposed_users": len(exposed), "pins": len(pins.created), "days": days}


def ensure_data(root: Path, events: int, users: int, days: int, seed: int) -> dict:
    """The cached experiment in ``root``, generated (atomically) when absent; its description."""
    from abtest.storage import atomic_dir

    params = {"events_target": events, "users": users, "days": days, "seed": seed}
    marker = root / "generated.json"
    if marker.is_file():
        meta = json.loads(marker.read_text())
        if meta["params"] != params:
            raise SystemExit(f"bench_analyze: {root}: expected data for {params}, found {meta['params']}; "
                             "pass another --data")
        return {**meta, "cached": True}
    if root.exists() and any(root.iterdir()):
        raise SystemExit(f"bench_analyze: {root}: expected an empty or absent --data directory, found other files")
    t = time.perf_counter()
    with atomic_dir(root) as tmp:
        meta = {"params": params, **generate(tmp, events, users, days, seed)}
        meta["seconds"] = time.perf_counter() - t
        meta["disk_mib"] = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file()) / MIB
        (tmp / "generated.json").write_text(json.dumps(meta, indent=2))
    return {**meta, "cached": False}


# ---------------------------------------------------------------------------------------------
# the implementations (each runs in a child; returns {variant: {"n" | "<cell>|s..": value}})


def pinlift_stats(root: Path) -> dict:
    from abtest.config import load_config
    from abtest.metrics import Sources, cells_of, open_readonly, sufficient_stats

    cfg = load_config(root / "exp.yaml", workdir=str(root))
    cells = cells_of(cfg.metric_list())
    with open_readonly(Sources.for_experiment(root, cfg.experiment_dir)) as con:
        sums = sufficient_stats(con, cells, None)
    names = ("sx", "sxx", "sy", "syy", "sxy")
    return {v: {"n": s["n"], **{f"{c.key}|{k}": s[f"{k}{c.index}"] for c in cells for k in names
                               if f"{k}{c.index}" in s}} for v, s in sums.items()}


def abtest_analyze(root: Path) -> dict:
    from abtest.cli import main

    exp = root / "experiments" / "bench"
    if main(["analyze", str(root / "exp.yaml"), "--workdir", str(root)]) != 0:
        raise RuntimeError("abtest analyze failed")
    analysis = json.loads((exp / "analysis.json").read_text())
    out = {v: {"n": float(analysis["users"][v])} for v in VARIANTS}
    for r in analysis["results"]:
        for v in VARIANTS:
            if r["kind"] == "ratio":
                out[v][f"{r['key']}|sx"], out[v][f"{r['key']}|sy"] = r["numerator_sum"][v], r["denominator_sum"][v]
            else:
                out[v][f"{r['key']}|sx"] = r[f"{v}_mean"] * r["n"][v]
    return out


def polars_stats(root: Path) -> dict:
    import polars as pl

    exp = root / "experiments" / "bench"
    exposures = pl.scan_parquet(exp / "exposures" / "**" / "*.parquet", hive_partitioning=False)
    per_action = (
        pl.scan_parquet(exp / "events" / "**" / "*.parquet", hive_partitioning=False)
        .join(exposures.select("user_id", "first_exposure_day"), on="user_id")
        .filter(pl.col("day") >= pl.col("first_exposure_day"))
        .join(pl.scan_parquet(root / "world" / "pins.parquet"), on="pin_id", how="left")
        .with_columns(age=pl.col("day") - pl.col("created_day"))
        .group_by("user_id", "surface", "action")
        .agg(n=pl.len(), fresh=(pl.col("age") < FRESH_DAYS).sum(),
             new_ad=(pl.col("is_ad") & (pl.col("age") < NEW_AD_DAYS)).sum(), value=pl.col("value").sum()))

    def cell(agg, surface):
        action, field = agg
        return pl.col(field).filter((pl.col("surface") == surface) & (pl.col("action") == action)).sum()

    per_user = per_action.group_by("user_id").agg(
        [cell(num, s).cast(pl.Float64).alias(f"x:{key}") for key, num, _, s in CELLS]
        + [cell(den, s).cast(pl.Float64).alias(f"y:{key}") for key, _, den, s in CELLS if den])
    sums = [pl.len().cast(pl.Float64).alias("n")]
    for key, _, den, _ in CELLS:
        x, y = pl.col(f"x:{key}"), pl.col(f"y:{key}")
        sums += [x.sum().alias(f"{key}|sx"), (x * x).sum().alias(f"{key}|sxx")]
        if den:
            sums += [y.sum().alias(f"{key}|sy"), (y * y).sum().alias(f"{key}|syy"), (x * y).sum().alias(f"{key}|sxy")]
    out = (exposures.select("user_id", "variant").join(per_user, on="user_id", how="left").fill_null(0.0)
           .group_by("variant").agg(sums).collect(engine="streaming"))
    return {r.pop("variant"): r for r in out.to_dicts()}


def pandas_stats(root: Path) -> dict:
    import pandas as pd

    exp = root / "experiments" / "bench"
    exposures = pd.read_parquet(exp / "exposures", partitioning=None)
    events = pd.read_parquet(exp / "events", columns=["day", "user_id", "surface", "pin_id", "action", "value"],
                             partitioning=None)
    events = events.merge(exposures[["user_id", "first_exposure_day"]], on="user_id")
    events = events[events["day"] >= events["first_exposure_day"]]
    events = events.merge(pd.read_parquet(root / "world" / "pins.parquet"), on="pin_id", how="left")
    age = events["day"] - events["created_day"]
    events["fresh"] = age < FRESH_DAYS
    events["new_ad"] = events["is_ad"] & (age < NEW_AD_DAYS)
    wide = (events.groupby(["user_id", "surface", "action"])
            .agg(n=("day", "size"), fresh=("fresh", "sum"), new_ad=("new_ad", "sum"), value=("value", "sum"))
            .unstack(["surface", "action"], fill_value=0))
    del events, age

    def cell(agg, surface):
        action, field = agg
        return wide[(field, surface, action)].astype(float)

    per_user = pd.DataFrame({f"x:{key}": cell(num, s) for key, num, _, s in CELLS}
                            | {f"y:{key}": cell(den, s) for key, _, den, s in CELLS if den})
    users = exposures.set_index("user_id")[["variant"]].join(per_user).fillna(0.0)
    cols = {"n": pd.Series(1.0, index=users.index)}
    for key, _, den, _ in CELLS:
        x, y = users[f"x:{key}"], users.get(f"y:{key}")
        cols |= {f"{key}|sx": x, f"{key}|sxx": x * x}
        if den:
            cols |= {f"{key}|sy": y, f"{key}|syy": y * y, f"{key}|sxy": x * y}
    return pd.DataFrame(cols).groupby(users["variant"]).sum().to_dict("index")


IMPL_FUNCTIONS = {"pinlift_stats": pinlift_stats, "abtest_analyze": abtest_analyze, "polars": polars_stats,
                  "pandas": pandas_stats}


def child(impl: str, root: Path, result: Path) -> int:
    t = time.perf_counter()
    sums = IMPL_FUNCTIONS[impl](root)
    seconds = time.perf_counter() - t
    status = Path("/proc/self/status").read_text()
    peak_kib = int(status.split("VmHWM:")[1].split()[0])
    result.write_text(json.dumps({"seconds": seconds, "peak_rss_mib": peak_kib / 1024,
                                  "sums": {v: {k: float(x) for k, x in s.items()} for v, s in sums.items()}}))
    return 0


# ---------------------------------------------------------------------------------------------
# the parent: children, agreement, report


def run_child(impl: str, root: Path, max_rss: int) -> dict:
    """Run one implementation in a child: its result, or why it did not finish (RSS polled meanwhile)."""
    with tempfile.TemporaryDirectory() as tmp:
        result, err_path = Path(tmp) / "result.json", Path(tmp) / "stderr"
        with open(err_path, "w") as err:
            proc = subprocess.Popen([sys.executable, __file__, "--child", impl, "--data", str(root),
                                     "--result", str(result)], stdout=subprocess.DEVNULL, stderr=err)
        polled, killed = 0, None
        while proc.poll() is None:
            try:
                polled = max(polled, psutil.Process(proc.pid).memory_info().rss)
            except psutil.Error:
                pass
            if polled > max_rss and killed is None:
                killed = f"killed when its RSS passed --max-rss-gib ({polled / MIB:,.0f} MiB)"
                proc.kill()
            time.sleep(0.2)
        if proc.returncode != 0 or not result.is_file():
            tail = err_path.read_text().strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
            return {"finished": False, "reason": killed or tail[0], "peak_rss_mib": polled / MIB}
        return {"finished": True, **json.loads(result.read_text())}


def max_relative_difference(a: dict, b: dict) -> float:
    """Largest |x − y| / max(|x|, |y|) over the statistics both have (0 when both are 0)."""
    worst = 0.0
    for v in VARIANTS:
        for k in a[v].keys() & b[v].keys():
            x, y = a[v][k], b[v][k]
            if x != y:
                worst = max(worst, abs(x - y) / max(abs(x), abs(y)))
    return worst


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=50_000_000, help="event rows to generate (1%% headroom)")
    ap.add_argument("--users", type=int, default=None,
                    help="user population (default: events / 25; about half are exposed)")
    ap.add_argument("--days", type=int, default=14)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default=None, help="cache directory of the experiment (default: under the system temp)")
    ap.add_argument("--impls", nargs="+", choices=IMPLS, default=list(IMPLS))
    ap.add_argument("--repeats", type=int, default=3, help="runs of each implementation; the fastest is reported")
    ap.add_argument("--max-rss-gib", type=float, default=18.0, help="kill a child whose RSS passes this")
    ap.add_argument("--out", default="benchmarks/results/analyze.json")
    ap.add_argument("--child", choices=IMPLS, help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args.child, Path(args.data), Path(args.result))

    users = args.users or max(args.events // 25, 1000)
    name = f"pinlift_bench_analyze_{args.events}_{users}_{args.days}_{args.seed}"
    root = Path(args.data or Path(tempfile.gettempdir()) / name).resolve()
    data = ensure_data(root, args.events, users, args.days, args.seed)
    print(f"data: {root}: {data['events']:,} events, {data['exposed_users']:,} exposed of {users:,} users, "
          f"{data['disk_mib']:,.0f} MiB; generated in {data['seconds']:.1f} s{' (cached)' if data['cached'] else ''}")
    out = {"benchmark": "analyze", "machine": machine(), "data": {**data, "path": str(root)},
           "versions": {p: version(p) for p in ("duckdb", "polars", "pandas", "pyarrow")},
           "cells": [key for key, *_ in CELLS], "tolerance": TOLERANCE, "runs": {}}
    # rounds interleave the implementations, so a burst of load on the shared machine hits them alike
    runs = {impl: [] for impl in args.impls}
    for impl in tqdm([i for _ in range(args.repeats) for i in args.impls], desc="analyze", unit="run"):
        if not runs[impl] or runs[impl][-1]["finished"]:
            runs[impl].append(run_child(impl, root, int(args.max_rss_gib * 1024 ** 3)))
    for impl, tries in runs.items():
        if not tries[-1]["finished"]:
            out["runs"][impl] = tries[-1]
            continue
        best = min(tries, key=lambda r: r["seconds"])
        out["runs"][impl] = {**best, "all_seconds": [r["seconds"] for r in tries],
                             "peak_rss_mib": max(r["peak_rss_mib"] for r in tries),
                             "events_per_s": data["events"] / best["seconds"]}
    out["load_average_after"] = list(os.getloadavg())

    finished = {k: r for k, r in out["runs"].items() if r["finished"]}
    reference = next((k for k in finished if k != "abtest_analyze"), None)   # one with every statistic
    if reference is None:
        raise SystemExit(f"bench_analyze: no implementation computing every statistic finished: {out['runs']}")
    out["reference"] = reference
    print(f"{'implementation':<16} {'seconds':>9} {'events/s':>12} {'peak MiB':>9} {'max rel diff':>13}")
    for impl, run in out["runs"].items():
        if not run["finished"]:
            print(f"{impl:<16} did not finish: {run['reason']} (peak {run['peak_rss_mib']:,.0f} MiB)")
            continue
        full = impl != "abtest_analyze"
        if full and finished[reference]["sums"][VARIANTS[0]].keys() != run["sums"][VARIANTS[0]].keys():
            raise SystemExit(f"bench_analyze: {impl} computed other statistics than {reference}")
        run["max_relative_difference"] = max_relative_difference(finished[reference]["sums"], run["sums"])
        print(f"{impl:<16} {run['seconds']:>9.2f} {run['events_per_s']:>12,.0f} {run['peak_rss_mib']:>9,.0f} "
              f"{run['max_relative_difference']:>13.1e}")
    base = out["runs"].get("pinlift_stats")
    if base and base["finished"]:
        out["ratios_vs_pinlift_stats"] = {impl: {"seconds": r["seconds"] / base["seconds"],
                                                 "peak_rss": r["peak_rss_mib"] / base["peak_rss_mib"]}
                                          for impl, r in finished.items() if impl != "pinlift_stats"}
        for impl, r in out["ratios_vs_pinlift_stats"].items():
            print(f"{impl} / pinlift_stats: {r['seconds']:.2f}x the time, {r['peak_rss']:.2f}x the peak memory")
    save(out, args.out)
    worst = max(r["max_relative_difference"] for r in finished.values())
    if worst > TOLERANCE:
        print(f"bench_analyze: the implementations disagree (max relative difference {worst:.1e})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
