"""docs/byod.md's "Your experiment logs, end to end", run as written: the test writes a small team's logs in the
documented schema (with a planted lift and a few rows to exclude), each ``yaml`` block to the file its first line
names, then runs the ``python`` blocks and every ``bash`` line through the command's ``main(argv)``, in order."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from abtest.cli import main as abtest_main

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "byod.md"
SECTION = "## Your experiment logs, end to end"
BLOCK = re.compile(r"```(bash|python|yaml)\n(.*?)```", re.S)
START, DAYS, USERS, LIFT = 10, 7, 600, 0.4


def walkthrough_blocks(text: str) -> list[tuple[str, str]]:
    """(language, code) of the section's fenced blocks, in order."""
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    return BLOCK.findall(section)


def _events(rng, users, taste, days, treated, first_day, request0: int) -> list[dict]:
    """Search slates of 5 pins per user and day from the user's first exposure; P(click) = taste × (1 + LIFT) for
    the treatment."""
    rows, request = [], request0
    for u in users:
        for day in days:
            if day < first_day[u]:
                continue
            request += 1
            for pos in range(5):
                row = {"day": day, "user_id": int(u), "surface": "search", "request_id": request,
                       "pin_id": int(rng.integers(0, 1000)), "position": pos, "value": None}
                rows.append({**row, "action": "impression"})
                if rng.random() < taste[u] * (1 + LIFT * treated[u]):
                    rows.append({**row, "action": "click"})
    return rows


def write_team_logs(root: Path) -> dict:
    """The team's exposures and events (plus 12 exact duplicates, 20 events after the window, 15 before first
    exposure) and its pre-period events; returns the planted exclusions."""
    rng = np.random.default_rng(0)
    users = np.arange(USERS)
    taste = rng.beta(2, 20, USERS)
    treated = (users % 2).astype(bool)
    first = {int(u): START + int(rng.integers(0, 3)) for u in users}
    exp = root / "ws" / "experiments" / "checkout_v2"
    for name in ("exposures", "events"):
        (exp / name).mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([{"experiment": "checkout_v2", "user_id": int(u),
                                          "variant": "treatment" if treated[u] else "control",
                                          "first_exposure_day": first[int(u)]} for u in users]),
                   exp / "exposures" / "part-0.parquet")
    events = _events(rng, users, taste, range(START, START + DAYS), treated, first, 0)
    late = [{**e, "day": START + DAYS, "request_id": e["request_id"] + 10**7} for e in events[:20]]
    early = [{**e, "day": START - 1, "request_id": e["request_id"] + 2 * 10**7} for e in events[20:35]]
    pq.write_table(pa.Table.from_pylist(events + events[:12] + late + early), exp / "events" / "part-0.parquet")
    pre = _events(rng, users, taste, range(START - 7, START), np.zeros(USERS, bool), dict.fromkeys(first, 0), 10**8)
    pq.write_table(pa.Table.from_pylist(pre), root / "pre_events.parquet")
    return {"duplicate_rows": 12, "after_window": 20, "before_exposure": 15, "without_exposure": 0}


def test_the_walkthrough_covers_every_step():
    blocks = walkthrough_blocks(DOC.read_text())
    assert [lang for lang, _ in blocks] == ["yaml", "python", "yaml", "bash"]
    assert [code.splitlines()[0] for lang, code in blocks if lang == "yaml"] == ["# team/ws/world/surfaces.yaml",
                                                                                "# team/exp.yaml"]
    assert "arms" not in blocks[2][1]       # analysis-only


def test_the_walkthrough_runs_as_written(tmp_path, monkeypatch, capsys):
    planted = write_team_logs(tmp_path / "team")
    monkeypatch.chdir(tmp_path)
    for lang, code in walkthrough_blocks(DOC.read_text()):
        if lang == "yaml":
            target = Path(code.splitlines()[0].removeprefix("# "))
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(code)
        elif lang == "python":
            exec(compile(code, f"{DOC}:python", "exec"), {})
        else:
            for line in filter(str.strip, code.splitlines()):
                prog, *argv = shlex.split(line)
                assert prog == "abtest" and abtest_main(argv) == 0, f"{line}\n{capsys.readouterr().err}"
    out = capsys.readouterr().out
    assert ("excluded: 12 exact duplicate rows, 20 events after the window (day ≥ 17), "
            "15 events before first exposure") in out
    exp = tmp_path / "team" / "ws" / "experiments" / "checkout_v2"
    a = json.loads((exp / "analysis.json").read_text())
    assert a["events"]["excluded"] == planted and a["pre_period"]["users_with_row"] == USERS
    ctr = next(r for r in a["results"] if r["key"] == "ctr/search")
    assert ctr["method"] == "cuped_delta_ratio" and ctr["cuped"]["variance_reduction_factor"] < 0.95
    assert ctr["significant"] and ctr["relative"]["ci_low"] < LIFT < ctr["relative"]["ci_high"]
    assert a["verdict"]["primary"]["key"] == "ctr/search" and (exp / "report.html").is_file()
