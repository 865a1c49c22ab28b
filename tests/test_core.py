"""pinlift.core: the config loader's errors and help, run names and the resume rule, the error wrapper, and the
docs' column tables against the schema."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytest
from pydantic import Field

from pinlift.core import docs
from pinlift.core.cli import run_command
from pinlift.core.config import Settings, fields_help, load_settings
from pinlift.core.errors import InputError
from pinlift.core.runs import RunDir, check_name

ROOT = Path(__file__).resolve().parents[1]


class Example(Settings):
    lr: float = Field(2e-4, gt=0, description="learning rate")
    steps: int = Field(10, ge=0, description="optimizer steps")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="autocast dtype")
    pin_pin: bool = Field(True, description="the Pin-to-Pin loss")
    walk: dict = Field(default_factory=dict, description="random-walk settings")


def test_settings_from_file_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("steps: 5\nlr: 2e-4\n")  # YAML 1.1 reads 2e-4 as a string; the float field takes the number
    s = load_settings(Example, f, ["steps=7", "walk.restart=0.3"])
    assert (s.steps, s.lr, s.walk) == (7, 2e-4, {"restart": 0.3})


@pytest.mark.parametrize("text, overrides, message", [
    ("steps: 5\nprecision: fp16\n", [], "c.yaml:2: precision: expected one of 'fp32' or 'bf16', found 'fp16'"),
    ("steps: 5\n", ["seed=abc"], "command line: seed: expected a known field, found unknown field 'seed'"),
    ("steps: 5\n", ["pin_pin=maybe"], "command line: pin_pin: expected a valid boolean, found 'maybe'"),
    ("steps: 5\n", ["lr=-1"], "command line: lr: expected greater than 0, found -1"),
    ("steps: [5\n", [], "c.yaml:2: yaml: expected valid YAML, found"),
    ("- 1\n", [], "c.yaml:1: file: expected a mapping of settings, found list"),
    ("steps: 5\n", ["steps"], "command line: steps: expected key=value, found 'steps'"),
])
def test_config_errors_name_file_line_field(tmp_path, text, overrides, message):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(InputError) as err:
        load_settings(Example, f, overrides)
    assert str(err.value).removeprefix(str(tmp_path) + "/").startswith(message)
    assert "\n" not in str(err.value)


def test_fields_help_lists_every_key_with_type_and_default():
    lines = fields_help(Example).splitlines()
    assert len(lines) == len(Example.model_fields)
    assert lines[0].split()[:3] == ["lr", "float", "0.0002"]
    assert any(line.split()[:2] == ["precision", "fp32"] for line in lines)


@pytest.mark.parametrize("name", ["../x", "a/b", "..", ".hidden", "", "x y", "/abs"])
def test_run_names_are_never_paths(name):
    with pytest.raises(InputError, match="expected a name of letters, digits"):
        check_name(name, "--run")


def test_resume_only_with_the_same_defining_config(tmp_path):
    run = RunDir(tmp_path, "r1", "prog", extends=("steps",))
    run.start({"lr": 1.0, "steps": 10})
    run.start({"lr": 1.0, "steps": 20})                       # extending keys may change
    with pytest.raises(InputError) as err:
        run.start({"lr": 2.0, "steps": 20})
    assert "lr 1.0 -> 2.0" in str(err.value) and "steps" not in str(err.value) and "--restart" in str(err.value)
    (run.path / "checkpoint").write_text("old")
    run.start({"lr": 2.0, "steps": 20}, restart=True)         # starts over: the directory is cleared
    assert not (run.path / "checkpoint").exists() and run.saved()["config"]["lr"] == 2.0


def test_error_wrapper_prints_one_line_and_debug_raises(capsys):
    def fail():
        raise InputError("c.yaml:3: lr: expected a number, found 'x'\nsecond line")

    assert run_command("pinclip train", fail) == 2
    assert capsys.readouterr().err == "pinclip train: c.yaml:3: lr: expected a number, found 'x'\n"
    with pytest.raises(InputError):
        run_command("pinclip train", fail, debug=True)
    with pytest.raises(KeyError):             # a bug is not an input error: it keeps its traceback
        run_command("x", lambda: {}["k"])


@pytest.mark.parametrize("doc", ["docs/data.md", "docs/abtest.md"])
def test_docs_column_tables_are_generated_from_the_schema(doc):
    text = (ROOT / doc).read_text()
    assert "<!-- schema: " in text
    assert docs.render(text) == text, f"run `python -m pinlift.core.docs {doc}`"
    # and the check can fail: a changed cell is put back
    broken = text.replace("| `pin_id` | int | no |", "| `pin_id` | string | no |", 1)
    assert broken == text or docs.render(broken) == text


@pytest.mark.parametrize("argv", [["train", "tiny", "--run", "../../x"], ["eval", "--run", "a/b"]])
def test_pinclip_refuses_a_run_name_that_is_a_path(tmp_path, capsys, argv):
    from pinclip.cli import main

    assert main([*argv, "--workdir", str(tmp_path)]) == 2
    assert "run: expected a name of letters, digits" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_marked_section_is_replaced_in_place_appended_once_and_never_doubled():
    """The sections commands write into a shared page (docs/results.md: ranking.compare's, the Open Clip Art
    table's)."""
    from pinlift.core.docs import replace_section

    text = replace_section("# results\n", "bench", "first", heading="## Bench")
    text = replace_section(text + "\nafter\n", "bench", "second", heading="## Bench")
    assert text.count("<!-- bench:begin -->") == 1 and text.count("## Bench") == 1
    assert "second" in text and "first" not in text and text.endswith("after\n")
    for broken in (text + "\n<!-- bench:begin -->\n", text.replace("<!-- bench:end -->", "")):
        with pytest.raises(ValueError, match="broken or repeated"):
            replace_section(broken, "bench", "third")
