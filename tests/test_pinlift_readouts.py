"""The loop's read-outs: the demo summary and docs/results.md, from a workspace's files."""

from __future__ import annotations

from pinclip import cli as pinclip_cli
from pinlift.readouts import results, summary


def test_summary_and_results_cover_the_stages_that_ran(tiny_workdir, tiny_pinclip_run, tmp_path, capsys):
    assert pinclip_cli.main(["eval", "--workdir", str(tiny_workdir), "--run", tiny_pinclip_run, "--max-queries", "100",
                             "--distractors", "500", "--quiet"]) == 0
    rows = {stage: headline for stage, headline, _ in summary.stage_figures(tiny_workdir)}
    assert rows["world"].startswith("tiny seed 0: 3,000 pins")
    assert rows["image pretraining"] == "not run"
    assert summary.main(["--workdir", str(tiny_workdir)]) == 0
    assert "pinlift demo summary" in capsys.readouterr().out
    text = results.render(tiny_workdir, run=tiny_pinclip_run)
    assert "## World" in text and f"## PinCLIP Recall@K (run `{tiny_pinclip_run}`)" in text
    assert "| pintext |" in text and "int8 drop" in text
    assert "## Image-tower pretraining" not in text
    out = tmp_path / "results.md"
    assert results.main(["--workdir", str(tiny_workdir), "--run", tiny_pinclip_run, "--out", str(out)]) == 0
    assert out.read_text() == text


def test_experiments_table_has_one_row_per_experiment():
    from pinlift.readouts.results import experiments_table

    def analysis(name, lift):
        rel = {"value": lift, "ci_low": lift - 0.01, "ci_high": lift + 0.01}
        return {"experiment": name, "results": [{"key": "repins/homefeed", "relative": rel}],
                "lift_differences": [{"key": "fresh_repins/homefeed - repins/homefeed", "difference": rel},
                                     {"key": "new_ad_clicks/ads - clicks/ads", "difference": rel}][: 1 + (lift > 0)]}

    rows = experiments_table([analysis("a", 0.1), analysis("b", -0.02)])
    assert len(rows) == 4 and rows[2].startswith("| `a` | +10.0% |")
    assert rows[2].endswith("| +10.0% [+9.0%, +11.0%] | +10.0% [+9.0%, +11.0%] |")
    # metrics and differences an experiment lacks are blank cells
    assert rows[3] == "| `b` | -2.0% |  |  |  |  | -2.0% [-3.0%, -1.0%] |  |"


def test_ablations_section_describes_the_runs_in_its_table(tmp_path):
    import json

    from pinclip.training.ablations import ABLATIONS, TABLE_TASKS

    tasks = {t: {"64": {"R@10": 0.1, "R@100": 0.5}, "256": {"R@10": 0.2}} for t in TABLE_TASKS}
    (tmp_path / "pinclip").mkdir()
    (tmp_path / "pinclip" / "ablations.json").write_text(json.dumps({
        "reference": "tiny", "recall": {"fusion": tasks, "image_text": tasks, "no_annotation": tasks},
        "checks": {"R@10": [{"claim": "c", "value": 0.1, "reference": 0.2, "ratio": 0.5, "holds": False}]}}))
    text = "\n".join(results.ablations_section(tmp_path))
    assert f"- `image_text`: {ABLATIONS['image_text'].description}." in text
    assert f"- `no_annotation`: {ABLATIONS['no_annotation'].description}." in text
    assert "`no_pin_pin`" not in text and "`untrained`" not in text      # only the runs in the table
    assert "| image_text | 64 | 0.1000 | 0.5000 |" in text and "- **fails**: c (0.1000 vs 0.2000, ratio 0.50)" in text


def test_timed_stages_add_up_in_the_demo_record(tmp_path, capsys):
    """Each completed stage's wall time lands in W/demo.json; a failed one is not recorded and its status
    passes through; the summary prints the total."""
    import json
    import sys

    from pinlift.readouts import summary, timed

    out = tmp_path / "w" / "demo.json"
    ok = [sys.executable, "-c", "import time; time.sleep(0.2)"]
    assert timed.main(["--out", str(out), "world", "--", *ok]) == 0
    assert timed.main(["--out", str(out), "ranking", "--", *ok]) == 0
    assert timed.main(["--out", str(out), "abtest", "--", sys.executable, "-c", "raise SystemExit(3)"]) == 3
    record = json.loads(out.read_text())
    assert list(record["stages"]) == ["world", "ranking"] and all(v >= 0.2 for v in record["stages"].values())
    assert record["total_s"] == round(sum(record["stages"].values()), 1)
    assert summary._print_summary(str(tmp_path / "w")) == 0
    assert "wall time: 0.0 min (world 0.0, ranking 0.0) -> demo.json" in capsys.readouterr().out


def test_cold_start_lifts_are_the_cells_compared_with_their_overall_cell():
    from pinlift.readouts.summary import cold_start_lifts

    rel = lambda v, lo, hi: {"value": v, "ci_low": lo, "ci_high": hi}  # noqa: E731
    analysis = {"results": [{"key": "fresh_repins/homefeed", "relative": rel(0.191, 0.152, 0.23)},
                            {"key": "repins/homefeed", "relative": rel(0.1, 0.05, 0.15)},
                            {"key": "new_ad_clicks/ads", "relative": rel(None, None, None)}],
                "lift_differences": [{"key": "fresh_repins/homefeed - repins/homefeed"},
                                     {"key": "new_ad_clicks/ads - clicks/ads"}]}
    assert cold_start_lifts(analysis) == "fresh_repins/homefeed +19.1% [+15.2%, +23.0%]"


def test_results_keep_the_sections_other_commands_write():
    """Regenerating docs/results.md keeps the Open Clip Art section (benchmarks/openclipart writes it), once."""
    from pinlift.readouts.results import with_owned_sections

    old = ("# pinlift results\n\nold tables\n\n## On real pictures\n\n<!-- openclipart:begin -->\n| row |\n"
           "<!-- openclipart:end -->\n")
    new = with_owned_sections("# pinlift results\n\nnew tables\n", old)
    assert "new tables" in new and "old tables" not in new
    assert new.count("<!-- openclipart:begin -->") == 1 and "## On real pictures" in new and "| row |" in new
    assert with_owned_sections("# x\n", "# y\n") == "# x\n"
