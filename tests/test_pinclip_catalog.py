"""PinCLIP on a catalog alone (pins with image files and texts; no users, logs or world.json): training
without neighbours, with category boards, on a supplied split; evaluation on a split and its refusals;
augmentation; pretraining."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from pinclip import cli
from pinclip.data.dataset import Augment, _crop_box
from pinclip.settings import TrainConfig
from pinclip.training.engaged import supplied_split
from pinclip.training.train import Trainer
from pinlift.core.errors import InputError
from pinlift.core.schema import arrow_schema
from pinworld.world import World

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 50, 220), "yellow": (230, 220, 30)}
N = 48
FAST = ["steps=2", "batch_size=8", "neighbor_batch_size=4", "warmup_steps=1", "vocab_size=200",
        "checkpoint_every=2"]


def make_catalog(root, boards: bool = False, annotations: bool = True):
    """N pins, 4 colour categories: a PNG each (some transparent), a title for most; every 6th pin has no
    title but a keyword annotation (with ``annotations``); categories as boards with ``boards``."""
    world = root / "world"
    (world / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = list(COLOURS)
    pins, notes = [], []
    for i in range(N):
        colour = names[i % 4]
        pixels = np.full((20, 28, 4), (*COLOURS[colour], 255), np.uint8)
        pixels[rng.integers(0, 12):, rng.integers(0, 20):][:6, :6, :3] = rng.integers(0, 255, 3)
        if i % 5 == 0:
            pixels[:4, :, 3] = 0
        Image.fromarray(pixels, "RGBA").save(world / "images" / f"{i}.png")
        pins.append({"pin_id": 100 + i, "created_day": 0, "image_uri": f"images/{i}.png",
                     "title": None if i % 6 == 5 else f"a {colour} picture number {i}", "is_ad": False})
        if annotations and i % 6 == 5:
            notes.append({"pin_id": 100 + i, "day": 0, "annotation": f"{colour} thing", "score": 0.9})
    pq.write_table(pa.Table.from_pylist(pins, schema=arrow_schema("pins")), world / "pins.parquet")
    if notes:
        pq.write_table(pa.Table.from_pylist(notes, schema=arrow_schema("pin_annotations")),
                       world / "pin_annotations.parquet")
    if boards:
        pq.write_table(pa.Table.from_pylist([{"board_id": b, "name": c, "created_day": 0}
                                             for b, c in enumerate(names)], schema=arrow_schema("boards")),
                       world / "boards.parquet")
        pq.write_table(pa.Table.from_pylist([{"pin_id": p["pin_id"], "board_id": i % 4, "day": 0}
                                             for i, p in enumerate(pins)], schema=arrow_schema("pin_board")),
                       world / "pin_board.parquet")
    return root


def write_split(path, assign):
    """A split file: pin i -> assign(i)."""
    pl.DataFrame({"pin_id": [100 + i for i in range(N)], "split": [assign(i) for i in range(N)]}).write_csv(path)
    return str(path)


def config(run_dir) -> dict:
    return json.loads((run_dir / "config.json").read_text())


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """A pins-only catalog (titles and keyword annotations, no boards)."""
    return make_catalog(tmp_path_factory.mktemp("plain"))


@pytest.fixture(scope="module")
def boarded(tmp_path_factory):
    """The same catalog with its categories as boards."""
    return make_catalog(tmp_path_factory.mktemp("boarded"), boards=True)


def test_a_catalog_alone_trains_with_pin_pin_skipped_and_the_held_out_share_said(plain, capsys):
    W = str(plain)
    assert cli.main(["train", "tiny", *FAST, "--workdir", W, "--run", "alone"]) == 0
    err = capsys.readouterr().err
    assert "Pin-to-Pin skipped" in err and "holding out" in err
    saved = config(plain / "pinclip/runs/alone")
    held = saved["heldout"]
    assert held["of"] == N and held["split"] == "cutoff+random" and 0 < held["pins"] < N
    assert held["share"] == pytest.approx(held["pins"] / N)
    assert held["why"].startswith(f"holding out {held['pins']} of {N} pins") and "0 created on/after" in held["why"]
    assert "heldout_share 0.15" in held["why"]      # the tiny recipe's share, now said
    assert saved["pin_pin"] is False and any("Pin-to-Pin skipped" in n for n in saved["notes"])
    assert saved["train"]["cutoff_day"] == 1           # every pin known: the catalog's days end at 1
    # pins missing a title keep their keyword pair
    trainer = Trainer(TrainConfig(workdir=W, run="alone_data", steps=0, batch_size=8, vocab_size=200),
                      progress=False)
    untitled = set(range(105, 100 + N, 6)) - set(trainer.split.heldout.tolist())
    assert untitled and untitled <= set(trainer.image_text.pin_ids.tolist())
    assert len(trainer.image_text) == N - len(trainer.split.heldout)
    # pin_pin=false used to stop on "0 examples are fewer than one global batch" too
    assert cli.main(["train", "tiny", *FAST, "pin_pin=false", "--workdir", W, "--run", "no_pp", "--quiet"]) == 0


def test_titles_only_train_without_the_keyword_term(tmp_path):
    W = str(make_catalog(tmp_path, annotations=False))
    trainer = Trainer(TrainConfig(workdir=W, run="titles", steps=1, batch_size=8, warmup_steps=1, vocab_size=200),
                      progress=False)
    log = trainer.fit()
    assert not trainer.use_keyword and not any(k.startswith("image_keyword") for k in log[0])
    assert np.isfinite(log[0]["loss"]) and log[0]["image_descriptive/256"] > 0
    titled = {100 + i for i in range(N) if i % 6 != 5}
    assert set(trainer.image_text.pin_ids.tolist()) == titled - set(trainer.split.heldout.tolist())


def test_boards_give_pin_pin_and_eval_scores_a_supplied_split(boarded, tmp_path, capsys):
    W = str(boarded)
    split = write_split(tmp_path / "split.csv", lambda i: ("train", "train", "validation", "test")[i % 4 if i < 16
                                                                                                   else (i // 4) % 4])
    assert cli.main(["train", "tiny", *FAST, f"split={split}", "--workdir", W, "--run", "cats", "--quiet"]) == 0
    saved = config(boarded / "pinclip/runs/cats")
    assert saved["pin_pin"] is True and saved["neighbor_candidates"] > 0
    assert saved["heldout"]["split"] == split and saved["heldout"]["pins"] == sum(
        1 for i in range(N) if ("train", "train", "validation", "test")[i % 4 if i < 16 else (i // 4) % 4] != "train")

    capsys.readouterr()
    assert cli.main(["eval", "--workdir", W, "--run", "cats", "--split", split, "--split-name", "test", "--quiet"]) == 0
    out = json.loads((boarded / "pinclip/runs/cats/eval.json").read_text())
    assert out["mode"] == "catalog" and out["trained_on"] == 0 and out["ks"] == [1, 5, 10]
    assert set(out["tasks"]) == {"pintext", "board_image"} and out["tasks"]["board_image"]["queries"] > 0
    assert {"related_image", "search_image"} <= set(out["skipped"])
    assert out["heldout_pins"] == sum(1 for i in range(N) if ("train", "train", "validation", "test")
                                      [i % 4 if i < 16 else (i // 4) % 4] == "test")
    table = capsys.readouterr().out
    assert "board_image" in table and "R@1/5/10" in table

    # a plain list of pin ids, and a pins column, are splits too
    (tmp_path / "ids.txt").write_text("\n".join(str(100 + i) for i in range(16, 32)) + "\n")
    assert cli.main(["eval", "--workdir", W, "--run", "cats", "--split", str(tmp_path / "ids.txt"), "--quiet"]) == 0
    out = json.loads((boarded / "pinclip/runs/cats/eval.json").read_text())
    assert out["heldout_pins"] == 16 and out["trained_on"] > 0


def test_eval_refuses_zero_queries(plain, tmp_path, capsys):
    W = str(plain)
    assert cli.main(["train", "tiny", *FAST, "steps=0", "--workdir", W, "--run", "zero", "--quiet"]) == 0
    # untitled pins have no descriptive text, and there are no boards: nothing to ask
    split = write_split(tmp_path / "untitled.csv", lambda i: "validation" if i % 6 == 5 else "train")
    capsys.readouterr()
    assert cli.main(["eval", "--workdir", W, "--run", "zero", "--split", split, "--quiet"]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "queries" in err and "none among the 8 pins" in err
    assert not (plain / "pinclip/runs/zero/eval.json").exists()
    assert cli.main(["eval", "--workdir", W, "--run", "zero", "--split", split, "--split-name", "test", "--quiet"]) != 0


@pytest.mark.parametrize("rows, message", [
    ({"pin_id": [100, 999], "split": ["train", "test"]}, "1 unknown, e.g. 999"),
    ({"pin_id": [100, 101], "split": ["train", "val"]}, "expected train, validation or test, found 'val'"),
    ({"pin_id": [100, 100], "split": ["train", "test"]}, "1 pins more than once, e.g. 100"),
    ({"pin": [100], "split": ["train"]}, "pin_id: expected a column of pin ids"),
])
def test_a_bad_split_is_one_line(plain, tmp_path, rows, message):
    path = tmp_path / "split.csv"
    pl.DataFrame(rows).write_csv(path)
    with pytest.raises(InputError, match=message):
        supplied_split(World(plain), str(path))
    with pytest.raises(InputError, match="expected an existing .parquet, .csv, .txt file or a column"):
        supplied_split(World(plain), "no_such_column")


def test_a_bad_split_stops_training_before_anything_is_written(plain, tmp_path, capsys):
    path = tmp_path / "split.csv"
    pl.DataFrame({"pin_id": [100, 101], "split": ["train", "dev"]}).write_csv(path)
    assert cli.main(["train", "tiny", *FAST, f"split={path}", "--workdir", str(plain), "--run", "bad"]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'dev'" in err
    assert not (plain / "pinclip/runs/bad").exists()
    (tmp_path / "ids.txt").write_text("100\n101\n")     # a plain list of pins names no train rows
    assert cli.main(["train", "tiny", *FAST, f"split={tmp_path / 'ids.txt'}", "--workdir", str(plain),
                     "--run", "bad"]) != 0
    assert "split: expected rows of the train split to train on, found none" in capsys.readouterr().err
    assert not (plain / "pinclip/runs/bad").exists()


def test_a_pins_column_is_a_split(tmp_path):
    W = make_catalog(tmp_path)
    pins = pl.read_parquet(W / "world/pins.parquet")
    pins.with_columns(pl.when(pl.col("pin_id") % 4 == 0).then(pl.lit("test")).otherwise(pl.lit("train"))
                      .alias("fold")).write_parquet(W / "world/pins.parquet")
    split = supplied_split(World(W), "fold")
    assert split.height == N and split.filter(pl.col("split") == "test").height == N // 4


def test_augmentation_is_seeded_and_off_is_identity():
    x = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert Augment()(x, np.random.default_rng(0)) is x
    assert torch.equal(Augment(flip=1.0)(x, np.random.default_rng(0)), x.flip(-1))
    on = Augment((0.5, 1.0), 0.5)
    a, b = on(x, np.random.default_rng([3, 7])), on(x, np.random.default_rng([3, 7]))
    assert torch.equal(a, b) and a.shape == x.shape and not torch.equal(a, x)
    assert not torch.equal(a, on(x, np.random.default_rng([3, 8])))
    rng = np.random.default_rng(1)
    for _ in range(200):
        top, left, h, w = _crop_box(16, 24, (0.5, 1.0), rng)
        assert 0 <= top and top + h <= 16 and 0 <= left and left + w <= 24
        assert 0.5 * 16 * 24 * 0.9 <= h * w <= 16 * 24


def test_augmented_training_is_reproducible(plain):
    W = str(plain)
    base = dict(workdir=W, steps=1, batch_size=8, warmup_steps=1, vocab_size=200, heldout_share=0.2)
    tok = dict(tokenizer=str(plain / "pinclip/runs/alone/tokenizer.json"))
    runs = {name: Trainer(TrainConfig(run=name, **base, **tok, **aug), progress=False).fit()[0]["loss"]
            for name, aug in (("aug1", dict(augment_scale=(0.6, 1.0), augment_flip=0.5)),
                              ("aug2", dict(augment_scale=(0.6, 1.0), augment_flip=0.5)),
                              ("noaug", {}))}
    assert runs["aug1"] == runs["aug2"] != runs["noaug"]


def test_pretrain_on_a_catalog(plain, tmp_path, capsys):
    assert cli.main(["pretrain-image", "--workdir", str(plain), "--steps", "2", "--batch-size", "8", "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["cutoff_day"] == 1 and report["mAP"] is None and report["eval_pins"] == 0
    bare = make_catalog(tmp_path, annotations=False)
    assert cli.main(["pretrain-text", "--workdir", str(bare), "--steps", "2", "--quiet"]) != 0
    assert "annotation: expected annotations before the cutoff day 1" in capsys.readouterr().err


def test_a_pins_table_alone_trains_evaluates_on_a_split_and_publishes(tmp_path, capsys):
    """The smallest workspace: one table, world/pins.parquet, with four columns (id, day, image, title)."""
    from pinworld.cli import main as pinworld_main

    make_catalog(tmp_path, annotations=False)
    pins = pq.read_table(tmp_path / "world/pins.parquet").select(["pin_id", "created_day", "image_uri", "title"])
    pq.write_table(pins, tmp_path / "world/pins.parquet")
    assert sorted(p.name for p in (tmp_path / "world").iterdir()) == ["images", "pins.parquet"]
    W = str(tmp_path)
    assert pinworld_main(["validate", "--workdir", W]) == 0
    split = write_split(tmp_path / "split.csv", lambda i: "test" if i % 3 == 0 else "train")
    assert cli.main(["train", "tiny", *FAST, f"split={split}", "--workdir", W, "--run", "one_table", "--quiet"]) == 0
    assert cli.main(["eval", "--workdir", W, "--run", "one_table", "--split", split, "--split-name", "test",
                     "--quiet"]) == 0
    report = json.loads((tmp_path / "pinclip/runs/one_table/eval.json").read_text())
    assert report["tasks"]["pintext"]["queries"] == len(range(0, N, 3)) - sum(i % 6 == 5 for i in range(0, N, 3))
    assert "board_image" in report["skipped"]          # no boards: the task says why it is not scored
    assert cli.main(["publish", "--workdir", W, "--source", "run", "--run", "one_table", "--name", "mine",
                     "--quiet"]) == 0
    manifest = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (manifest["version"], manifest["rows"]) == ("v0001", N)
