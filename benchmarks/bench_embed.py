"""Throughput of embedding new content (``pinclip embed``) on CPU: images/s from PNG files (RGBA, --size px
square, decoded, composited onto white, resized to the model's size), each with a short text, through a
trained run (``--workdir W --run R``, e.g. the tiny run that ``bench_publish.py`` publishes) — every
Matryoshka prefix of fusion, image and text and the int8 columns, written to Parquet as the command does.
With 1 and 2 torch threads, beside ``publish_run``'s pins/s from ``benchmarks/results/publish.json`` (pins
read from the world's uint8 shards, 64-d only). Loading the run is timed apart."""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from machine_info import machine, save
from PIL import Image

from pinclip.embed import ContentEmbedder


def write_pngs(folder: Path, n: int, size: int, seed: int = 0) -> list[Path]:
    """``n`` RGBA PNGs: a coloured rectangle on a transparent, noisy ground (photo-like: PNG compresses it little)."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        a = np.zeros((size, size, 4), np.uint8)
        x0, y0 = rng.integers(0, size // 2, 2)
        a[y0:y0 + size // 2, x0:x0 + size // 2] = (*rng.integers(0, 256, 3), 255)
        a[..., :3] += rng.integers(0, 32, (size, size, 3), dtype=np.uint8)
        paths.append(folder / f"img_{i:06d}.png")
        Image.fromarray(a, "RGBA").save(paths[-1])
    return paths


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--run", required=True, help="a trained PinCLIP run in --workdir")
    ap.add_argument("--images", type=int, default=2_000)
    ap.add_argument("--size", type=int, default=256, help="side of the PNG files, in pixels")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--out", default="benchmarks/results/embed.json")
    args = ap.parse_args(argv)
    out: dict = {"machine": machine(), "run": args.run, "images": args.images, "png_size": args.size,
                 "batch_size": args.batch_size, "by_threads": []}
    publish = Path(__file__).parent / "results" / "publish.json"
    if publish.is_file():
        out["publish_run"] = json.loads(publish.read_text()).get("publish_run")
    t = time.perf_counter()
    embedder = ContentEmbedder(args.workdir, args.run, batch_size=args.batch_size)
    out["load_run_seconds"] = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as tmp:
        files = write_pngs(Path(tmp), args.images, args.size)
        texts = [f"a picture number {i}" for i in range(len(files))]
        embedder.images(files[:8], texts[:8])       # warm-up
        for threads in args.threads:
            torch.set_num_threads(threads)
            t = time.perf_counter()
            embedder.images(files, texts).write(Path(tmp) / "out.parquet", int8=True)
            seconds = time.perf_counter() - t
            out["by_threads"].append({"threads": threads, "seconds": seconds, "images_per_s": len(files) / seconds})
    out["load_average_after"] = machine()["load_average"]
    print(json.dumps(out, indent=2))
    save(out, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
