"""Train, embed and score the rows of ``rows.py`` on an imported Open Clip Art workspace, reusing what is done.

The workspace is ``pinworld import openclipart``'s, with its images stored once at 128 px
(``pinworld import --max-side``) so that neither model's wall time is dominated by decoding the library's largest PNGs.
Everything the benchmark writes lives under ``W/benchmark/``: ``split.parquet`` (the committed split as
pin ids, what ``pinclip train split=...`` reads), one run folder per (row, seed) and one result file per
(row, seed), ``results/<row>/s<seed>.json``. A run is named by the row, the seed and a hash of everything
that defines it (settings, steps, model config), so a killed run resumes from its checkpoint, a finished one
is reused, and a row whose definition changed (another chosen LR, a new time budget) trains afresh.

Evaluation is by image file: the 1,221 library paths that link to another path's image are one item with the
categories of all its paths, represented by its lowest pin id. Image→text: each item's image against its own
descriptive text (title, else description) among the other items' texts; image→image: an item against one
other item of its category, with the items of other categories as distractors (both
``pinclip.training.catalog_eval``). PinCLIP is scored on its full 256-d image and text embeddings.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import torch

import openclipart.baseline as baseline
from openclipart.rows import OPENCLIP, PINCLIP, PINCLIP_RECIPE, ROWS, WORK_STEPS, Row, lr_choices
from openclipart.split import SPLIT_CSV, category, read_split

BENCH_DIR = "benchmark"


def machine() -> dict:
    """What a timing ran on: threads torch uses, the CPUs this process may use, the CPU, the load."""
    model = ""
    try:
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "")
    except OSError:
        pass
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"torch_threads": torch.get_num_threads(), "cpus": cpus, "cpu_model": model,
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}


# ---- the catalog ------------------------------------------------------------------------------------------

@dataclass
class Catalog:
    """The workspace's pins matched to the split: ``pins`` (pin_id, path, file, split, text, image), one row
    per pin; ``items(split)``, one row per image file of a split."""

    workdir: Path
    pins: pl.DataFrame
    categories: dict[str, tuple[str, ...]]    # file -> categories of every path that is it
    split_file: Path

    def items(self, split: str) -> pl.DataFrame:
        """file, pin_id (its lowest), text (the first of its pins' descriptive texts), image, categories."""
        rows = (self.pins.filter(pl.col("split") == split).sort("pin_id")
                .group_by("file", maintain_order=True)
                .agg(pl.col("pin_id").first(), pl.col("text").drop_nulls().first(), pl.col("image").first())
                .sort("pin_id"))
        return rows.with_columns(pl.Series("categories", [list(self.categories[f]) for f in rows["file"]],
                                           dtype=pl.List(pl.String)))

    def train_pairs(self) -> tuple[list[Path], list[str]]:
        """The baseline's training pairs: every train pin with a descriptive text, in pin order."""
        rows = self.pins.filter((pl.col("split") == "train") & pl.col("text").is_not_null()).sort("pin_id")
        return [Path(p) for p in rows["image"]], rows["text"].to_list()


def _match(uri: str, known: dict) -> str | None:
    parts = uri.split("/")
    return next(("/".join(parts[i:]) for i in range(len(parts)) if "/".join(parts[i:]) in known), None)


def load_catalog(workdir: Path | str, split_csv: Path | str = SPLIT_CSV) -> Catalog:
    """Match every pin of the workspace to a path of ``split_csv`` (its image_uri ends with it) and write
    ``W/benchmark/split.parquet``; a pin that matches none is an error."""
    from pinclip.data.sources import text_sources
    from pinworld.images import resolve_inside
    from pinworld.world import World

    workdir = Path(workdir)
    world = World(workdir)
    split = read_split(split_csv)
    pins = world.table("pins").select("pin_id", "image_uri").sort("pin_id")
    paths = [_match(u, split) for u in pins["image_uri"]]
    unmatched = [u for u, p in zip(pins["image_uri"], paths) if p is None]
    if unmatched:
        raise ValueError(f"openclipart: {len(unmatched)} of {pins.height} pins have an image_uri that ends in no "
                         f"path of {split_csv}, e.g. {unmatched[0]!r} (is this the Open Clip Art import?)")
    texts = text_sources(world.pins()).select("pin_id", pl.col("descriptive").alias("text"))
    images = [str(resolve_inside(world.dir, u)) for u in pins["image_uri"]]
    table = (pins.with_columns(pl.Series("path", paths), pl.Series("file", [split[p].file for p in paths]),
                               pl.Series("split", [split[p].split for p in paths]), pl.Series("image", images))
             .join(texts, on="pin_id", how="left").sort("pin_id"))
    categories: dict[str, set] = {}
    for path, item in split.items():
        categories.setdefault(item.file, set()).add(category(path))
    out = workdir / BENCH_DIR / "split.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    table.select("pin_id", "split").write_parquet(out)
    return Catalog(workdir, table, {f: tuple(sorted(c)) for f, c in categories.items()}, out)


IMAGE_SIDE = 128   # the import stores every image at most this side (``pinworld import --max-side``)


def ensure_workspace(workdir: Path | str, source: Path | str | None, progress: bool = True) -> None:
    """Import the library into ``workdir`` unless it holds a world already, its images stored at most
    ``IMAGE_SIDE`` px: the library's PNGs go up to 170 megapixels (13 over 100) and decoding one takes
    seconds, so reading the originals every step would make both models' wall time mostly PNG decoding; both
    models read the same stored files (``read_image`` resizes them to 64 px)."""
    if not (Path(workdir) / "world" / "pins.parquet").is_file():
        from pinworld.importers import import_openclipart

        print(f"openclipart: importing {source or 'the installed library'} into {workdir}", file=sys.stderr)
        import_openclipart(workdir, source, progress=progress, max_side=IMAGE_SIDE)


# ---- scoring ------------------------------------------------------------------------------------------

def score(image_vecs: np.ndarray, text_vecs: np.ndarray, items: pl.DataFrame, seed: int = 0) -> dict:
    """Image→text and image→image Recall@1/5/10 of a split's items (``Catalog.items``)."""
    from pinclip.training.catalog_eval import image_image_recall, image_text_recall

    it = image_text_recall(image_vecs, text_vecs, items["text"].is_not_null().to_numpy())
    ii = image_image_recall(image_vecs, [tuple(c) for c in items["categories"].to_list()], seed=seed)

    def as_dict(r) -> dict:
        return {**{f"R@{k}": (None if math.isnan(v) else v) for k, v in r.recall.items()}, "queries": r.queries}

    return {"image_text": as_dict(it), "image_image": as_dict(ii), "items": items.height}


# ---- rows ----------------------------------------------------------------------------------------------

@dataclass
class Context:
    workdir: Path
    catalog: Catalog | None
    progress: bool = True
    steps_cap: int | None = None        # tests: at most this many steps per row
    common: dict = field(default_factory=dict)   # {kind: settings} for every row of a kind (tests: small batches)
    custom: dict[str, Row] = field(default_factory=dict)
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr)

    def row(self, name: str) -> Row:
        if name in self.custom:
            return self.custom[name]
        if name not in ROWS:
            raise ValueError(f"openclipart: unknown row {name!r}; rows: {', '.join(ROWS)}")
        return ROWS[name]

    def result_path(self, row: str, seed: int) -> Path:
        return self.workdir / BENCH_DIR / "results" / row / f"s{seed}.json"


def _hash(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:10]


def resolve(ctx: Context, row: Row) -> dict:
    """Everything that defines ``row``'s runs but the seed: kind, settings (with the chosen LR), steps, the
    split it is scored on; the LR and time budget it depends on are settled first (trained if need be)."""
    lr, lr_from = row.lr, "the row"
    if lr is None:
        lr, lr_from = choose_lr(ctx, row.kind)
    steps = row.steps
    if steps == "time":
        steps = time_matched_steps(ctx)
    if ctx.steps_cap is not None:
        steps = min(steps, ctx.steps_cap)
    base = PINCLIP if row.kind == "pinclip" else OPENCLIP
    settings = {**base, "lr": lr, **row.settings, **ctx.common.get(row.kind, {}), "steps": steps}
    spec = {"kind": row.kind, "settings": settings, "eval_split": row.split}
    if row.kind == "pinclip":
        spec["recipe"] = PINCLIP_RECIPE
    else:
        spec["model_config"] = json.loads(baseline.config_path(settings["model_config"]).read_text())
    spec["hash"] = _hash(spec)
    spec["lr_chosen_by"] = lr_from
    return spec


def check_settings(row: Row) -> None:
    """Refuse a row whose settings its program does not take (e.g. a hypothesis whose key the library lacks)
    before anything trains."""
    if row.kind == "pinclip":
        from pinclip.settings import CONFIG_DIR, TrainConfig
        from pinlift.core.config import load_settings, recipe_path

        load_settings(TrainConfig, recipe_path(PINCLIP_RECIPE, CONFIG_DIR, "train_"), {**PINCLIP, **row.settings})
    else:
        unknown = sorted((set(OPENCLIP) | set(row.settings)) - set(baseline.BaselineConfig.__dataclass_fields__))
        if unknown:
            raise ValueError(f"openclipart: {row.name}: baseline settings {unknown} are not BaselineConfig's")


def run_row(ctx: Context, name: str, train: bool = True) -> list[dict]:
    """The per-seed results of row ``name``: reused when finished with the current definition, else trained
    and scored (``train=False``: only the finished ones)."""
    row = ctx.row(name)
    if not train:
        return [r for s in row.seeds if (r := _read(ctx.result_path(name, s))) is not None]
    spec = resolve(ctx, row)
    out = []
    for seed in row.seeds:
        path = ctx.result_path(name, seed)
        done = _read(path)
        if done is not None and done.get("hash") == spec["hash"]:
            out.append(done)
            continue
        if done is not None:
            ctx.log(f"openclipart: {name} seed {seed}: its definition changed ({done.get('hash')} -> "
                    f"{spec['hash']}); training it again")
        ctx.log(f"openclipart: training {name} seed {seed} ({spec['settings']['steps']} steps)")
        path.parent.mkdir(parents=True, exist_ok=True)
        with _lock(path.with_suffix(".lock"), f"{name} seed {seed}"):
            program = _pinclip if row.kind == "pinclip" else _openclip
            result = {"row": name, "kind": row.kind, "about": row.about, "table": row.table, "seed": seed,
                      "hash": spec["hash"], "eval_split": row.split, "lr_chosen_by": spec["lr_chosen_by"],
                      "settings": spec["settings"], "machine": machine(), **program(ctx, name, seed, spec)}
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(result, indent=2, default=str) + "\n")
            tmp.replace(path)
        out.append(result)
    return out


@contextmanager
def _lock(path: Path, what: str):
    """One process at a time trains a (row, seed): a second one stops with a line saying which process has it
    (a lock left by a process that is gone is taken over)."""
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            pid = int(path.read_text().strip() or 0)
            try:
                os.kill(pid, 0)
            except (ProcessLookupError, ValueError):
                path.unlink(missing_ok=True)   # its process is gone
                continue
            raise RuntimeError(f"openclipart: {what} is being trained by process {pid} ({path})") from None
    else:
        raise RuntimeError(f"openclipart: could not lock {path}")
    try:
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        yield
    finally:
        path.unlink(missing_ok=True)


def forget(ctx: Context, name: str) -> None:
    """Remove row ``name``'s results and runs, so that it trains afresh (after a change to the library)."""
    import shutil

    for seed in ctx.row(name).seeds:
        ctx.result_path(name, seed).unlink(missing_ok=True)
        for runs in (ctx.workdir / "pinclip" / "runs", ctx.workdir / BENCH_DIR / "runs"):
            for run in runs.glob(f"ocb-{name}-s{seed}-*"):
                shutil.rmtree(run)


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _run_name(name: str, seed: int, spec: dict) -> str:
    return f"ocb-{name}-s{seed}-{spec['hash']}"


def _pinclip(ctx: Context, name: str, seed: int, spec: dict) -> dict:
    from pinclip.embedder import Embedder
    from pinclip.loading import load_run
    from pinclip.settings import CONFIG_DIR, TrainConfig
    from pinclip.training.train import Trainer
    from pinlift.core.config import load_settings, recipe_path
    from pinworld.world import World

    settings = spec["settings"]
    run = _run_name(name, seed, spec)
    cfg = load_settings(TrainConfig, recipe_path(spec["recipe"], CONFIG_DIR, "train_"),
                        {**settings, "workdir": str(ctx.workdir), "run": run, "seed": seed,
                         "split": str(ctx.catalog.split_file)})
    start = time.perf_counter()
    trainer = Trainer(cfg, progress=ctx.progress)
    setup_s = time.perf_counter() - start
    trainer.fit()
    run_dir = trainer.run_dir
    del trainer
    wall = _loop_wall(run_dir / "metrics.jsonl", cfg.batch_size)
    start = time.perf_counter()
    model, tokenizer, saved = load_run(ctx.workdir, run)
    items = ctx.catalog.items(spec["eval_split"])
    dim = max(model.cfg.matryoshka_dims)
    emb = Embedder(model, tokenizer, World(ctx.workdir), batch_size=128, prefixes=(dim,), progress=False
                   ).embed_pins(items["pin_id"].to_numpy(), items["text"].to_list(), kinds=("image", "text"))
    ids = items["pin_id"].to_numpy()
    scores = score(emb.get("image", dim, ids), emb.get("text", dim, ids), items, seed)
    steps = cfg.steps
    return {"steps": steps, "batch_size": cfg.batch_size, "pairs": steps * cfg.batch_size, "train_wall_s": wall,
            "s_per_step": wall / steps if steps else None, "setup_s": setup_s, "eval_s": time.perf_counter() - start,
            "train_items": saved.get("image_text_pins", saved.get("image_text_pairs")),
            "pin_pin": saved.get("pin_pin"), "embedding": f"{dim}-d", "run": str(run_dir), **scores}


def _loop_wall(metrics: Path, batch_size: int) -> float:
    """The training loop's wall time from the run's per-step records (the last record of a step counts, so a
    resumed run's repeated steps are counted once)."""
    per_step = {}
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            record = json.loads(line)
            per_step[record["step"]] = batch_size / record["pairs_per_s"]
    return float(sum(per_step.values()))


def _openclip(ctx: Context, name: str, seed: int, spec: dict) -> dict:
    fields = {f for f in baseline.BaselineConfig.__dataclass_fields__}
    settings = spec["settings"]
    unknown = sorted(set(settings) - fields)
    if unknown:
        raise ValueError(f"openclipart: {name}: baseline settings {unknown}: expected some of {sorted(fields)}")
    cfg = baseline.BaselineConfig(**{**settings, "augment_scale": tuple(settings["augment_scale"]), "seed": seed})
    run_dir = ctx.workdir / BENCH_DIR / "runs" / _run_name(name, seed, spec)
    images, captions = ctx.catalog.train_pairs()
    trained = baseline.train(cfg, images, captions, run_dir, progress=ctx.progress)
    start = time.perf_counter()
    items = ctx.catalog.items(spec["eval_split"])
    image_vecs, text_vecs = baseline.embed(cfg, run_dir, [Path(p) for p in items["image"]], items["text"].to_list())
    scores = score(image_vecs, text_vecs, items, seed)
    steps = trained["steps"]
    return {**trained, "batch_size": cfg.batch_size, "s_per_step": trained["train_wall_s"] / steps if steps else None,
            "eval_s": time.perf_counter() - start, "train_items": len(images),
            "embedding": f"{image_vecs.shape[1]}-d",
            "run": str(run_dir), **scores}


def selection_score(result: dict) -> float:
    """What an LR is chosen by: image→text R@10 + image→image R@10 on validation."""
    return (result["image_text"]["R@10"] or 0.0) + (result["image_image"]["R@10"] or 0.0)


def choose_lr(ctx: Context, kind: str) -> tuple[float, str]:
    """The LR of ``kind`` with the best validation score among its ``val_*_lr*`` rows (seed 0; trained if
    need be); ties go to the smaller LR."""
    candidates = lr_choices(kind)
    scored = []
    for row in candidates:
        result = run_row(ctx, row.name)[0]
        scored.append((selection_score(result), -row.lr, row))
    best = max(scored, key=lambda s: (s[0], s[1]))[2]
    return best.lr, f"validation: best of {', '.join(r.name for r in candidates)} ({best.name})"


def time_matched_steps(ctx: Context) -> int:
    """Steps of PinCLIP that fit in the baseline's mean training wall time, at the work-matched PinCLIP
    row's mean time per step."""
    base, pin = run_row(ctx, "openclip"), run_row(ctx, "pinclip")
    wall = float(np.mean([r["train_wall_s"] for r in base]))
    per_step = sum(r["train_wall_s"] for r in pin) / max(sum(r["steps"] for r in pin), 1)
    return max(1, int(wall // per_step)) if per_step > 0 else WORK_STEPS

