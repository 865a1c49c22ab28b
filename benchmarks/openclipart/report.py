"""The benchmark's outputs from its per-seed results: ``benchmarks/results/openclipart.json`` and the Markdown
section of ``docs/results.md`` between ``BEGIN`` and ``END`` (replaced in place, or appended under its
heading the first time)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pinlift.core.docs import replace_section, section_markers

from openclipart.rows import BATCH, HYPOTHESES, PAIRS, PINCLIP_RECIPE, ROWS, WORK_STEPS

HEADING = "## PinCLIP on real pictures (Open Clip Art)"
SECTION = "openclipart"   # its section of docs/results.md
BEGIN, END = section_markers(SECTION)
KS = (1, 5, 10)
TASKS = ("image_text", "image_image")
COMMAND = "python benchmarks/openclipart/run.py --workdir openclipart-work --write-docs"


def parameter_counts(baseline_config: str) -> dict:
    """Parameters of PinCLIP tiny (as ``pinclip train`` builds it: a from-scratch text tower with the
    default vocabulary) by part, and of the open_clip baseline; ``image_text`` counts what the image–text
    losses pass through (both towers, their poolers, the Matryoshka heads and the missing-text token),
    the fusion encoder apart."""
    from openclipart.baseline import parameter_count
    from pinclip.models.factory import create_model
    from pinclip.settings import load_train_config

    recipe = load_train_config([PINCLIP_RECIPE])
    overrides = dict(recipe.model_overrides)
    text = {"vocab_size": recipe.vocab_size, **overrides.pop("text", {})}   # as pinclip train builds it
    model = create_model(recipe.model, text=text, **overrides)
    part = {name: sum(p.numel() for p in child.parameters()) for name, child in model.named_children()}
    image = part["image"] + part["image_proj"] + part["image_pool"] + part["image_center"]
    text = part["text"] + part["text_proj"] + part["text_pool"] + part["text_center"] + model.missing_text.numel()
    pinclip = {"image": image, "text": text, "matryoshka_heads": part["matryoshka_heads"], "fusion": part["fusion"],
               "image_text": image + text + part["matryoshka_heads"],
               "total": sum(p.numel() for p in model.parameters())}
    base = parameter_count(baseline_config)
    return {"pinclip_tiny": pinclip, "openclip_baseline": base,
            "baseline_over_pinclip_image_text": base["total"] / pinclip["image_text"],
            "baseline_over_pinclip_total": base["total"] / pinclip["total"]}


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def summarize(name: str, results: list[dict]) -> dict:
    """A row of the JSON: its definition, its per-seed values and their means."""
    first = results[0]
    mean = {task: {**{f"R@{k}": _mean(r[task][f"R@{k}"] for r in results) for k in KS},
                   "queries": first[task]["queries"]} for task in TASKS}
    per_seed = [{"seed": r["seed"], "steps": r["steps"], "pairs": r["pairs"],
                 "train_wall_s": round(r["train_wall_s"], 1),
                 "s_per_step": r["s_per_step"] and round(r["s_per_step"], 3),
                 **{task: {f"R@{k}": r[task][f"R@{k}"] for k in KS} for task in TASKS},
                 "machine": r["machine"]} for r in results]
    return {"row": name, "kind": first["kind"], "about": first["about"], "table": first["table"],
            "split": first["eval_split"], "seeds": [r["seed"] for r in results],
            "steps": first["steps"], "pairs": first["pairs"], "batch_size": first["batch_size"],
            "train_wall_s": _mean(r["train_wall_s"] for r in results),
            "s_per_step": _mean(r["s_per_step"] for r in results),
            "threads": sorted({r["machine"]["torch_threads"] for r in results}),
            "cpus": sorted({r["machine"]["cpus"] for r in results}),
            "train_items": first.get("train_items"), "eval_items": first["items"], "embedding": first.get("embedding"),
            "lr": first["settings"].get("lr"), "lr_chosen_by": first["lr_chosen_by"], "settings": first["settings"],
            "mean": mean, "per_seed": per_seed}


def goals(rows: dict[str, dict]) -> dict:
    """The issue's bar: PinCLIP's image→image R@10 at least twice its floor's and at or above the baseline's;
    ahead of the baseline on both tasks."""
    def r10(name, task):
        return rows[name]["mean"][task]["R@10"] if name in rows else None

    out = {}
    for name in ("pinclip", "pinclip_time", "pinclip_boards"):
        ii, floor, base = r10(name, "image_image"), r10("pinclip_init", "image_image"), r10("openclip", "image_image")
        it, base_it = r10(name, "image_text"), r10("openclip", "image_text")
        if ii is None:
            continue
        out[name] = {"image_image_R@10_over_floor": ii / floor if floor else None,
                     "image_image_R@10_over_baseline": ii / base if base else None,
                     "image_text_R@10_over_baseline": it / base_it if base_it and it is not None else None}
    return out


def build(results: dict[str, list[dict]], split_counts: dict, parameters: dict) -> dict:
    """The whole JSON document."""
    rows = {name: summarize(name, rs) for name, rs in results.items() if rs}
    return {
        "benchmark": "PinCLIP on real pictures: the Open Clip Art Library (8,121 public-domain images, 165 "
                     "category folders)",
        "command": COMMAND,
        "split": {"file": "benchmarks/openclipart/split.csv", "by": "image file (linked copies together)",
                  "stratified": "by category (folder): slots of ten in sha256(seed, file) order, 8/1/1", "seed": 0,
                  **split_counts},
        "budget": {"pairs": PAIRS, "batch_size": BATCH, "steps": WORK_STEPS, "image_size": 64,
                   "from_scratch": True},
        "metrics": {"image_text": "an item's image -> its own descriptive text (title, else description) among "
                                  "the split's other items' texts",
                    "image_image": "an item's image -> one other item of its category (seeded), distractors: "
                                   "the split's items of other categories",
                    "recall": "fraction of queries with fewer than K distractors at or above the positive "
                              "(pinclip.training.catalog_eval)",
                    "seeds": "each row's mean over its seeds; per-seed values under per_seed"},
        "parameters": parameters,
        "rows": rows,
        "goals": goals(rows),
    }


def _fmt(v: float | None) -> str:
    return "–" if v is None else f"{v:.3f}"


def _recalls(row: dict, task: str) -> str:
    return " / ".join(_fmt(row["mean"][task][f"R@{k}"]) for k in KS)


def _seconds(v: float | None) -> str:
    return "–" if v is None else f"{v:,.0f}"


MAIN_ORDER = ("openclip", "pinclip", "pinclip_time", "pinclip_init", "pinclip_boards")


def markdown(doc: dict) -> str:
    """The section between the markers: the main table (test split), then the choices and hypotheses
    (validation split)."""
    rows = doc["rows"]
    p = doc["parameters"]
    lines = [
        f"Regenerated by `{doc['command']}`. Split `{doc['split']['file']}` (by image file, stratified by "
        f"category, seed 0): " + " / ".join(f"{doc['split']['files'][s]:,}" for s in ("train", "validation", "test"))
        + " train / validation / test image files (linked copies of an image count once and share a split). "
        "From scratch at 64 px (imported with `--max-side 128`, so no epoch decodes the library's 100-megapixel "
        "drawings; both models read the same files through `read_image`: transparency onto white, padded square); "
        "work-matched rows see "
        f"{doc['budget']['pairs']:,} image–caption pairs ({doc['budget']['steps']} steps of "
        f"{doc['budget']['batch_size']}). "
        "Recall@1 / 5 / 10 on the test split, the mean of the seeds listed (per seed in "
        "`benchmarks/results/openclipart.json`); image→text: an image against its own title (else description) "
        "among the other test items' texts; image→image: against one other test item of its category, the "
        "items of other categories as distractors. Wall time: the training loop (image reading included), "
        "one torch thread.",
        "",
        f"Parameters: PinCLIP tiny {p['pinclip_tiny']['image_text'] / 1e6:.2f} M on the image–text path "
        f"({p['pinclip_tiny']['total'] / 1e6:.2f} M with the fusion encoder); the open_clip baseline "
        f"(`benchmarks/openclipart/ViT-T-8-64.json`, ViT 8x8 patches, 6 x 128 wide; text 2 x 64 wide over the "
        f"49,408-token CLIP BPE) {p['openclip_baseline']['total'] / 1e6:.2f} M "
        f"({p['baseline_over_pinclip_image_text']:.2f}x).",
        "",
        "| row | seeds | steps | pairs | wall s | image→text R@1 / 5 / 10 | image→image R@1 / 5 / 10 "
        "| queries (i→t, i→i) |",
        "|---|---|---:|---:|---:|---|---|---|",
    ]
    for name in [n for n in MAIN_ORDER if n in rows] + sorted(n for n in rows if rows[n]["table"] == "main"
                                                              and n not in MAIN_ORDER):
        r = rows[name]
        lines.append(f"| `{name}`: {r['about']} | {', '.join(map(str, r['seeds']))} | {r['steps']:,} | "
                     f"{r['pairs']:,} | {_seconds(r['train_wall_s'])} | {_recalls(r, 'image_text')} | "
                     f"{_recalls(r, 'image_image')} | {r['mean']['image_text']['queries']}, "
                     f"{r['mean']['image_image']['queries']} |")
    missing = [n for n in MAIN_ORDER if n not in rows]
    if missing:
        lines += ["", "Not yet run: " + ", ".join(f"`{n}`" for n in missing) + "."]
    for name, g in doc["goals"].items():
        parts = []
        if g["image_image_R@10_over_floor"] is not None:
            parts.append(f"image→image R@10 {g['image_image_R@10_over_floor']:.2f}x its floor (goal ≥ 2)")
        if g["image_image_R@10_over_baseline"] is not None:
            parts.append(f"{g['image_image_R@10_over_baseline']:.2f}x the baseline's (goal ≥ 1)")
        if g["image_text_R@10_over_baseline"] is not None:
            parts.append(f"image→text R@10 {g['image_text_R@10_over_baseline']:.2f}x the baseline's")
        if parts:
            lines += ["", f"`{name}`: " + "; ".join(parts) + "."]
    machines = sorted({(s["machine"]["cpu_model"], s["machine"]["cpus"]) for r in rows.values()
                       for s in r["per_seed"]})
    if machines:
        lines += ["", "Machine: " + "; ".join(f"{cpu or 'unknown CPU'} ({n} CPUs)" for cpu, n in machines) + "."]

    lines += ["", "### Choices and hypotheses (validation split)", "",
              "Learning rates are chosen on validation (seed 0; the best image→text R@10 + image→image R@10). "
              "Each hypothesis changes one thing in the work-matched PinCLIP row (`--only hyp_NAME`); Δ is "
              "against the PinCLIP row at the chosen LR on validation.", "",
              "| row | change | seeds | steps | wall s | image→text R@1 / 5 / 10 | image→image R@1 / 5 / 10 "
              "| Δ i→i R@10 |",
              "|---|---|---|---:|---:|---|---|---:|"]
    reference = _validation_reference(rows)
    listed = [n for n in ROWS if ROWS[n].table in ("choice", "hypothesis")]
    listed += sorted(n for n in rows if n not in ROWS)
    for name in listed:
        r = rows.get(name)
        about = r["about"] if r else ROWS[name].about
        if r is None:
            lines.append(f"| `{name}` | {about} | – | – | – | not run | | |")
            continue
        delta = "–"
        if (reference and r["kind"] == "pinclip" and r["mean"]["image_image"]["R@10"] is not None
                and name != reference["row"]):
            delta = f"{r['mean']['image_image']['R@10'] - reference['mean']['image_image']['R@10']:+.3f}"
        lines.append(f"| `{name}` | {about} | {', '.join(map(str, r['seeds']))} | {r['steps']:,} | "
                     f"{_seconds(r['train_wall_s'])} | {_recalls(r, 'image_text')} | {_recalls(r, 'image_image')} | "
                     f"{delta} |")
    return "\n".join(lines)


def _validation_reference(rows: dict) -> dict | None:
    """The validation row of PinCLIP at the LR its test rows use."""
    lr = rows["pinclip"]["lr"] if "pinclip" in rows else None
    for name, r in rows.items():
        if r["table"] == "choice" and r["kind"] == "pinclip" and r["lr"] == lr and r["steps"]:
            return r
    return None


def write_docs(path: Path, section: str) -> None:
    """Put ``section`` between the markers of ``path`` (replacing what was there), or append the heading and
    the markers first if they are missing; a file with a marker but not its pair is refused."""
    text = path.read_text() if path.is_file() else ""
    try:
        path.write_text(replace_section(text, SECTION, section, HEADING))
    except ValueError as err:
        raise ValueError(f"openclipart: {path}: {err}") from None


def hypothesis_rows() -> list[str]:
    return [r.name for r in HYPOTHESES]
