"""`pinclip ablate`: ablations are the reference config with their changes, trained, evaluated, tabled."""

import json

import pytest

from pinclip import cli as pinclip_cli
from pinclip.training.ablations import ablation_config, describe_check, same_as_reference, target_checks


def test_ablation_config_changes_only_its_fields(loop_workdir):
    saved = json.loads((loop_workdir / "pinclip/runs/tiny/config.json").read_text())["train"]
    cfg = ablation_config(loop_workdir, "tiny", "image_text")
    assert cfg.run == "tiny-image_text" and cfg.fusion is False and cfg.pin_pin is False and cfg.annotation_weight == 0
    assert cfg.tokenizer.endswith("runs/tiny/tokenizer.json")
    for key in ("steps", "batch_size", "lr", "seed", "cutoff_day", "pretrained_image", "heldout_share"):
        assert getattr(cfg, key) == saved[key], key
    # a tower from scratch is never left partly frozen at its initialization
    assert ablation_config(loop_workdir, "tiny", "scratch_image").trainable_image_blocks == -1
    with pytest.raises(ValueError, match="unknown ablation 'nope'"):
        ablation_config(loop_workdir, "tiny", "nope")
    with pytest.raises(FileNotFoundError, match="train the reference run 'absent'"):
        ablation_config(loop_workdir, "absent", "image_text")


def test_an_ablation_equal_to_the_reference_is_recognized(loop_workdir):
    # the loop's reference starts from the pretrained image tower: only its from-scratch flip is an ablation
    assert same_as_reference(loop_workdir, "tiny", "pretrained_image")
    assert not same_as_reference(loop_workdir, "tiny", "scratch_image")
    assert not same_as_reference(loop_workdir, "tiny", "untrained")
    assert same_as_reference(loop_workdir, "tiny", "in_batch_negatives")     # the reference draws no corpus negatives
    assert not same_as_reference(loop_workdir, "tiny", "no_annotation")      # as the demo, it has the annotation loss


def test_ablate_trains_evaluates_and_checks(loop_workdir, capsys):
    W = str(loop_workdir)
    argv = ["ablate", "--workdir", W, "--reference", "tiny", "--only", "untrained,no_matryoshka",
            "--max-queries", "200", "--distractors", "1000", "--quiet"]
    assert pinclip_cli.main(argv) == 0
    out = json.loads((loop_workdir / "pinclip/ablations.json").read_text())
    assert set(out["recall"]) == {"fusion", "untrained", "no_matryoshka"}
    # the untrained baseline is its initial weights: one checkpoint at step 0, and its own recall
    assert (loop_workdir / "pinclip/runs/tiny-untrained/checkpoints/LATEST").read_text().strip() == "step-000000.pt"
    assert out["recall"]["untrained"] != out["recall"]["fusion"]
    claims = [c["claim"] for c in out["checks"]["R@10"]]
    assert any("no-Matryoshka" in c for c in claims) and any("untrained" in c for c in claims)
    assert "| untrained | 64 |" in capsys.readouterr().out
    # finished ablations are reused, not retrained
    mtime = (loop_workdir / "pinclip/runs/tiny-untrained/eval.json").stat().st_mtime
    assert pinclip_cli.main(argv) == 0
    assert (loop_workdir / "pinclip/runs/tiny-untrained/eval.json").stat().st_mtime == mtime


def test_target_checks_compare_the_right_cells():
    def ev(**tasks):
        return {"tasks": {t: {"recall": {v: {"R@10": r} for v, r in by.items()}} for t, by in tasks.items()}}

    evals = {"fusion": ev(related_fusion={"64": 0.26, "256": 0.28}),
             "image_text": ev(related_image={"64": 0.2}),
             "no_matryoshka": ev(related_fusion={"64": 0.27})}
    checks = target_checks(evals)

    def check(words):
        return next(c for c in checks if words in c["claim"])

    assert check("1.3x")["holds"] and check("1.3x")["ratio"] == pytest.approx(1.3)
    assert check("keeps >= 90%")["holds"]            # 0.26 >= 0.9 * 0.28
    assert not check("no-Matryoshka")["holds"]        # 0.26 < 0.27
    assert not any("Pin-to-Pin" in c["claim"] for c in checks)   # no such run: no such check
    assert all(c["within_noise"] is None for c in checks)         # no query counts: no standard errors
    # with 5,000 queries a side, 0.26 against 0.27 is inside two standard errors (0.0177); against 0.05 not
    evals["untrained"] = ev(related_fusion={"64": 0.05})
    for e in evals.values():
        for task in e["tasks"].values():
            task["queries"] = 5_000
    checks = target_checks(evals)
    assert check("no-Matryoshka")["within_noise"] is True and check("> untrained")["within_noise"] is False
    assert describe_check(check("no-Matryoshka")).endswith("(0.2600 vs 0.2700, ratio 0.96, within two standard errors)")
    assert describe_check(check("> untrained")).endswith("(0.2600 vs 0.0500, ratio 5.20)")


def test_make_results_lists_every_ablation():
    """`make results` runs each ablation as its own job; one missing from its list would run alone at the end."""
    import re
    from pathlib import Path

    from pinclip.training.ablations import ABLATIONS

    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    listed = re.search(r"^ABLATIONS := ((?:.*\\\n)*.*)$", makefile, re.MULTILINE).group(1)
    assert sorted(listed.replace("\\", " ").split()) == sorted(ABLATIONS)
