"""Response-API throughput of the ground truth (target >= 1M responses/s): `GroundTruth.respond` on large
batches of ranked slates for each surface, and `GroundTruth.probabilities` alone, best of several repeats.

A response is one (request, position) cell of a slate. The world is reused from --workdir when it holds
one, otherwise a `tiny` world is generated in a temporary directory (and deleted). Slates are drawn at
random from pins live on the day (ads from live ads); Related Pins gets a query pin per request.
Timings depend on what else runs on the machine: the load average before and after is recorded.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from machine_info import machine, save
from pinworld.engagement import SURFACES
from pinworld.world import World

TARGET_RESPONSES_PER_S = 1_000_000


def timings(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def make_batch(world: World, surface: str, n_requests: int, n_positions: int, day: int,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Random users, slates of live pins (live ads for the ads surface) and, for Related Pins, query pins."""
    p = world.truth.pins
    live = p.created_day <= day
    organic = np.flatnonzero(live & ~p.is_ad)
    pool = np.flatnonzero(live & p.is_ad & (day < p.ad_end_day)) if surface == "ads" else organic
    users = rng.integers(0, world.config.n_users, n_requests)
    slates = pool[rng.integers(0, len(pool), (n_requests, n_positions))]
    query = organic[rng.integers(0, len(organic), n_requests)] if surface == "related" else None
    return users, slates, query


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", default=None,
                    help="an existing pinworld workdir (default: generate `tiny` in a temp dir)")
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--positions", type=int, default=25)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/response.json")
    args = ap.parse_args(argv)

    tmp = None
    if args.workdir and (Path(args.workdir) / "world" / "world.json").is_file():
        workdir = Path(args.workdir)
    else:
        from pinworld.config import preset
        from pinworld.generate import generate_world

        tmp = Path(tempfile.mkdtemp(prefix="bench_response_"))
        workdir = tmp
        generate_world(preset("tiny", 0), workdir, progress=False)
    try:
        world = World(workdir)
        truth = world.truth
        day = world.config.days - 1
        rng = np.random.default_rng(args.seed)
        n = args.requests * args.positions
        result = {"benchmark": "response", "machine": machine(), "load_average_before": list(os.getloadavg()),
                  "world": {"preset": world.meta.get("preset"), "seed": world.meta.get("seed"),
                            "pins": len(truth.pins.topic), "users": world.config.n_users},
                  "requests": args.requests, "positions": args.positions, "responses_per_batch": n,
                  "repeats": args.repeats, "target_responses_per_s": TARGET_RESPONSES_PER_S, "surfaces": {}}
        for surface in SURFACES:
            users, slates, query = make_batch(world, surface, args.requests, args.positions, day, rng)
            positions = np.broadcast_to(np.arange(args.positions), slates.shape)
            q = None if query is None else query[:, None]
            truth.respond(users, slates, day, surface, query, seed=0)  # warm-up
            t_resp = timings(lambda: truth.respond(users, slates, day, surface, query, seed=args.seed), args.repeats)
            t_prob = timings(lambda: truth.probabilities(users[:, None], slates, positions, day, surface, q),
                             args.repeats)
            best_r, best_p = min(t_resp), min(t_prob)
            result["surfaces"][surface] = {
                "respond": {"best_s": best_r, "median_s": float(np.median(t_resp)), "responses_per_s": n / best_r},
                "probabilities": {"best_s": best_p, "median_s": float(np.median(t_prob)),
                                  "responses_per_s": n / best_p},
                "met": n / best_r >= TARGET_RESPONSES_PER_S,
            }
        result["load_average_after"] = list(os.getloadavg())
        result["all_met"] = all(s["met"] for s in result["surfaces"].values())
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    m = result["machine"]
    print(f"respond: {args.requests:,} requests x {args.positions} positions, best of {args.repeats}, "
          f"world {result['world']['preset']} on {m['nproc']} cpu(s) ({m['cpu_model']}), load "
          f"{result['load_average_before'][0]:.1f} -> {result['load_average_after'][0]:.1f}")
    print(f"{'surface':<10} {'respond/s':>14} {'probabilities/s':>16} {'median respond/s':>17}  >= 1M/s")
    for s, r in result["surfaces"].items():
        print(f"{s:<10} {r['respond']['responses_per_s']:>14,.0f} {r['probabilities']['responses_per_s']:>16,.0f} "
              f"{n / r['respond']['median_s']:>17,.0f}  {'yes' if r['met'] else 'NO'}")
    save(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
