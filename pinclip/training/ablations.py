"""`pinclip ablate`: the paper's baselines and ablations beside a reference run, in one table.

Each ablation is the reference run's saved training config with a few fields changed, trained as its own
run (``REF-NAME``, resumable, reused when already evaluated) and evaluated with the same Recall@K
protocol. The table and the paper's target checks go to ``pinclip/ablations.json``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from pinclip.training.evaluate import evaluate_run
from pinclip.training.train import TrainConfig, Trainer
from pinworld.files import write_text_atomic

# the image tower pretrained by `pinclip pretrain-image --run image` (`make results` runs it)
PRETRAINED_IMAGE = "image"


@dataclasses.dataclass(frozen=True)
class Ablation:
    """One change to the reference run's training config, and what the run without it tests."""
    changes: dict
    description: str


ABLATIONS: dict[str, Ablation] = {
    "image_text": Ablation({"fusion": False, "pin_pin": False, "annotation_weight": 0.0},
                           "the image–text model: each tower pooled on its own, no fusion encoder, no Pin-to-Pin or "
                           "annotation loss"),
    "no_pin_pin": Ablation({"pin_pin": False},
                           "no Pin-to-Pin loss, the only term of the paper's loss (eq. 11) that reaches the fusion "
                           "encoder; only the auxiliary annotation loss trains it then (under the paper's loss alone "
                           "it would keep its initialization over towers trained as in `image_text`)"),
    "in_batch_negatives": Ablation({"corpus_negatives": 0},
                                   "Pin-to-Pin against in-batch negatives only, without negatives drawn from the "
                                   "whole corpus"),
    "no_annotation": Ablation({"annotation_weight": 0.0},
                              "the paper's loss alone, without the auxiliary annotation loss on the 64-d fusion "
                              "prefix"),
    "no_matryoshka": Ablation({"matryoshka": False}, "the 256-d term only; its 64-d row is a plain truncation"),
    "pretrained_image": Ablation({"pretrained_image": PRETRAINED_IMAGE},
                                 "the image tower from `pinclip pretrain-image`, with the reference's frozen blocks"),
    "scratch_image": Ablation({"pretrained_image": "", "trainable_image_blocks": -1},
                              "the image tower from scratch, trained whole (a tower from scratch is never left "
                              "partly frozen at its initialization)"),
    "scratch_text": Ablation({"pretrained_text": "", "text_lr_scale": 1.0},
                             "the text tower from scratch at the full learning rate"),
    "image_only": Ablation({"steps": 0, "pretrained_image": PRETRAINED_IMAGE, "pretrained_text": ""},
                           "no contrastive training: the pretrained image tower, everything else at initialization"),
    "pretrained_towers": Ablation({"steps": 0, "pretrained_image": PRETRAINED_IMAGE},
                                  "no contrastive training: both pretrained towers"),
    "untrained": Ablation({"steps": 0, "pretrained_image": "", "pretrained_text": ""},
                          "no training: every tower at initialization"),
}
TABLE_TASKS = ("pintext", "related_image", "related_fusion", "search_image", "search_fusion")
TARGET_K = 10


def _reference_config(workdir: str | Path, reference: str) -> TrainConfig:
    path = Path(workdir) / "pinclip" / "runs" / reference / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"pinclip ablate: {path} not found: train the reference run {reference!r} first")
    return TrainConfig(**json.loads(path.read_text())["train"])


def same_as_reference(workdir: str | Path, reference: str, name: str) -> bool:
    """Whether ablation ``name`` changes nothing in the reference's training config."""
    cfg = _reference_config(workdir, reference)
    return all(getattr(cfg, k) == v for k, v in ABLATIONS[name].changes.items())


def ablation_config(workdir: str | Path, reference: str, name: str) -> TrainConfig:
    """The reference run's saved config with ablation ``name``'s changes, as run ``REFERENCE-NAME``."""
    if name not in ABLATIONS:
        raise ValueError(f"pinclip ablate: unknown ablation {name!r}: expected one of {', '.join(ABLATIONS)}")
    cfg = _reference_config(workdir, reference)
    # the same tokenizer as the reference, so that text towers differ by training alone
    tokenizer = Path(workdir) / "pinclip" / "runs" / reference / "tokenizer.json"
    changes = {"tokenizer": str(tokenizer) if tokenizer.is_file() else cfg.tokenizer, **ABLATIONS[name].changes}
    return cfg.model_copy(update={"workdir": str(workdir), "run": f"{reference}-{name}", **changes})


def run_ablation(workdir: str | Path, reference: str, name: str, *, max_queries: int, distractors: int,
                 progress: bool = True) -> dict:
    cfg = ablation_config(workdir, reference, name)
    out = Path(workdir) / "pinclip" / "runs" / cfg.run / "eval.json"
    if out.is_file():
        return json.loads(out.read_text())
    Trainer(cfg, progress=progress).fit()
    return evaluate_run(workdir, cfg.run, max_queries=max_queries, distractors=distractors, progress=progress)


def recall(results: dict, task: str, variant: str = "64", k: int = TARGET_K) -> float | None:
    return results["tasks"][task]["recall"].get(variant, {}).get(f"R@{k}")


def _side(results: dict, task: str, variant: str = "64", k: int = TARGET_K) -> tuple[float | None, int | None]:
    """A recall and the number of queries it was measured on."""
    return recall(results, task, variant, k), results["tasks"][task].get("queries")


def describe_check(check: dict) -> str:
    """A target check as ``claim (value vs reference, ratio R[, within two standard errors])``."""
    ratio = "" if check["ratio"] is None else f", ratio {check['ratio']:.2f}"
    noise = ", within two standard errors" if check.get("within_noise") else ""
    return f"{check['claim']} ({check['value']:.4f} vs {check['reference']:.4f}{ratio}{noise})"


def target_checks(evals: dict[str, dict], k: int = TARGET_K) -> list[dict]:
    """The paper's claims as checks on R@k: each a record with the two sides, their ratio, whether it holds
    and whether the difference is within two binomial standard errors (the queries are a sample)."""
    checks = []

    def check(claim: str, side_a: tuple, side_b: tuple, ratio: float) -> None:
        (a, n_a), (b, n_b) = side_a, side_b
        if a is None or b is None:
            return
        # binomial standard errors of the two recalls, taken as independent (conservative for two prefixes of
        # one model, which share their queries); the verdict is "within noise" inside two of them
        se = np.sqrt(a * (1 - a) / n_a + ratio ** 2 * b * (1 - b) / n_b) if n_a and n_b else None
        checks.append({"claim": claim, "value": a, "reference": b, "ratio": a / b if b else None,
                       "holds": bool(a >= ratio * b and a > 0),
                       "within_noise": None if se is None else bool(abs(a - ratio * b) < 2 * se)})

    fusion = evals.get("fusion")
    if fusion is None:
        return checks
    if "image_text" in evals:
        check("Related Pins: Fusion multimodal >= 1.3x the image-text model's image->image",
              _side(fusion, "related_fusion", k=k), _side(evals["image_text"], "related_image", k=k), 1.3)
    if "no_pin_pin" in evals:
        check("Related Pins: Fusion multimodal >= Fusion without Pin-to-Pin",
              _side(fusion, "related_fusion", k=k), _side(evals["no_pin_pin"], "related_fusion", k=k), 1.0)
        if "image_text" in evals:
            check("Related Pins: Fusion without Pin-to-Pin >= the image-text model's image->image",
                  _side(evals["no_pin_pin"], "related_fusion", k=k),
                  _side(evals["image_text"], "related_image", k=k), 1.0)
    for base in ("untrained", "image_only", "pretrained_towers"):
        if base in evals:
            check(f"Related Pins: Fusion multimodal > {base}", _side(fusion, "related_fusion", k=k),
                  _side(evals[base], "related_fusion", k=k), 1.0)
    check("Matryoshka: 64-d keeps >= 90% of 256-d (Related multimodal)", _side(fusion, "related_fusion", "64", k),
          _side(fusion, "related_fusion", "256", k), 0.9)
    if "no_matryoshka" in evals:
        check("Matryoshka 64-d > the no-Matryoshka model truncated to 64-d (Related multimodal)",
              _side(fusion, "related_fusion", "64", k), _side(evals["no_matryoshka"], "related_fusion", "64", k), 1.0)
    return checks


def ablation_table(recall_by_run: dict[str, dict], ks=(10, 100)) -> list[str]:
    """Markdown rows from ``{run: {task: {variant: {"R@K": r}}}}``: one per run and prefix, R@K of every task."""
    head = "| run | prefix | " + " | ".join(f"{t} R@{k}" for t in TABLE_TASKS for k in ks) + " |"
    lines = [head, "|---|---:|" + "---:|" * (len(TABLE_TASKS) * len(ks))]
    for name, tasks in recall_by_run.items():
        for variant in ("64", "256"):
            cells = []
            for t in TABLE_TASKS:
                for k in ks:
                    r = tasks[t].get(variant, {}).get(f"R@{k}")
                    cells.append("" if r is None else f"{r:.4f}")
            lines.append(f"| {name} | {variant} | " + " | ".join(cells) + " |")
    return lines


def run_ablations(workdir: str | Path, reference: str, names=tuple(ABLATIONS), *, max_queries: int = 5_000,
                  distractors: int = 50_000, progress: bool = True) -> dict:
    """Train and evaluate every ablation (reusing finished ones); write and return ``pinclip/ablations.json``."""
    ref_eval = Path(workdir) / "pinclip" / "runs" / reference / "eval.json"
    if not ref_eval.is_file():
        raise FileNotFoundError(f"pinclip ablate: {ref_eval} not found: evaluate the reference run first")
    evals = {"fusion": json.loads(ref_eval.read_text())}
    for name in names:
        if same_as_reference(workdir, reference, name):
            if progress:
                print(f"pinclip ablate: {reference}-{name} skipped: it is the reference", file=sys.stderr)
            continue
        if progress:
            print(f"pinclip ablate: {reference}-{name}", file=sys.stderr)
        evals[name] = run_ablation(workdir, reference, name, max_queries=max_queries, distractors=distractors,
                                   progress=progress)
    out = {"reference": reference, "k": TARGET_K,
           "recall": {name: {t: ev["tasks"][t]["recall"] for t in TABLE_TASKS} for name, ev in evals.items()},
           "checks": {f"R@{k}": target_checks(evals, k) for k in (10, 100)}}
    path = Path(workdir) / "pinclip" / "ablations.json"
    write_text_atomic(path, json.dumps(out, indent=2))  # `make results` runs ablations side by side
    out["table"] = ablation_table(out["recall"])
    return out
