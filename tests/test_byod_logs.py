"""docs/byod.md's "Your impression logs, end to end", run as written: its python blocks executed and its bash
blocks run line by line through the commands' ``main(argv)``, in order, in a fresh folder; the logs its first
block writes carry a planted signal, which the rankers must find."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from pinclip.cli import main as pinclip_main
from pinworld.cli import main as pinworld_main
from ranking.compare import main as compare_main

DOC = Path(__file__).resolve().parents[1] / "docs" / "byod.md"
SECTION = "## Your impression logs, end to end"
COMMANDS = {"pinworld": pinworld_main, "pinclip": pinclip_main, "python -m ranking.compare": compare_main}
BLOCK = re.compile(r"```(bash|python)\n(.*?)```", re.S)


def walkthrough_blocks() -> list[tuple[str, str]]:
    """(language, code) of the section's fenced blocks, in order."""
    return BLOCK.findall(DOC.read_text().split(SECTION, 1)[1].split("\n## ", 1)[0])


def command(line: str):
    """The command's ``main`` and its argv: ``pinworld ...``, ``pinclip ...`` or ``python -m MODULE ...``."""
    words = shlex.split(line)
    n = 3 if words[0] == "python" else 1
    return COMMANDS[" ".join(words[:n])], words[n:]


def test_the_walkthrough_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    blocks = walkthrough_blocks()
    assert [lang for lang, _ in blocks] == ["python", "bash", "bash", "bash", "python"]
    for lang, code in blocks:
        if lang == "python":
            exec(compile(code, f"{DOC}:python", "exec"), {})
            continue
        for line in filter(str.strip, code.splitlines()):
            main, argv = command(line)
            assert main(argv) == 0, f"{line}\n{capsys.readouterr().err}"
    out = json.loads((tmp_path / "shop/ranking/compare.json").read_text())
    assert out["arms"] == ["ids", "mine"]
    task = out["summary"]["explore/click"]
    assert task["all"]["ids"]["auc_mean"] > 0.6
    # the planted signal: about +0.07 on fresh pins; a clear margin until the lead requires "beyond the interval"
    assert task["fresh"]["mine"]["lift_mean"] > 0.03, task["fresh"]
    assert capsys.readouterr().out.splitlines()[-1].startswith("shopvec@v0001 [[")
