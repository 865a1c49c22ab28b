"""GPU check (issue 30): the ranker and PinCLIP on one device, from synthetic inputs, in a few minutes.

Needs only PyTorch and this repository's source (``python benchmarks/gpu_check.py --device cuda``). TorchRec,
fbgemm, timm and transformers are used where they import; ``--out`` (JSON) records what ran, what was skipped
and why. Sections: *ranking* (the ranker trained on synthetic batches of its feature shapes: examples/s; a
500-candidate slate scored with and without the 64-d content features: p50/p99; on the device and on CPU),
*pinclip* (bf16 training at the largest batch of 64*2^k that fits: pairs/s, memory, MFU; with activation
checkpointing; with 0/25/50/75% of the image blocks frozen) and *chunked_loss* (the ring-chunked sigmoid
loss against the unchunked one). ``--device cpu`` runs the same code with tiny sizes in seconds.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import math
import os
import platform
import re
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")   # less fragmentation after an OOM
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# ranking.features' shapes for pinworld's three surfaces; tests/test_gpu_check.py keeps them equal to the repo's
SPARSE = ("user", "pin", "pin_boards", "advertiser", "query_pin", "user_history")
TABLE = {"user": "user", "pin": "pin", "query_pin": "pin", "user_history": "pin", "pin_boards": "board",
         "advertiser": "advertiser"}
MAX_IDS = {"user": 1, "pin": 1, "pin_boards": 5, "advertiser": 1, "query_pin": 1, "user_history": 10}
OPTIONAL = ("advertiser", "query_pin")   # 0 or 1 id (ads only, Related Pins only)
DENSE_IDS, DENSE_CONTENT, TASKS = 17, 17 + 3 * 65 + 2, 5
SHAPE = {"embedding_dim": 16, "dense_hidden": [128], "over_hidden": [128, 64], "dcn_layers": 2, "dcn_low_rank": 16}
PEAK_BF16 = (("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12))
MINILM = {"pretrained": "", "vocab_size": 30522, "width": 384, "layers": 6, "heads": 12, "mlp_dim": 1536,
          "max_length": 64}   # all-MiniLM-L6-v2's shape, random weights (its package need not be installed)


@dataclass(frozen=True)
class Sizes:
    vocab: dict          # rows per embedding table
    rank_batch: int
    rank_steps: int      # timed training steps, after 2 untimed
    requests: int        # timed 500-candidate slates per model
    cpu_steps: int       # the same on CPU beside a CUDA run
    cpu_requests: int
    pinclip: tuple       # create_model arguments
    text_len: int
    max_batch: int       # largest PinCLIP batch tried
    pinclip_steps: int   # timed steps, after one untimed
    loss_batch: int      # per simulated rank (4 ranks)


SIZES = {"cuda": Sizes({"user": 100_000, "pin": 1_000_000, "board": 200_000, "advertiser": 2_000}, 2048, 50, 200,
                       10, 50, ("base", {"text": MINILM}), 64, 4096, 5, 1024),
         "cpu": Sizes({"user": 2_000, "pin": 20_000, "board": 5_000, "advertiser": 100}, 512, 5, 20, 5, 20,
                      ("tiny", {"image": {"img_size": 32}, "text": {"max_length": 16}}), 16, 64, 1, 64)}


class Skip(Exception):
    """A part that cannot run here (a package that does not import), recorded with its reason."""


def attempt(fn, *args) -> dict:
    """One part of the check: {"status": "ran"|"skipped"|"failed", "reason", "seconds", ...its figures}."""
    t = time.perf_counter()
    try:
        out = {"status": "ran", "reason": None, **fn(*args)}
    except Skip as err:
        out = {"status": "skipped", "reason": str(err)}
    except Exception as err:  # noqa: BLE001 -- one failing part must not lose the others
        out = {"status": "failed", "reason": f"{type(err).__name__}: {err}",
               "traceback": traceback.format_exc(limit=-4).splitlines()[-8:]}
    gc.collect()
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return {**out, "seconds": round(time.perf_counter() - t, 2)}


def timed(fn, dev, n=1) -> float:
    """Seconds per call of ``fn`` over ``n`` calls, the device synchronised."""
    torch.cuda.synchronize(dev) if dev.type == "cuda" else None
    t = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize(dev) if dev.type == "cuda" else None
    return (time.perf_counter() - t) / n


def ops_ran(fn, dev, pattern: str) -> dict:
    """The aten/fbgemm ops and CUDA kernels matching ``pattern`` that one call of ``fn`` ran (torch.profiler)."""
    acts = [torch.profiler.ProfilerActivity.CPU] + [torch.profiler.ProfilerActivity.CUDA] * (dev.type == "cuda")
    with torch.profiler.profile(activities=acts) as prof:
        timed(fn, dev)
    ops, kernels = set(), set()
    for e in prof.events():
        if re.search(pattern, e.name.lower()):
            if e.device_type == torch.autograd.DeviceType.CUDA:
                kernels.add(e.name[:120])
            elif e.name.startswith(("aten::", "fbgemm::")):
                ops.add(e.name)
    return {"ops": sorted(ops), "cuda_kernels": sorted(kernels)}


def imports() -> dict:
    out = {}
    for name in ("torchrec", "fbgemm_gpu", "timm", "transformers"):
        try:
            out[name] = {"imported": True, "version": getattr(importlib.import_module(name), "__version__", None)}
        except Exception as err:  # noqa: BLE001 -- a broken install counts as absent
            out[name] = {"imported": False, "reason": f"{type(err).__name__}: {err}"}
    if out["fbgemm_gpu"]["imported"]:
        out["fbgemm_gpu"]["cuda_kernels"] = fbgemm_has("CUDA")
    return out


def fbgemm_has(key: str) -> bool:
    """Whether fbgemm's embedding kernels are registered for a dispatch key (CPU builds have no CUDA ones)."""
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key("fbgemm::bounds_check_indices", key)
    except RuntimeError:   # fbgemm_gpu not loaded
        return False


# ---- ranking ----------------------------------------------------------------------------------------------

def rank_batch(n: int, dense_in: int, vocab: dict, gen):
    """Synthetic examples: dense (n, dense_in), (ids, lengths) per sparse feature, labels (NaN: task n/a)."""
    feats = {}
    for f in SPARSE:
        many = MAX_IDS[f] > 1 or f in OPTIONAL
        lengths = torch.randint(0, MAX_IDS[f] + 1, (n,), generator=gen) if many else torch.ones(n, dtype=torch.long)
        feats[f] = (torch.randint(0, vocab[TABLE[f]], (int(lengths.sum()),), generator=gen), lengths)
    labels = (torch.rand(n, TASKS, generator=gen) < 0.1).float()
    labels[torch.rand(n, TASKS, generator=gen) < 0.5] = float("nan")
    return torch.rand(n, dense_in, generator=gen), feats, labels


def kjt_inputs(batch, dev):
    from torchrec import KeyedJaggedTensor
    dense, feats, labels = batch
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=list(SPARSE), values=torch.cat([feats[f][0] for f in SPARSE]),
                                              lengths=torch.cat([feats[f][1] for f in SPARSE]).int())
    return (dense.to(dev), kjt.to(dev)), labels.to(dev)


def bag_inputs(batch, dev):
    dense, feats, labels = batch
    return (dense.to(dev), {f: (v.to(dev), (n.cumsum(0) - n).to(dev)) for f, (v, n) in feats.items()}), labels.to(dev)


def masked_bce(logits, labels):
    """ranking.model.masked_bce: binary cross-entropy over the tasks that apply to each example."""
    mask = ~torch.isnan(labels)
    return F.binary_cross_entropy_with_logits(logits[mask], labels[mask], reduction="sum") / mask.sum().clamp(min=1)


class Cross(nn.Module):
    """torchrec's LowRankCrossNet: x_{l+1} = x_0 * (W_l V_l x_l + b_l) + x_l."""

    def __init__(self, n, rank, layers):
        super().__init__()
        self.layers = nn.ModuleList(nn.Sequential(nn.Linear(n, rank, bias=False), nn.Linear(rank, n))
                                    for _ in range(layers))

    def forward(self, x0):
        x = x0
        for layer in self.layers:
            x = x0 * layer(x) + x
        return x


class StandIn(nn.Module):
    """ranking.model's DLRM-DCN in plain torch (dense MLP, EmbeddingBags, low-rank DCN, over MLP), same shape:
    what runs where torchrec does not import."""

    def __init__(self, vocab, dense_in):
        super().__init__()
        d, n = SHAPE["embedding_dim"], SHAPE["embedding_dim"] * (1 + len(SPARSE))
        mlp = lambda w: [m for a, b in zip(w, w[1:]) for m in (nn.Linear(a, b), nn.ReLU())]  # noqa: E731
        self.sparse_arch = nn.ModuleDict({t: nn.EmbeddingBag(r, d, mode="sum", sparse=True) for t, r in vocab.items()})
        self.dense_arch = nn.Sequential(*mlp([dense_in, *SHAPE["dense_hidden"], d]))
        self.inter_arch = Cross(n, SHAPE["dcn_low_rank"], SHAPE["dcn_layers"])
        self.over_arch = nn.Sequential(*mlp([n, *SHAPE["over_hidden"], TASKS])[:-1])

    def forward(self, dense, feats):
        pooled = [self.sparse_arch[TABLE[f]](*feats[f]) for f in SPARSE]
        return self.over_arch(self.inter_arch(torch.cat([self.dense_arch(dense), *pooled], 1)))


def build_ranker(path: str, dense_in: int, s: Sizes, dev):
    """(model, inputs, optimizers): "dmp" is ranking.train's sharded model, "unsharded" the same DLRM_DCN with its
    EmbeddingBagCollection as built, "standin" the plain-torch one; the last two run their dense part under DDP."""
    if path == "standin":
        model, inputs = StandIn(s.vocab, dense_in).to(dev), bag_inputs
    else:
        from ranking.model import ModelConfig, build_model
        model, inputs = build_model(s.vocab, dense_in, ModelConfig(), TASKS, sparse_device=torch.device(
            "meta" if path == "dmp" else dev), dense_device=dev), kjt_inputs
    if path == "dmp":   # as ranking.train: Adagrad fused into the sharded tables' backward, Adam on the rest
        if not fbgemm_has(dev.type.upper()):
            raise Skip(f"fbgemm_gpu has no {dev.type.upper()} kernels here: sharded tables need them")
        from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward

        from pinlift.core.distributed import Env
        from ranking.distributed import wrap
        apply_optimizer_in_backward(torch.optim.Adagrad, model.sparse_arch.parameters(), {"lr": 0.05})
        model = wrap(model, Env(0, 1, dev, dist.get_backend()))
        dense = [p for n, p in model.named_parameters() if "sparse_arch" not in n]
        return model, inputs, [torch.optim.Adam(dense, lr=2e-3), model.fused_optimizer]
    optimizers = [torch.optim.Adagrad(model.sparse_arch.parameters(), lr=0.05)]
    for name in ("dense_arch", "inter_arch", "over_arch"):
        optimizers.append(torch.optim.Adam(getattr(model, name).parameters(), lr=2e-3))
        setattr(model, name, DDP(getattr(model, name), device_ids=[dev.index or 0] if dev.type == "cuda" else None))
    return model, inputs, optimizers


def rank_on(path: str, dev, s: Sizes, steps: int, requests: int) -> dict:
    """Training examples/s and slate-scoring p50/p99 (with / without content) of one path on one device."""
    gen, pattern = torch.Generator().manual_seed(0), r"fbgemm|embedding|bounds_check"
    model, inputs, optimizers = build_ranker(path, DENSE_CONTENT, s, dev)
    batches = [inputs(rank_batch(s.rank_batch, DENSE_CONTENT, s.vocab, gen), dev) for _ in range(4)]

    def step(i=0):
        args, labels = batches[i % 4]
        loss = masked_bce(model(*args), labels)
        [o.zero_grad() for o in optimizers]
        loss.backward()
        [o.step() for o in optimizers]

    timed(lambda: [step(i) for i in range(2)], dev)
    dt = timed(lambda: [step(i) for i in range(steps)], dev) / steps
    out = {"batch": s.rank_batch, "steps": steps, "examples_per_s": round(s.rank_batch / dt),
           "step_ms": round(dt * 1e3, 2), "train_step_ran": ops_ran(step, dev, pattern)}
    models = {"with_content": model.eval(), "ids_only": build_ranker(path, DENSE_IDS, s, dev)[0].eval()}
    slates = {k: [rank_batch(500, DENSE_CONTENT if k == "with_content" else DENSE_IDS, s.vocab, gen)
                  for _ in range(4)] for k in models}
    score = {k: (lambda k=k, i=0: torch.sigmoid(models[k](*inputs(slates[k][i % 4], dev)[0])).cpu()) for k in models}
    seconds = {k: [] for k in models}
    with torch.no_grad():
        for i in range(requests + 5):   # the first 5 untimed; who goes first alternates
            for k in (list(models) if i % 2 else list(models)[::-1]):
                t = timed(lambda: score[k](i=i), dev)   # host batch -> device -> scores on host
                seconds[k].append(t) if i >= 5 else None
        out["scoring_ran"] = ops_ran(score["with_content"], dev, pattern)
    for k, v in seconds.items():
        ms = torch.tensor(v, dtype=torch.float64) * 1e3
        out[k] = {"p50_ms": round(ms.quantile(0.5).item(), 3), "p99_ms": round(ms.quantile(0.99).item(), 3), "n": len(v)}
    out["p99_with_content_over_ids_only"] = round(out["with_content"]["p99_ms"] / out["ids_only"]["p99_ms"], 3)
    return out


def ranking_section(dev, s: Sizes, use_torchrec: bool = True) -> dict:
    try:
        if not use_torchrec:
            raise ImportError("--without torchrec")
        importlib.import_module("ranking.model")   # torchrec, pydantic and the repo's core
        paths, model = ("dmp", "unsharded"), "ranking.model.build_model (TorchRec DLRM_DCN)"
    except ImportError as err:
        paths, model = ("standin",), f"plain-torch stand-in of ranking.model's shape (ranking.model: {err})"
    paths_doc = {"dmp": "DistributedModelParallel as ranking.train: tables sharded by the planner (fbgemm TBE, "
                        "Adagrad fused in backward), dense part under DDP",
                 "unsharded": "the same DLRM_DCN, its EmbeddingBagCollection unsharded (torch EmbeddingBags) + "
                              "Adagrad; dense, interaction and over arch each under DDP (NCCL on CUDA, gloo on CPU)",
                 "standin": "plain-torch DLRM-DCN: nn.EmbeddingBags + Adagrad, dense part under DDP"}
    out = {"model": model, "world_size": 1, "shape": {**SHAPE, "dense_ids_only": DENSE_IDS, "dense_with_content":
           DENSE_CONTENT, "tasks": TASKS, "max_ids": MAX_IDS, "vocab": s.vocab}}
    for path in paths:
        out[path] = {"how": paths_doc[path], dev.type: attempt(rank_on, path, dev, s, s.rank_steps, s.requests)}
        if dev.type == "cuda":
            out[path]["cpu"] = cpu = attempt(rank_on, path, torch.device("cpu"), s, s.cpu_steps, s.cpu_requests)
            if out[path]["cuda"].get("examples_per_s") and cpu.get("examples_per_s"):
                out[path]["examples_per_s_cuda_over_cpu"] = round(out[path]["cuda"]["examples_per_s"] / cpu["examples_per_s"], 2)
    return out


# ---- PinCLIP ----------------------------------------------------------------------------------------------

def pinclip_step(model, loss_fn, dev, batch: int, text_len: int):
    """A training step: image-text and Pin-to-Pin (fusion halves) sigmoid losses, bf16 autocast, AdamW."""
    cfg, h = model.cfg, batch // 2
    torch.manual_seed(batch)   # inputs made on the device: a CPU randn of 4096 images would take seconds
    images = torch.randn(batch, 3, cfg.image.img_size, cfg.image.img_size, device=dev)
    ids = torch.randint(5, cfg.text.vocab_size, (batch, text_len), device=dev)
    mask = (torch.arange(text_len, device=dev) < torch.randint(4, text_len + 1, (batch, 1), device=dev)).long()
    params = [p for p in [*model.parameters(), *loss_fn.parameters()] if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=dev.type == "cuda")

    def step():
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            emb = model(("image", "text", "fusion"), images, ids, mask)
            loss, _ = loss_fn(emb["image"], emb["text"], query={k: v[:h] for k, v in emb["fusion"].items()},
                              positive={k: v[h:2 * h] for k, v in emb["fusion"].items()})
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def measure(model, loss_fn, dev, batch: int, s: Sizes, peak: float | None) -> dict:
    """pairs/s, peak CUDA memory, MiB autograd saved for backward, model FLOPs per step and MFU at ``batch``."""
    from torch.utils.flop_counter import FlopCounterMode
    step, saved = pinclip_step(model, loss_fn, dev, batch, s.text_len), {}

    def pack(t):   # distinct storages autograd keeps for backward
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t
    step()
    torch.cuda.reset_peak_memory_stats(dev) if dev.type == "cuda" else None
    dt = timed(step, dev, s.pinclip_steps)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), FlopCounterMode(display=False) as counter:
        step()   # (inside checkpointed blocks, checkpoint's own hooks keep nothing)
    flops = counter.get_total_flops()
    return {"batch": batch, "pairs_per_s": round(batch / dt, 1), "step_ms": round(dt * 1e3, 1),
            "peak_memory_mib": round(torch.cuda.max_memory_allocated(dev) / 2**20) if dev.type == "cuda" else None,
            "saved_activation_mib": round(sum(saved.values()) / 2**20, 1), "flops_per_step": flops,
            "mfu": round(flops / dt / peak, 4) if peak else None}


def largest_batch(model, loss_fn, dev, s: Sizes, start: int = 64) -> dict:
    """The largest batch of 64*2^k (<= max_batch) for which two training steps run without running out of memory."""
    best, b, why = None, start, f"max_batch {s.max_batch} reached"
    while b <= s.max_batch:
        try:
            step = pinclip_step(model, loss_fn, dev, b, s.text_len)
            step(), step()
            best, b = b, 2 * b
        except RuntimeError as err:   # torch.cuda.OutOfMemoryError, or cuBLAS failing to allocate its workspace
            if not isinstance(err, torch.cuda.OutOfMemoryError) and "out of memory" not in str(err).lower():
                raise
            why = f"batch {b}: out of memory"
            break
        finally:
            step = None
            gc.collect()
            torch.cuda.empty_cache() if dev.type == "cuda" else None
    if best is None:
        raise RuntimeError(f"batch {start} does not fit ({why})")
    return {"batch": best, "stopped": why}


def peak_flops(dev) -> tuple[float | None, str]:
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    for key, flops in PEAK_BF16:
        if key in name:
            return flops, f"{name}: {flops / 1e12:.0f} TFLOP/s dense bf16 (as {key})"
    return None, f"MFU null: {name} is not in the table of dense bf16 peaks ({', '.join(k for k, _ in PEAK_BF16)})"


def pinclip_section(dev, s: Sizes) -> dict:
    try:
        import timm.layers

        from pinclip.losses import PinCLIPLoss
        from pinclip.models import create_model
    except ImportError as err:
        raise Skip(f"pinclip.models does not import ({type(err).__name__}: {err}); it needs timm, transformers, "
                   "tokenizers, pyyaml and pydantic beside torch") from None
    torch.manual_seed(0)
    model, loss_fn = create_model(s.pinclip[0], **s.pinclip[1]).to(dev).train(), PinCLIPLoss().to(dev)
    peak, peak_note = peak_flops(dev)
    n = len(model.image.blocks)
    out = {"model": f"create_model{s.pinclip}, random weights", "image_blocks": n, "text_len": s.text_len,
           "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1), "peak": peak_note,
           "sdpa": {"timm_fused_attn": bool(timm.layers.use_fused_attn()),
                    "text_attn": getattr(model.text.encoder.config, "_attn_implementation", None),
                    "ran": ops_ran(pinclip_step(model, loss_fn, dev, 8, s.text_len), dev,
                                   r"scaled_dot_product|flash|fmha|attention")},
           "largest_batch": largest_batch(model, loss_fn, dev, s)}
    batch = out["largest_batch"]["batch"]
    out["no_checkpointing"] = attempt(measure, model, loss_fn, dev, batch, s, peak)

    def checkpointed():   # MFU counts the model's FLOPs: recomputation is not useful work
        model.set_grad_checkpointing(True)
        try:
            fit = largest_batch(model, loss_fn, dev, s, start=batch)
            r = measure(model, loss_fn, dev, fit["batch"], s, peak)
        finally:
            model.set_grad_checkpointing(False)
        flops = out["no_checkpointing"].get("flops_per_step")
        r["flops_per_step"] = flops and flops * fit["batch"] // batch
        r["mfu"] = round(r["flops_per_step"] * r["pairs_per_s"] / fit["batch"] / peak, 4) if peak and flops else None
        return {"how": "PinCLIP.set_grad_checkpointing (image, text, fusion blocks)", "largest_batch": fit, **r}

    def freezing():
        rows = []
        for share in (0.0, 0.25, 0.5, 0.75):
            model.requires_grad_(True)
            if int(share * n):   # freeze_image_tower also locks the conv stem and the position embedding
                model.freeze_image_tower(n - int(share * n))
            rows.append({"frozen_share": share, "frozen_blocks": int(share * n),
                         **measure(model, loss_fn, dev, batch, s, peak)})
        model.requires_grad_(True)
        mem, pairs = "peak_memory_mib" if dev.type == "cuda" else "saved_activation_mib", [r["pairs_per_s"] for r in rows]
        return {"batch": batch, "rows": rows, "paper_table2": "more image blocks frozen: less memory, more throughput",
                "memory_figure": mem, "rule": f"{mem} never rises; pairs/s at 75% above 0%, no drop beyond 3% (noise)",
                "agrees": {"memory": all(b[mem] <= a[mem] for a, b in zip(rows, rows[1:])),
                           "throughput": pairs[-1] > pairs[0] and all(b >= 0.97 * a for a, b in zip(pairs, pairs[1:]))}}
    out["checkpointing"], out["freezing"] = attempt(checkpointed), attempt(freezing)
    return out


def loss_section(dev, s: Sizes) -> dict:
    """``chunked_sigmoid_loss`` run as each of 4 simulated ranks (the ring exchange hands over the neighbour's
    chunk), averaged over ranks, against ``sigmoid_loss`` on the whole batch; and on the real world-size-1 group."""
    from pinclip import losses
    gen, w, b = torch.Generator().manual_seed(0), 4, s.loss_batch
    x = F.normalize(torch.randn(w * b, 256, generator=gen), dim=-1)
    x, y = x.to(dev), F.normalize(x + torch.randn(w * b, 256, generator=gen), dim=-1).to(dev)
    scale, bias = torch.tensor(math.log(10.0), device=dev), torch.tensor(-10.0, device=dev)
    ys, parts = y.chunk(w), []
    with torch.no_grad():
        full = losses.sigmoid_loss(x, y, scale, bias)
        for r, xr in enumerate(x.chunk(w)):
            hops = [0]

            def exchange(tensor, send_to, recv_from, r=r, hops=hops):
                hops[0] += 1   # after k hops rank r holds rank (r - k)'s chunk
                return ys[(r - hops[0]) % w].clone()
            ring = SimpleNamespace(get_rank=lambda r=r: r, get_world_size=lambda: w)
            with mock.patch.object(losses, "_exchange", exchange), mock.patch.object(losses, "dist", ring):
                parts.append(losses.chunked_sigmoid_loss(xr, ys[r], scale, bias))
        chunked, group = torch.stack(parts).mean(), losses.chunked_sigmoid_loss(x, y, scale, bias)
    return {"ranks": w, "batch_per_rank": b, "dim": 256, "dtype": "float32", "unchunked": full.item(),
            "chunked": chunked.item(), "max_abs_diff": abs(chunked - full).item(), "what": "forward values",
            "world_size_1_group": {"backend": dist.get_backend(), "max_abs_diff": abs(group - full).item()}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "gpu.json"))
    ap.add_argument("--without", action="append", default=[], choices=("torchrec",),
                    help="act as if it did not import (runs the fallback)")
    ap.add_argument("--only", action="append", choices=("ranking", "pinclip", "chunked_loss"),
                    help="run only this section (repeatable; default: all)")
    args = ap.parse_args(argv)
    started, s = time.perf_counter(), SIZES[args.device]
    dev = torch.device("cuda", torch.cuda.current_device()) if args.device == "cuda" else torch.device("cpu")
    cpu = [x.split(":", 1)[1].strip() for x in Path("/proc/cpuinfo").read_text().splitlines()
           if x.startswith("model name")] if Path("/proc/cpuinfo").exists() else []
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else (cpu or [platform.machine()])[0]
    result = {"check": "benchmarks/gpu_check.py", "device": {
        "kind": dev.type, "name": name, "torch_cuda_build": torch.version.cuda, "torch": torch.__version__,
        "python": platform.python_version(), "torch_threads": torch.get_num_threads()},
        "note": f"GPU run on {name}" if dev.type == "cuda" else "CPU path with tiny sizes" + (
            "" if torch.cuda.is_available() else ": no GPU was available to this run"),
        "imports": imports(), "sizes": asdict(s)}
    own_group = not dist.is_initialized()
    if own_group:   # world size 1: NCCL for CUDA tensors, gloo for CPU ones
        backend = "cpu:gloo,cuda:nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    try:
        sections = {"ranking": (ranking_section, dev, s, "torchrec" not in args.without),
                    "pinclip": (pinclip_section, dev, s), "chunked_loss": (loss_section, dev, s)}
        result["sections"] = {k: attempt(*v) for k, v in sections.items() if k in (args.only or sections)}
    finally:
        dist.destroy_process_group() if own_group else None
    result["total_seconds"] = round(time.perf_counter() - started, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    ran = ", ".join(f"{k} {v['status']}" for k, v in result["sections"].items())
    print(f"gpu_check: {ran} in {result['total_seconds']} s -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
