"""Load a trained PinCLIP run for inference: its model from the last checkpoint, its tokenizer and its saved
config (``pinclip/runs/RUN/``), without the training program."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from pinclip.models.factory import PinCLIP, create_model
from pinclip.models.text import load_tokenizer
from pinlift.core.errors import input_error


def read_checkpoint(path: Path | str) -> dict:
    """A saved torch file (weights only, on the CPU); a truncated or corrupt one is one InputError line."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        reason = str(exc).split(". ")[0]
        raise input_error(path, "checkpoint", "a complete torch checkpoint (retrain, or pass --restart)",
                          f"a truncated or corrupt file ({reason})") from None


TOWERS_DIR = Path(__file__).resolve().parent / "towers"   # pretrained towers shipped with pinclip


def shipped_towers(kind: str = "tower") -> list[str]:
    """Names of the towers (``kind="tower"``) or whole PinCLIP models (``kind="model"``) shipped with pinclip
    (``pinclip/towers/<name>.safetensors``, each beside a ``<name>.json`` saying how it was made)."""
    return sorted(p.stem for p in TOWERS_DIR.glob("*.safetensors")
                  if json.loads(p.with_suffix(".json").read_text()).get("kind", "tower") == kind)


def _read_shipped_state(name: str) -> dict:
    """The tensors of ``pinclip/towers/<name>.safetensors``, floating ones back in float32."""
    return {k: v.float() if v.is_floating_point() else v for k, v in load_file(TOWERS_DIR / f"{name}.safetensors").items()}


def read_shipped_tower(name: str) -> dict:
    """The state dict (float32) of the shipped tower ``name``."""
    return _read_shipped_state(name)


def latest_checkpoint(run_dir: Path) -> dict:
    """The last checkpoint of PinCLIP run directory ``run_dir`` (its ``checkpoints/LATEST``)."""
    checkpoints = run_dir / "checkpoints"
    return read_checkpoint(checkpoints / (checkpoints / "LATEST").read_text().strip())


def export_tower(workdir: Path | str, run: str, out: Path | str) -> Path:
    """Write the tower of pretrain run ``run`` as half-precision safetensors at ``out``, and beside it (.json)
    its report and the world it was pretrained on."""
    pretrain_dir, out = Path(workdir) / "pinclip" / "pretrain" / run, Path(out)
    report = json.loads((pretrain_dir / "report.json").read_text())
    meta = Path(workdir) / "world" / "world.json"
    world = json.loads(meta.read_text()) if meta.is_file() else {}
    state = read_checkpoint(pretrain_dir / f"{report['tower']}_tower.pt")
    save_file({k: v.half().contiguous() for k, v in state.items()}, out)
    made = {"world": {k: world.get(k) for k in ("preset", "seed", "generator_version")}, **report}
    out.with_suffix(".json").write_text(json.dumps(made, indent=2) + "\n")
    return out


def export_model(workdir: Path | str, run: str, out: Path | str) -> Path:
    """Write PinCLIP run ``run`` as a model to start from (``pretrained=NAME``): its weights and the losses'
    temperatures and biases as half-precision safetensors at ``out``, its tokenizer beside it
    (``<name>.tokenizer.json``) and how it was made (``<name>.json``: the model config, the recipe, the world)."""
    run_dir, out = Path(workdir) / "pinclip" / "runs" / run, Path(out)
    if not (run_dir / "checkpoints" / "LATEST").is_file():
        raise input_error(run_dir / "checkpoints", "LATEST", "a trained PinCLIP run", "no checkpoint")
    saved = json.loads((run_dir / "config.json").read_text())
    state = latest_checkpoint(run_dir)
    # the annotation head is left out: its labels are one world's most frequent annotation terms
    kept = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state["model"].items()
            if k.startswith(("model.", "loss."))}
    save_file(kept, out)
    shutil.copyfile(run_dir / "tokenizer.json", out.with_suffix(".tokenizer.json"))
    meta = Path(workdir) / "world" / "world.json"
    world = json.loads(meta.read_text()) if meta.is_file() else {}
    model = {**saved["model"], "text": {**saved["model"]["text"], "tokenizer": out.with_suffix(".tokenizer.json").name}}
    made = {"kind": "model", "world": {k: world.get(k) for k in ("preset", "seed", "generator_version")},
            "steps": int(state["step"]), "model": model, "train": saved["train"]}
    out.with_suffix(".json").write_text(json.dumps(made, indent=2) + "\n")
    return out


def read_shipped_model(name: str) -> tuple[dict, dict, Path]:
    """The shipped PinCLIP model ``name``: its state (float32; ``model.``/``loss.`` keys as a training run's
    checkpoint), how it was made and its tokenizer's path."""
    return _read_shipped_state(name), json.loads((TOWERS_DIR / f"{name}.json").read_text()), TOWERS_DIR / f"{name}.tokenizer.json"


class TruncatedPrefixes(nn.Module):
    """Prefixes of one full-width head's output, each re-normalized (no head of their own)."""

    def __init__(self, head: nn.Module, dims):
        super().__init__()
        self.head, self.dims = head, tuple(dims)

    def forward(self, emb: torch.Tensor) -> dict[int, torch.Tensor]:
        full = self.head(emb)
        return {k: nn.functional.normalize(full[:, :k], dim=-1) for k in self.dims}


def load_run(workdir: str | Path, run: str) -> tuple[PinCLIP, object, dict]:
    """The trained model (eval mode), its tokenizer and its saved config, from the run's last checkpoint."""
    run_dir = Path(workdir) / "pinclip" / "runs" / run
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"pinclip: {cfg_path} not found: no trained run {run!r}")
    saved = json.loads(cfg_path.read_text())
    if saved["model"]["text"].get("tokenizer") and (run_dir / "tokenizer.json").is_file():
        # the run's own copy: the path saved at training time may be relative to another working directory
        saved["model"]["text"]["tokenizer"] = str(run_dir / "tokenizer.json")
    model = create_model(saved["model"])
    train = saved["train"]
    if not train["matryoshka"]:
        model.matryoshka_heads.heads = nn.ModuleDict({"256": model.matryoshka_heads.heads["256"]})
        model.matryoshka_heads.dims = (256,)
    state = latest_checkpoint(run_dir)["model"]
    model.load_state_dict({k[len("model."):]: v for k, v in state.items() if k.startswith("model.")})
    if not train["matryoshka"]:
        # trained without Matryoshka: smaller prefixes are plain truncations of the 256-d embedding
        model.matryoshka_heads = TruncatedPrefixes(model.matryoshka_heads.heads["256"], model.cfg.matryoshka_dims)
    model.eval()
    return model, load_tokenizer(model.cfg.text), saved
