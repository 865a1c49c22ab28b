"""The whole loop on a tiny world, as `make demo DEMO=full` runs it on the demo world: world -> image pretraining
-> PinCLIP training -> evaluation -> publish -> ranking arms -> A/B simulate + analyze -> summary."""

from __future__ import annotations

import json

from pinclip import cli as pinclip_cli
from pinlift.core.curves import CURVES, TB_DIR, TRAIN_LOSS, read_scalars
from pinlift.readouts import summary
from pinworld import cli as pinworld_cli


def test_every_stage_reports_a_figure(loop_workdir, capsys):
    rows = {stage: (headline, path) for stage, headline, path in summary.stage_figures(loop_workdir)}
    assert [s for s, (h, _) in rows.items() if h.startswith("not")] == []
    assert rows["world"][0].startswith("tiny seed 0")
    assert "mAP" in rows["image pretraining"][0] and "mAP" in rows["text pretraining"][0]
    assert "R@10 (64-d)" in rows["PinCLIP eval"][0]
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


def test_every_training_run_has_curves(loop_workdir):
    w = loop_workdir
    runs = [w / "pinclip/pretrain/image", w / "pinclip/pretrain/text", w / "pinclip/runs/tiny",
            *sorted((w / "ranking/runs").iterdir())]
    assert len(runs) == 5   # the ids and pinclip arms
    for run in runs:
        assert list((run / TB_DIR).glob("events.out.tfevents.*")), run
        assert read_scalars(run)[TRAIN_LOSS] and (run / CURVES).read_bytes().startswith(b"\x89PNG"), run
    assert {r for r, _ in summary.training_checks(w)} >= {str(r.relative_to(w)) for r in runs}


def test_completed_stages_are_skipped(loop_workdir, capsys):
    W = str(loop_workdir)
    assert pinworld_cli.main(["generate", "--workdir", W, "--preset", "tiny", "--seed", "0"]) == 0
    assert "skipping" in capsys.readouterr().out
    before = (loop_workdir / "pinclip/runs/tiny/metrics.jsonl").read_text()
    train = ["train", "demo", "steps=20", "batch_size=32", "neighbor_batch_size=0", "vocab_size=2000",
             "--workdir", W, "--run", "tiny", "--quiet"]
    assert pinclip_cli.main(train) == 0
    assert (loop_workdir / "pinclip/runs/tiny/metrics.jsonl").read_text() == before   # resumed at its end
    capsys.readouterr()
    assert pinclip_cli.main(train[:6] + ["annotation_weight=0.0"] + train[6:]) == 2   # another loss: refused
    err = capsys.readouterr().err
    assert "run 'tiny' was started with other settings (annotation_weight 3.0 -> 0.0)" in err and "--restart" in err
    assert json.loads((loop_workdir / "pinclip/runs/tiny/config.json").read_text())["train"]["annotation_weight"] == 3.0
