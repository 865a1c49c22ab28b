"""docs/byod.md's walkthrough, run as written: every ``bash`` block of its "Your catalog, end to end" section
line by line through the commands' ``main(argv)``, every ``python`` block executed, in order, in a fresh folder
beside the repository's examples/."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from pinclip.cli import main as pinclip_main
from pinworld.cli import main as pinworld_main

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "byod.md"
SECTION = "## Your catalog, end to end"
COMMANDS = {"pinworld": pinworld_main, "pinclip": pinclip_main}
BLOCK = re.compile(r"```(bash|python)\n(.*?)```", re.S)


def walkthrough_blocks(text: str) -> list[tuple[str, str]]:
    """(language, code) of the section's fenced blocks, in order."""
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    return BLOCK.findall(section)


def test_the_walkthrough_covers_every_step():
    commands = [line.split()[:2] for lang, code in walkthrough_blocks(DOC.read_text()) if lang == "bash"
                for line in code.splitlines() if line.strip()]
    assert [c[0] for c in commands] == ["pinworld", "pinworld", "pinclip", "pinclip", "pinclip", "pinclip", "pinclip",
                                        "pinclip", "pinclip", "pinclip", "pinclip"]
    assert {c[1] for c in commands} == {"import", "validate", "train", "eval", "publish", "embed", "index"}


def test_the_walkthrough_runs_as_written(tmp_path, monkeypatch, capsys):
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    monkeypatch.chdir(tmp_path)
    for lang, code in walkthrough_blocks(DOC.read_text()):
        if lang == "python":
            exec(compile(code, f"{DOC}:python", "exec"), {})
            continue
        for line in filter(str.strip, code.splitlines()):
            prog, *argv = shlex.split(line)
            assert COMMANDS[prog](argv) == 0, f"{line}\n{capsys.readouterr().err}"
    report = json.loads((tmp_path / "catalog/pinclip/runs/first/eval.json").read_text())
    assert set(report["tasks"]) == {"pintext", "board_image"}      # a catalog's tasks; the log tasks are skipped
    out = capsys.readouterr().out
    assert '"version": "v0002", "parent": "v0001", "rows": 302' in out          # the incremental version
    query = json.loads([line for line in out.splitlines() if line.startswith('{"query_pin_id"')][0])
    assert query["query_pin_id"] == 1000000 and len(query["candidates"]) == 5
    assert '"name": "mine", "version": "v0001"' in out
    monkeypatch.chdir(ROOT)     # a run trained under a relative --workdir loads from anywhere
    from pinclip.loading import load_run

    assert load_run(tmp_path / "catalog", "first")[2]["train"]["run"] == "first"


@pytest.mark.parametrize("name", ["openclipart", "new_pins"])
def test_shipped_examples_say_where_they_come_from(name):
    assert "public domain" in (ROOT / "examples" / name / "NOTICE.md").read_text()
