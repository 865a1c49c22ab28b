"""PinCLIP training benchmarks (issue 3), every configuration in a fresh process so its peak memory is its own:

1. Training throughput and peak memory vs frozen depth: the real ``pinclip.training.train.Trainer`` (the ``tiny``
   recipe, ``train_step`` exactly as ``fit`` takes it: batch loading, forward, backward, Lion) with
   ``trainable_image_blocks`` = all, 4, 2, 0 of the image tower's 6 blocks, and activation checkpointing
   on/off with all blocks trainable. Pairs/s over ``--steps`` steps after ``--warmup`` steps; peak RSS
   (/proc/self/status VmHWM, reset after the trainer is built) while stepping, and how far that is above
   the RSS the built trainer starts from.
2. Peak memory of the chunked vs the full sigmoid loss at a large batch B: forward + backward of the
   image–text sigmoid loss alone on random unit embeddings (width 256). Full: ``sigmoid_loss`` on all B
   rows in one process (the B x B logits exist). Chunked: ``chunked_sigmoid_loss`` on 2 gloo ranks holding
   B/2 rows each (the B x B matrix never exists). Per-process peak above the RSS once the inputs exist, and
   seconds; the mean of the ranks' values must equal the full loss on the same rows.

Without --workdir a tiny world is generated in a temporary directory (and deleted) and its image tower
pretrained a few steps, as in tests/conftest.py. With --workdir the world is only read; the trainer's files
(tokenizer, neighbour cache) go to pinclip/runs/bench_pinclip, deleted afterwards. Timings depend on what
else runs on the machine: the load average before and after is recorded.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from machine_info import machine, save
from tqdm import tqdm

from pinclip.losses import chunked_sigmoid_loss, sigmoid_loss

MIB = 2 ** 20
RUN = "bench_pinclip"
CONFIGS = [(-1, False), (-1, True), (4, False), (2, False), (0, False)]   # (trainable image blocks, checkpointing)


def _status(field: str) -> int:
    """A /proc/self/status memory field in bytes."""
    return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE).group(1)) * 1024


def reset_peak() -> int:
    """Reset this process's peak RSS (VmHWM) to its current RSS and return that RSS (bytes)."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status("VmRSS")


def in_processes(fn, args: tuple, nprocs: int = 1) -> list:
    """``fn(rank, *args, queue)`` in ``nprocs`` freshly spawned processes; what each put on the queue, by rank."""
    queue = mp.get_context("spawn").SimpleQueue()
    mp.spawn(fn, args=(*args, queue), nprocs=nprocs, join=True)
    return [result for _, result in sorted(queue.get() for _ in range(nprocs))]


# ---- 1. training vs frozen depth ---------------------------------------------------------------------------

def train_worker(rank, workdir, blocks, checkpointing, batch_size, steps, warmup, pretrained, queue):
    torch.set_num_threads(1)
    from pinclip.settings import load_train_config
    from pinclip.training import train

    # keep the world's own neighbour cache untouched: the walk candidates go under the bench run
    walks, cache = train.neighbor_candidates, Path(workdir) / "pinclip" / "runs" / RUN / "cache"
    train.neighbor_candidates = lambda *a, **kw: walks(*a, **{**kw, "cache_dir": cache})
    cfg = load_train_config(["tiny"]).model_copy(update=dict(
        workdir=str(workdir), run=RUN, batch_size=batch_size, steps=warmup + steps, trainable_image_blocks=blocks,
        grad_checkpointing=checkpointing, pretrained_image=pretrained))
    trainer = train.Trainer(cfg, progress=False)
    params = list(trainer.step_module.parameters())
    built = reset_peak()
    for _ in range(warmup):         # includes the first step, where Lion allocates its state
        trainer.train_step()
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    seconds = time.perf_counter() - start
    peak = _status("VmHWM")
    queue.put((rank, {
        "trainable_image_blocks": "all" if blocks < 0 else blocks, "grad_checkpointing": checkpointing,
        "image_blocks": len(trainer.model.image.blocks),
        "trainable_params": sum(p.numel() for p in params if p.requires_grad),
        "total_params": sum(p.numel() for p in params),
        "pairs_per_s": steps * batch_size / seconds, "s_per_step": seconds / steps,
        "peak_mib": peak / MIB, "built_rss_mib": built / MIB, "peak_above_built_mib": (peak - built) / MIB}))
    dist.destroy_process_group()


def tiny_world(workdir: Path) -> str:
    """Generate the tiny world and pretrain its image tower briefly (as tests/conftest.py does)."""
    from pinclip import cli as pinclip_cli
    from pinworld import cli as pinworld_cli

    with contextlib.redirect_stdout(sys.stderr):     # their summaries are not this benchmark's figures
        assert pinworld_cli.main(["generate", "--workdir", str(workdir), "--preset", "tiny", "--seed", "0", "--quiet"]) == 0
        assert pinclip_cli.main(["pretrain-image", "--workdir", str(workdir), "--steps", "10", "--batch-size", "32",
                                 "--quiet"]) == 0
    return "image"


def bench_training(workdir: Path, pretrained: str, batch_size: int, steps: int, warmup: int) -> dict:
    rows = [in_processes(train_worker, (workdir, blocks, ckpt, batch_size, steps, warmup, pretrained))[0]
            for blocks, ckpt in tqdm(CONFIGS, desc="training configs", file=sys.stderr)]
    ref = rows[0]
    for row in rows:
        row["throughput_vs_all"] = row["pairs_per_s"] / ref["pairs_per_s"]
        row["peak_vs_all"] = row["peak_mib"] / ref["peak_mib"]
        row["peak_above_built_vs_all"] = row["peak_above_built_mib"] / ref["peak_above_built_mib"]
    return {"recipe": "pinclip/configs/train_tiny.yaml", "pretrained_image": pretrained or None,
            "batch_size": batch_size, "steps": steps, "warmup_steps": warmup, "configs": rows}


# ---- 2. chunked vs full sigmoid loss -----------------------------------------------------------------------

def loss_worker(rank, ranks, batch, dim, init_file, queue):
    torch.set_num_threads(1)
    if ranks > 1:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=ranks)
    g = torch.Generator().manual_seed(0)
    rows = slice(rank * batch // ranks, (rank + 1) * batch // ranks)
    x, y = (F.normalize(torch.randn(batch, dim, generator=g), dim=-1)[rows].clone().requires_grad_() for _ in range(2))
    scale = torch.tensor(math.log(10.0), requires_grad=True)    # SigmoidLoss's initial t = 10, b = -10
    bias = torch.tensor(-10.0, requires_grad=True)
    loss_fn = chunked_sigmoid_loss if ranks > 1 else sigmoid_loss
    if ranks > 1:
        dist.barrier()
    base = reset_peak()
    start = time.perf_counter()
    loss = loss_fn(x, y, scale, bias)
    loss.backward()
    seconds = time.perf_counter() - start
    queue.put((rank, {"loss": loss.item(), "scale_grad": scale.grad.item(), "seconds": seconds,
                      "baseline_mib": base / MIB, "peak_above_baseline_bytes": _status("VmHWM") - base}))
    if ranks > 1:
        dist.destroy_process_group()


def bench_loss(batches: list[int], dim: int, ranks: int) -> dict:
    out = {"dim": dim, "ranks": ranks, "dtype": "float32", "by_batch": []}
    for batch in tqdm(batches, desc="sigmoid loss batches", file=sys.stderr):
        with tempfile.TemporaryDirectory() as tmp:
            full = in_processes(loss_worker, (1, batch, dim, None))[0]
            chunked = in_processes(loss_worker, (ranks, batch, dim, f"{tmp}/init"), nprocs=ranks)
        local = batch // ranks
        chunked_loss = sum(r["loss"] for r in chunked) / ranks
        chunked_peak = max(r["peak_above_baseline_bytes"] for r in chunked)
        out["by_batch"].append({
            "batch": batch,
            "full": {**full, "processes": 1},
            "chunked": {"per_rank": chunked, "max_peak_above_baseline_bytes": chunked_peak,
                        "seconds": max(r["seconds"] for r in chunked)},
            "chunked_loss_mean_over_ranks": chunked_loss,
            "loss_rel_diff": abs(chunked_loss - full["loss"]) / abs(full["loss"]),
            "scale_grad_rel_diff": abs(sum(r["scale_grad"] for r in chunked) / ranks - full["scale_grad"])
                                   / abs(full["scale_grad"]),
            "peak_ratio_chunked_over_full": chunked_peak / full["peak_above_baseline_bytes"],
            "theory_bytes": {"full_logits": batch * batch * 4, "chunk_block_logits": local * local * 4,
                             # autograd keeps every block a rank scored until backward: `ranks` blocks
                             "chunked_logits_per_rank": local * batch * 4},
        })
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default=None, help="an existing world (only read); default: a temporary tiny world")
    ap.add_argument("--pretrained-image", default="image", help="image-pretraining run in --workdir, if it exists")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--loss-batches", type=int, nargs="+", default=[8192, 16384])
    ap.add_argument("--loss-dim", type=int, default=256)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/pinclip.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    out: dict = {"machine": machine()}
    tmp = None if args.workdir else tempfile.mkdtemp(prefix="bench_pinclip_")
    try:
        if tmp:
            workdir = Path(tmp)
            pretrained = tiny_world(workdir)
            out["world"] = "tiny (generated, seed 0; image tower pretrained 10 steps)"
        else:
            workdir = Path(args.workdir)
            tower = workdir / "pinclip" / "pretrain" / args.pretrained_image / "image_tower.pt"
            pretrained = args.pretrained_image if tower.is_file() else ""
            out["world"] = str(workdir)
        out["training"] = bench_training(workdir, pretrained, args.batch_size, args.steps, args.warmup)
    finally:
        shutil.rmtree(tmp or Path(args.workdir) / "pinclip" / "runs" / RUN, ignore_errors=True)
    out["sigmoid_loss"] = bench_loss(args.loss_batches, args.loss_dim, args.ranks)
    out["load_average_after"] = machine()["load_average"]

    print(f"\ntraining ({out['world']}), batch {args.batch_size}, {args.steps} steps after {args.warmup}")
    print(f"{'trainable blocks':>16} {'ckpt':>5} {'trainable params':>16} {'pairs/s':>8} {'peak MiB':>9} "
          f"{'above built':>11} {'thru/all':>8} {'peak/all':>8} {'above/all':>9}")
    for r in out["training"]["configs"]:
        print(f"{r['trainable_image_blocks']!s:>16} {'on' if r['grad_checkpointing'] else 'off':>5} "
              f"{r['trainable_params']:>16,} {r['pairs_per_s']:>8.1f} {r['peak_mib']:>9.0f} "
              f"{r['peak_above_built_mib']:>11.0f} {r['throughput_vs_all']:>8.2f} {r['peak_vs_all']:>8.2f} "
              f"{r['peak_above_built_vs_all']:>9.2f}")
    print(f"\nsigmoid loss forward+backward, width {args.loss_dim}, full (1 process) vs chunked ({args.ranks} gloo ranks)")
    for b in out["sigmoid_loss"]["by_batch"]:
        t = b["theory_bytes"]
        print(f"B={b['batch']}: peak above baseline per process: full {b['full']['peak_above_baseline_bytes'] / MIB:,.0f} MiB, "
              f"chunked {b['chunked']['max_peak_above_baseline_bytes'] / MIB:,.0f} MiB "
              f"(ratio {b['peak_ratio_chunked_over_full']:.2f}); seconds full {b['full']['seconds']:.1f}, "
              f"chunked {b['chunked']['seconds']:.1f}; loss rel diff {b['loss_rel_diff']:.1e}\n"
              f"    theory: full logits {t['full_logits'] / MIB:,.0f} MiB, one chunk block {t['chunk_block_logits'] / MIB:,.0f} MiB, "
              f"blocks per rank {t['chunked_logits_per_rank'] / MIB:,.0f} MiB")
    save(out, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
