"""Every expected failure of a command is one line on stderr naming the file, field and what was expected, exit
status 2, and nothing half-written; every command takes --quiet; JSON on stdout is JSON alone."""

from __future__ import annotations

import json
import os
import shutil
import warnings

import polars as pl
import pytest

from abtest import cli as abtest_cli
from pinclip import cli as pinclip_cli
from pinlift.readouts import summary
from pinworld import cli as pinworld_cli
from ranking import compare, train as ranking_train

SMALL = ["batch_size=32", "vocab_size=2000", "warmup_steps=1", "steps=1"]


def _mirror(src, dst, *skip: str):
    """``src``'s world and logs as links in ``dst`` (cheap, and the session's world stays untouched), but
    ``skip``: the relative paths a test writes itself."""
    for path in src.rglob("*"):
        rel = path.relative_to(src)
        if path.is_file() and rel.parts[0] in ("world", "logs") and str(rel) not in skip:
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(path, dst / rel)
    return dst


def _truncated(src, dst, rel: str):
    """A mirror of ``src`` whose file ``rel`` lost its second half."""
    _mirror(src, dst, rel)
    data = (src / rel).read_bytes()
    (dst / rel).parent.mkdir(parents=True, exist_ok=True)
    (dst / rel).write_bytes(data[:len(data) // 2])
    return dst


def _one_line(capsys, *parts: str) -> str:
    """The command's stderr: one line holding every one of ``parts``."""
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and all(p in err for p in parts), err
    return err


def test_truncated_impressions_partition(tiny_workdir, tmp_path, capsys):
    rel = "logs/impressions/day=3/surface=homefeed/part-0.parquet"
    w = _truncated(tiny_workdir, tmp_path, rel)
    assert pinworld_cli.main(["validate", "--workdir", str(w), "--skip-images"]) == 2
    _one_line(capsys, "pinworld validate: logs/impressions: expected readable Parquet", rel)


def test_catalog_of_a_corrupt_table_leaves_nothing(tiny_workdir, tmp_path, capsys):
    w = _truncated(tiny_workdir, tmp_path, "world/pins.parquet")
    for _ in range(2):
        assert pinworld_cli.main(["catalog", "--workdir", str(w)]) == 2
        _one_line(capsys, "pinworld catalog: ", "world/pins.parquet: pins: expected readable Parquet files")
    assert not list(w.glob("catalog.duckdb*"))


def test_truncated_checkpoint_on_publish_and_resume(tiny_workdir, tiny_pinclip_run, tmp_path, capsys):
    w = _mirror(tiny_workdir, tmp_path)
    run = w / "pinclip" / "runs" / tiny_pinclip_run
    shutil.copytree(tiny_workdir / "pinclip" / "runs" / tiny_pinclip_run, run)
    ckpt = run / "checkpoints" / (run / "checkpoints" / "LATEST").read_text().strip()
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    expected = f"{ckpt}: checkpoint: expected a complete torch checkpoint"
    assert pinclip_cli.main(["publish", "--workdir", str(w), "--run", tiny_pinclip_run, "--quiet"]) == 2
    _one_line(capsys, "pinclip publish: ", expected)
    assert not (w / "embeddings").exists()
    # the fixture's settings, one step more: the run resumes from its (truncated) checkpoint
    assert pinclip_cli.main(["train", "steps=9", "batch_size=32", "warmup_steps=2", "vocab_size=2000",
                             "checkpoint_every=8", "--workdir", str(w), "--run", tiny_pinclip_run, "--quiet"]) == 2
    _one_line(capsys, "pinclip train: ", expected)


def test_vocabulary_mismatch_leaves_no_run(tiny_workdir, tiny_pinclip_run, tmp_path, capsys):
    w = _mirror(tiny_workdir, tmp_path)
    tokenizer = tiny_workdir / "pinclip" / "runs" / tiny_pinclip_run / "tokenizer.json"   # 2000 tokens
    assert pinclip_cli.main(["train", *SMALL, f"tokenizer={tokenizer}", "vocab_size=500", "--workdir", str(w),
                             "--run", "mismatch", "--quiet"]) == 2
    _one_line(capsys, "tokenizer.json: vocab_size: expected at least its", "found 500")
    assert not (w / "pinclip" / "runs" / "mismatch").exists()


def test_bad_yaml_in_an_override_or_a_file(tmp_path, capsys):
    assert pinclip_cli.main(["train", "walk=[1,"]) == 2
    _one_line(capsys, "pinclip train: command line: walk: expected a YAML value, found '[1,'")
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: 3\nlr: [1,\n")
    assert pinclip_cli.main(["train", str(bad)]) == 2
    _one_line(capsys, f"pinclip train: {bad}:", ": yaml: expected valid YAML")


@pytest.mark.parametrize("override, line", [
    ("walk.restart_prob=2", "command line: walk.restart_prob: expected less than 1, found 2"),
    ("walk.steps=3", "command line: walk.steps: expected a known field, found unknown field 'steps'"),
    ("model_overrides.text.width=abc", "command line: model_overrides.text.width: expected a valid integer, "
                                       "found 'abc'"),
    ("seed=abc", "command line: seed: expected a valid integer, found 'abc'"),
    ("pin_pin=maybe", "command line: pin_pin: expected a valid boolean, found 'maybe'"),
    ("pin_pin=1", "command line: pin_pin: expected a valid boolean, found 1"),
])
def test_bad_setting_names_its_field(override, line, capsys):
    assert pinclip_cli.main(["train", override]) == 2
    _one_line(capsys, f"pinclip train: {line}")


def test_unreadable_image(tiny_workdir, tmp_path, capsys):
    w = _mirror(tiny_workdir, tmp_path, "world/pins.parquet")
    (w / "world" / "images" / "garbage.png").write_bytes(b"not an image" * 10)
    pins = pl.read_parquet(tiny_workdir / "world" / "pins.parquet")
    pins.with_columns(image_uri=pl.lit("images/garbage.png")).write_parquet(w / "world" / "pins.parquet")
    assert pinclip_cli.main(["pretrain-image", "steps=1", "batch_size=8", "eval_pins=8", "--workdir", str(w),
                             "--quiet"]) == 2
    _one_line(capsys, "pinclip pretrain-image: ", "garbage.png: image_uri: expected an image file (PNG, JPEG, ...), "
                      "found an unreadable file")
    assert not (w / "pinclip" / "pretrain" / "image").exists()


def test_cutoff_day_outside_the_log_window(tiny_workdir, capsys):
    W = ["--workdir", str(tiny_workdir), "--quiet"]
    line = "cutoff_day: expected a day inside the log window (1 to 39), found 999"
    for main, argv in [(pinclip_cli.main, ["train", "cutoff_day=999", *W, "--run", "late"]),
                       (pinclip_cli.main, ["pretrain-image", "cutoff_day=999", *W, "--run", "late"]),
                       (ranking_train.main, ["cutoff_day=999", *W, "--run-name", "late"])]:
        assert main(argv) == 2
        _one_line(capsys, line)
    assert not list(tiny_workdir.glob("*/*/late"))


def test_pretrain_text_prints_json_alone(tiny_workdir, tmp_path, capfd):
    w = _mirror(tiny_workdir, tmp_path)
    assert pinclip_cli.main(["pretrain-text", "steps=1", "batch_size=8", "eval_pins=8", "vocab_size=500",
                             "--workdir", str(w), "--quiet"]) == 0
    out, err = capfd.readouterr()
    assert json.loads(out)["tower"] == "text" and err == ""


@pytest.mark.parametrize("main, argv", [
    (pinworld_cli.main, [cmd]) for cmd in ("generate", "validate", "summary", "catalog", "export-oracle")] + [
    (pinclip_cli.main, [cmd]) for cmd in ("train", "pretrain-image", "pretrain-text", "eval", "ablate", "publish")] + [
    (pinclip_cli.main, ["index", cmd]) for cmd in ("build", "query")] + [
    (abtest_cli.main, [cmd]) for cmd in ("simulate", "analyze", "validate")] + [
    (ranking_train.main, []), (compare.main, []), (summary.main, [])])
def test_every_command_takes_quiet(main, argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--help"])
    assert exc.value.code == 0 and "--quiet" in capsys.readouterr().out


def test_known_torchrec_warnings_are_filtered_by_their_text():
    from ranking import _WARNINGS, quiet_known_warnings

    with warnings.catch_warnings(record=True) as seen:
        quiet_known_warnings()    # as importing ranking does (pytest resets the filters around each test)
        for text in (*_WARNINGS, "another warning"):
            warnings.warn(text + " (more text)", UserWarning)
    assert [str(w.message) for w in seen] == ["another warning (more text)"]
