"""Publishing a trained PinCLIP run with one process and with N processes side by side (pins/s, end to
end: each `pinclip publish` process starts, loads the run, embeds its share and stages it; then one
`--commit`), one torch thread per process. Uses ``--workdir W --run R``, else generates a world of
``--preset`` (the scale) with a briefly trained run in a temporary folder (throughput does not depend
on how long a run trained)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine_info import machine, save

ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _pinclip(workdir: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pinclip.cli", "publish", "--workdir", workdir, "--quiet", *args],
                            env={**os.environ, **ONE_THREAD}, stdout=subprocess.PIPE, text=True)


def _finish(procs: list[subprocess.Popen]) -> list[dict]:
    outs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit(f"bench_publish_parallel: a publish process failed (exit {[p.returncode for p in procs]})")
    return [json.loads(o.strip().splitlines()[-1]) for o in outs]


def timed_publish(workdir: str, run: str, processes: int, as_of_day: int | None) -> dict:
    """Publish ``run`` as ``bench-parallel-<processes>`` with that many processes; its figures."""
    name = f"bench-parallel-{processes}"
    common = ["--source", "run", "--run", run, "--name", name,
              *(["--as-of-day", str(as_of_day)] if as_of_day is not None else [])]
    t = time.perf_counter()
    if processes == 1:
        manifest = _finish([_pinclip(workdir, *common)])[0]
    else:
        _finish([_pinclip(workdir, *common, "--shard", f"{i}/{processes}") for i in range(processes)])
        manifest = _finish([_pinclip(workdir, "--name", name, "--commit")])[0]
    seconds = time.perf_counter() - t
    shutil.rmtree(Path(workdir) / "embeddings" / name)    # the benchmark's own versions only
    return {"processes": processes, "pins": manifest["rows"], "seconds": seconds,
            "pins_per_s": manifest["rows"] / seconds}


def _tiny_run(workdir: Path, preset_name: str) -> str:
    from pinclip.settings import TrainConfig
    from pinclip.training.train import Trainer
    from pinworld.config import preset
    from pinworld.generate import generate_world

    generate_world(preset(preset_name, seed=0), workdir, progress=False)
    Trainer(TrainConfig(workdir=str(workdir), run="bench", steps=4, batch_size=32, warmup_steps=1,
                        vocab_size=2000, checkpoint_every=4), progress=False).fit()
    return "bench"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workdir", default=None, help="a workspace holding --run (default: generate one)")
    ap.add_argument("--run", default=None, help="the PinCLIP run in --workdir to publish")
    ap.add_argument("--preset", default="small", help="without --workdir: the world to generate (the scale)")
    ap.add_argument("--as-of-day", type=int, default=None, help="only the pins created before this day")
    ap.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--out", default="benchmarks/results/publish_parallel.json")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        if args.workdir and args.run:
            workdir, run, scale = args.workdir, args.run, {"workdir": args.workdir, "run": args.run}
        else:
            workdir, scale = tmp, {"preset": args.preset}
            run = _tiny_run(Path(tmp), args.preset)
        out = {"machine": machine(), **scale, "as_of_day": args.as_of_day, "threads_per_process": 1,
               "by_processes": [timed_publish(workdir, run, n, args.as_of_day) for n in args.processes]}
    base = out["by_processes"][0]["pins_per_s"]
    for r in out["by_processes"]:
        r["speedup"] = r["pins_per_s"] / base
    print(json.dumps(out, indent=2))
    save(out, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
