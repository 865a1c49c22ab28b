"""Ranking training with examples in memory vs streamed from Parquet shards (issue 31), at 1x and Nx the logs.

For each scale a pinworld world is generated from a preset (default ``small``) with sqrt(N) times its users
and days (so about N times the impressions), and the evaluation window is held at the 1x world's length
(training data grows, evaluation does not). Then each runs in its own process, measured alone:

- ``memory``: ``python -m ranking.train`` as it is by default (every example built in memory);
- ``write``: ``--write-shards DIR`` (the examples per day as Parquet shards, reading the impression log a day
  at a time: its peak RSS should not grow with the log);
- ``stream``: ``--shards DIR`` (each rank streams its row groups, shuffled within a buffer).

Per run: peak RSS of that process (``os.wait4``'s ru_maxrss), wall seconds and, for training, examples/s
(training examples times epochs over the training loop's seconds, checks included). The figures go to
``benchmarks/results/ranking_stream.json`` with the machine. Workspaces are temporary (deleted) unless
``--keep``. ``--preset tiny`` checks the benchmark in a few minutes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine_info import machine, save

from pinlift.core.clock import default_cutoff
from pinworld.config import preset
from pinworld.generate import generate_world

ROOT = Path(__file__).resolve().parent.parent


def measured(args: list[str]) -> dict:
    """Run ``python -m ranking.train ARGS`` in a child process: its peak RSS (MiB) and wall seconds."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "ranking.train", *args], cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"bench_ranking_stream: ranking.train {' '.join(args)} exited with {proc.returncode}")
    return {"peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "seconds": round(time.perf_counter() - start, 2)}


def throughput(workdir: Path, run: str) -> dict:
    report = json.loads((workdir / "ranking" / "runs" / run / "eval.json").read_text())
    epochs = report["checks"][-1]["epochs"]
    return {"train_examples": report["train_examples"], "epochs": epochs, "train_seconds": report["train_seconds"],
            "examples_per_s": round(report["train_examples"] * epochs / report["train_seconds"], 1)}


def bench_scale(name: str, scale: float, epochs: int, shuffle_rows: int, root: Path) -> dict:
    base = preset(name, seed=0)
    grow = math.sqrt(scale)
    cfg = preset(name, seed=0, n_users=round(base.n_users * grow), days=round(base.days * grow))
    eval_days = base.days - default_cutoff(0, base.days)
    workdir = root / f"{name}_x{scale:g}"
    print(f"bench_ranking_stream: generating {name} x{scale:g} ({cfg.n_users} users, {cfg.days} days)", file=sys.stderr)
    generate_world(cfg, workdir, progress=False)
    common = ["--workdir", str(workdir), "--quiet", f"epochs={epochs}", f"cutoff_day={cfg.days - eval_days}",
              "patience=99", "checks_per_epoch=1"]
    memory = measured([*common, "--run-name", "memory", "--restart"])
    write = measured([*common, "--write-shards", str(workdir / "shards")])
    stream = measured([*common, "--run-name", "stream", "--restart", "--shards", str(workdir / "shards"),
                       "--shuffle-rows", str(shuffle_rows)])
    return {"users": cfg.n_users, "days": cfg.days, "cutoff_day": cfg.days - eval_days,
            "memory": {**memory, **throughput(workdir, "memory")},
            "write_shards": write,
            "stream": {**stream, **throughput(workdir, "stream")}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small", help="pinworld preset of the 1x world (default small; tiny to check)")
    ap.add_argument("--scale", type=float, default=4.0, 
                    help="the larger world's impressions over the 1x world's (default 4)")
    ap.add_argument("--epochs", type=int, default=1, help="training epochs per run (default 1)")
    ap.add_argument("--shuffle-rows", type=int, default=1 << 20, help="the streamed runs' shuffle buffer (rows)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/ranking_stream.json"))
    ap.add_argument("--keep", default=None, 
                    help="build the workspaces here and keep them (default: a temporary folder)")
    args = ap.parse_args(argv)
    root = Path(args.keep or tempfile.mkdtemp(prefix="bench_ranking_stream_"))
    try:
        scales = {f"x{s:g}": bench_scale(args.preset, s, args.epochs, args.shuffle_rows, root)
                  for s in (1.0, args.scale)}
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    one, many = scales["x1"], scales[f"x{args.scale:g}"]
    runs = ("memory", "write_shards", "stream")
    ratios = {k: round(many[k]["peak_rss_mib"] / one[k]["peak_rss_mib"], 3) for k in runs}
    save({"machine": machine(), "preset": args.preset, "scale": args.scale, "epochs": args.epochs,
          "shuffle_rows": args.shuffle_rows, "scales": scales, "peak_rss_ratio": ratios,
          "stream_flat": ratios["stream"] <= 1.25, "write_shards_flat": ratios["write_shards"] <= 1.25}, args.out)
    rss = {k: {m: v[m]["peak_rss_mib"] for m in runs} for k, v in scales.items()}
    print(json.dumps({"peak_rss_mib": rss, "peak_rss_ratio": ratios}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
