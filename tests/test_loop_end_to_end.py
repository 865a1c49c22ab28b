"""The whole loop on a tiny world, as `make demo` runs it on the demo world: world -> image pretraining
-> PinCLIP training -> evaluation -> publish -> ranking arms -> A/B simulate + analyze -> summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from abtest import cli as abtest_cli
from pinclip import cli as pinclip_cli
from pinlift import summary
from pinworld import cli as pinworld_cli
from ranking import compare

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "pinclip_ranking.yaml"


@pytest.fixture(scope="session")
def loop_workdir(tmp_path_factory):
    """A tiny workspace of its own, taken through every stage once (the stages write their files)."""
    w = tmp_path_factory.mktemp("loop")
    W = str(w)
    assert pinworld_cli.main(["generate", "--workdir", W, "--preset", "tiny", "--seed", "0", "--quiet"]) == 0
    assert pinclip_cli.main(["pretrain-image", "--workdir", W, "--steps", "20", "--batch-size", "32", "--quiet"]) == 0
    assert pinclip_cli.main(["train", "tiny", "steps=20", "batch_size=32", "vocab_size=2000", "pretrained_image=image",
                             "--workdir", W, "--run", "tiny", "--quiet"]) == 0
    assert pinclip_cli.main(["eval", "--workdir", W, "--run", "tiny", "--max-queries", "200", "--distractors", "1000",
                             "--quiet"]) == 0
    assert pinclip_cli.main(["publish", "--workdir", W, "--source", "run", "--run", "tiny", "--name", "pinclip",
                             "--quiet"]) == 0
    assert compare.main(["--workdir", W, "--arms", "ids,pinclip", "--seeds", "0", "--epochs", "1",
                         "--results", ""]) == 0
    exp = yaml.safe_load(EXAMPLE.read_text())
    exp.update(days={"start": 26, "count": 3}, pre_period_days=7, users={"count": 300})   # tiny: cutoff day 26
    exp_path = w / "exp.yaml"
    exp_path.write_text(yaml.safe_dump(exp))
    assert abtest_cli.main(["simulate", str(exp_path), "--workdir", W, "--analyze", "--quiet"]) == 0
    return w


def test_every_stage_reports_a_figure(loop_workdir, capsys):
    rows = {stage: (headline, path) for stage, headline, path in summary.stage_figures(loop_workdir)}
    assert [s for s, (h, _) in rows.items() if h.startswith("not")] == []
    assert rows["world"][0].startswith("tiny seed 0")
    assert "mAP" in rows["image pretraining"][0] and "R@10 (64-d)" in rows["PinCLIP eval"][0]
    assert rows["publish"][0].startswith("pinclip@v0001: 3,000 pins")
    assert "homefeed/repin all: AUC" in rows["ranking"][0]
    headline, report = rows["A/B pinclip_ranking"]
    assert "repins/homefeed" in headline and (loop_workdir / report).is_file()
    assert summary.main(["--workdir", str(loop_workdir)]) == 0
    assert "A/B pinclip_ranking" in capsys.readouterr().out


def test_stage_outputs_carry_the_generator_version(loop_workdir):
    w = loop_workdir
    version = json.loads((w / "world/world.json").read_text())["generator_version"]
    assert json.loads((w / "pinclip/runs/tiny/config.json").read_text())["generator_version"] == version
    assert json.loads((w / "embeddings/pinclip/v0001/manifest.json").read_text())["source"]["generator_version"] == version
    assert json.loads((w / "ranking/runs/pinclip_s0/eval.json").read_text())["generator_version"] == version
    analysis = json.loads((w / "experiments/pinclip_ranking/analysis.json").read_text())
    assert analysis["generator_version"] == version
    assert {d["key"] for d in analysis["lift_differences"]} >= {"fresh_repins/homefeed - repins/homefeed"}


def test_completed_stages_are_skipped(loop_workdir, capsys):
    W = str(loop_workdir)
    assert pinworld_cli.main(["generate", "--workdir", W, "--preset", "tiny", "--seed", "0"]) == 0
    assert "skipping" in capsys.readouterr().out
    before = (loop_workdir / "pinclip/runs/tiny/metrics.jsonl").read_text()
    assert pinclip_cli.main(["train", "tiny", "steps=20", "batch_size=32", "vocab_size=2000", "pretrained_image=image",
                             "--workdir", W, "--run", "tiny", "--quiet"]) == 0
    assert (loop_workdir / "pinclip/runs/tiny/metrics.jsonl").read_text() == before   # resumed at its end
