"""The open_clip baseline's program: a SigLIP ViT from ``ViT-T-8-64.json`` trained from scratch on image–caption
pairs, as open_clip_train would (AdamW, warmup then cosine, decay on matrices only, logit scale clamped at
ln 100), in a loop small enough to read here. open_clip is used as a library: the model, its bundled CLIP
BPE tokenizer and ``SigLipLoss``.

For a fair comparison the images take PinCLIP's path: every batch is read from the image files with
``pinworld.images.read_image`` (RGB on white, padded square, 64 px), normalised by
``pinclip.data.dataset.normalize_images`` and augmented by ``pinclip.data.dataset.Augment`` with the same
settings, so both models pay the same I/O in their wall time. Runs resume from their last checkpoint.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import open_clip
import torch
from tqdm import tqdm

from pinclip.data.dataset import Augment, normalize_images
from pinworld.images import read_image

HERE = Path(__file__).resolve().parent
_REGISTERED: set[Path] = set()


@dataclass(frozen=True)
class BaselineConfig:
    model_config: str = "ViT-T-8-64.json"   # in this folder, or a path
    steps: int = 234
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.2
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    warmup_steps: int = 20
    augment_scale: tuple[float, float] = (1.0, 1.0)
    augment_flip: float = 0.0
    checkpoint_every: int = 50
    seed: int = 0


def config_path(name: str) -> Path:
    path = Path(name)
    return path if path.is_absolute() or path.is_file() else HERE / name


def model_name(config: str) -> str:
    """The open_clip model name of a config file (its stem), registered with open_clip once."""
    path = config_path(config).resolve()
    if path not in _REGISTERED:
        open_clip.add_model_config(path)
        _REGISTERED.add(path)
    return path.stem


def create(config: str, seed: int = 0):
    """(model, tokenizer) at random init (seeded) for a config file."""
    name = model_name(config)
    torch.manual_seed(seed)
    model = open_clip.create_model(name, pretrained=None, output_dict=True)
    return model, open_clip.get_tokenizer(name)


def parameter_count(config: str) -> dict[str, int]:
    """Parameters of the baseline: total, image side (``visual``) and text side (the rest, with the logit
    scale and bias)."""
    model, _ = create(config)
    visual = sum(p.numel() for p in model.visual.parameters())
    total = sum(p.numel() for p in model.parameters())
    return {"total": total, "image": visual, "text": total - visual}


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    # open_clip_train: no decay on gains, biases, norms and the logit scale/bias
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        skip = p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
        (no_decay if skip else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def lr_factor(step: int, warmup: int, total: int) -> float:
    """open_clip_train's ``cosine_lr``: linear warmup, then cosine to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / max(warmup, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, total - warmup) / max(total - warmup, 1)))


def load_images(paths, size: int) -> torch.Tensor:
    """Normalised float images (n, 3, size, size) read from files the way PinCLIP reads them."""
    return normalize_images(np.stack([read_image(p, size) for p in paths]))


def train(cfg: BaselineConfig, image_paths: list[Path], captions: list[str], run_dir: Path,
          progress: bool = True) -> dict:
    """Train (or resume) in ``run_dir``; returns steps, pairs, the training loop's wall time and final loss."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if len(image_paths) != len(captions):
        raise ValueError(f"openclipart baseline: {len(image_paths)} images but {len(captions)} captions")
    per_epoch = len(image_paths) // cfg.batch_size
    if cfg.steps and per_epoch == 0:
        raise ValueError(f"openclipart baseline: {len(image_paths)} pairs are fewer than one batch ({cfg.batch_size})")
    model, tokenizer = create(cfg.model_config, cfg.seed)
    size = model.visual.image_size[0]
    loss_fn = open_clip.loss.SigLipLoss()
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                                  eps=cfg.eps)
    augment = Augment(tuple(cfg.augment_scale), cfg.augment_flip)
    ckpt = run_dir / "checkpoint.pt"
    step, wall, losses = 0, 0.0, []
    if ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, wall = int(state["step"]), float(state["wall_s"])
    (run_dir / "config.json").write_text(json.dumps(asdict(cfg), indent=2))

    def save():
        tmp = ckpt.with_suffix(".tmp")
        torch.save({"step": step, "wall_s": wall, "model": model.state_dict(),
                    "optimizer": optimizer.state_dict()}, tmp)
        tmp.replace(ckpt)

    model.train()
    bar = tqdm(total=cfg.steps, initial=step, desc=f"openclip {run_dir.name}", unit="step", disable=not progress,
               file=sys.stderr)
    epoch_order: tuple[int, np.ndarray] | None = None
    with open(run_dir / "metrics.jsonl", "a") as log:
        while step < cfg.steps:
            start = time.perf_counter()
            epoch, offset = divmod(step, per_epoch)
            if epoch_order is None or epoch_order[0] != epoch:
                epoch_order = (epoch, np.random.default_rng([cfg.seed, epoch]).permutation(len(image_paths)))
            rows = epoch_order[1][offset * cfg.batch_size:(offset + 1) * cfg.batch_size]
            images = augment(load_images([image_paths[i] for i in rows], size),
                             np.random.default_rng([cfg.seed + 13, step]))
            texts = tokenizer([captions[i] for i in rows])
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * lr_factor(step, cfg.warmup_steps, cfg.steps)
            out = model(images, texts)
            loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"], out["logit_bias"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            step += 1
            wall += time.perf_counter() - start
            losses.append(loss.item())
            log.write(json.dumps({"step": step, "loss": losses[-1], "wall_s": wall,
                                  "logit_scale": model.logit_scale.exp().item(),
                                  "logit_bias": model.logit_bias.item()}) + "\n")
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                save()
    bar.close()
    if not ckpt.is_file():
        save()   # steps = 0: the initial weights
    return {"steps": step, "pairs": step * cfg.batch_size, "train_wall_s": wall,
            "final_loss": losses[-1] if losses else None}


@torch.no_grad()
def embed(cfg: BaselineConfig, run_dir: Path, image_paths: list[Path], texts: list[str | None],
          batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalised image and text vectors of a trained run (a missing text embeds as "")."""
    model, tokenizer = create(cfg.model_config, cfg.seed)
    state = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    model.eval()
    size = model.visual.image_size[0]
    image_vecs, text_vecs = [], []
    for start in range(0, len(image_paths), batch_size):
        image_vecs.append(model.encode_image(load_images(image_paths[start:start + batch_size], size), normalize=True))
        text_vecs.append(model.encode_text(tokenizer([t or "" for t in texts[start:start + batch_size]]),
                                           normalize=True))
    dim = model.text_projection.shape[1] if hasattr(model, "text_projection") else 0
    if not image_vecs:
        return np.zeros((0, dim), np.float32), np.zeros((0, dim), np.float32)
    return torch.cat(image_vecs).numpy(), torch.cat(text_vecs).numpy()
