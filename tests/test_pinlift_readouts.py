"""The loop's read-outs: the demo summary and docs/results.md, from a workspace's files."""

from __future__ import annotations

from pinclip import cli as pinclip_cli
from pinlift import results, summary


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
    from pinlift.results import experiments_table

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
