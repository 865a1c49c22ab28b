"""Ranking on a team's own logs (``team_workdir``): one surface (not pinworld's), no ads, no images, no boards,
no ground truth; a user's topic and a pin's quality drive clicks, and the team's vectors show a pin's topic and
quality, so IDs-only must rank and the team's vectors must help fresh pins."""

from __future__ import annotations

import json
import shutil

import polars as pl

from pinworld.validate import validate_workdir
from pinworld.world import World
from ranking import compare, train

FAST = ["--epochs", "2", "--batch-size", "512", "--checks-per-epoch", "2", "--quiet"]


def test_team_logs_validate_and_read_with_their_defaults(team_workdir):
    assert validate_workdir(team_workdir) == []
    world = World(team_workdir)
    assert world.log_window == (0, 36) and world.cutoff() == 24      # from the logs' own days
    pins = world.table("pins")
    assert pins["image_uri"].null_count() == pins.height and not pins["is_ad"].any()
    imp = world.impressions()
    assert not imp["hide"].any() and imp["query_pin_id"].null_count() == imp.height
    assert world.table("pin_board").height == 0 and world.table("users")["signup_day"].null_count() == 120
    assert world.table("users", as_of=1).height == 120              # an unknown signup day is before any day


def test_ids_and_own_vectors_rank_team_logs(team_workdir, capsys):
    W = str(team_workdir)
    assert compare.main(["--workdir", W, "--arms", "ids,pinclip,oracle,topic,mine=teamvec@v0001", "--seeds", "0",
                         *FAST]) == 0
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ranking.compare:")]
    assert said == ["ranking.compare: skipping 'pinclip': nothing published under 'pinclip' yet; 'oracle', 'topic': "
                    "the workspace has no ground truth (pinworld's own worlds have it)"]
    out = json.loads((team_workdir / "ranking/compare.json").read_text())
    assert out["arms"] == ["ids", "mine"]
    task = out["summary"]["discover/click"]
    assert task["all"]["ids"]["auc_mean"] > 0.6
    # the planted signal gives about +0.075 on fresh pins (interval about [0.067, 0.084])
    assert task["fresh"]["mine"]["lift_mean"] > 0.03 and task["fresh"]["mine"]["lift_ci"][0] > 0, task["fresh"]
    cfg = json.loads((team_workdir / "ranking/runs/mine_s0/config.json").read_text())
    assert cfg["embeddings"] == "teamvec@v0001" and cfg["embedding"]["source"]["kind"] == "parquet"


def test_reused_runs_are_checked_against_their_settings(team_workdir, capsys):
    W = str(team_workdir)
    run = team_workdir / "ranking/runs/ids_s0"
    if not (run / "eval.json").is_file():
        assert compare.main(["--workdir", W, "--arms", "ids", "--seeds", "0", *FAST]) == 0
    stamp = (run / "eval.json").stat().st_mtime_ns
    assert compare.main(["--workdir", W, "--arms", "ids", "--seeds", "0", *FAST]) == 0      # reused
    assert (run / "eval.json").stat().st_mtime_ns == stamp
    assert compare.main(["--workdir", W, "--arms", "ids", "--seeds", "0", *FAST, "--cutoff-day", "25"]) == 2
    assert "cutoff_day 24 -> 25" in capsys.readouterr().err
    shutil.copytree(run, team_workdir / "ranking/runs/old_s0")          # a run with no record of its training
    (team_workdir / "ranking/runs/old_s0/run.json").unlink()
    assert compare.main(["--workdir", W, "--arms", "old=teamvec", "--seeds", "0", *FAST]) == 2
    assert "run.json: expected the record of how the run was trained (pass --retrain), found no such file" in (
        capsys.readouterr().err)


def test_bad_arms_and_unlabelled_logs_are_one_line(team_workdir, tmp_path, capsys):
    for arms in ("bogus", "ids=teamvec", "mine=../x"):
        try:
            compare.main(["--workdir", str(team_workdir), "--arms", arms])
        except SystemExit as exit:
            assert exit.code == 2
        assert "--arms" in capsys.readouterr().err
    # a task's label column left out of the logs is refused, not read as all false
    W = tmp_path / "w"
    shutil.copytree(team_workdir / "world", W / "world")
    (W / "logs/impressions").mkdir(parents=True)
    logs = pl.read_parquet(team_workdir / "logs/impressions/part-0.parquet").drop("click")
    logs.write_parquet(W / "logs/impressions/part-0.parquet")
    assert [str(p) for p in validate_workdir(W)] == [
        "pinworld validate: logs/impressions: column 'click': expected a bool column (a task of surface 'discover' "
        "in world/surfaces.yaml), found no such column or only nulls"]
    assert train.main(["--workdir", str(W), "--quiet"]) == 2
    assert capsys.readouterr().err.endswith("click: expected a bool column (a task of a declared surface), found no "
                                            "such column (or only nulls)\n")
