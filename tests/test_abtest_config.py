"""exp.yaml: the examples load; every error names the file, the line, the field, what was expected."""

from __future__ import annotations

from pathlib import Path

import pytest

from abtest.cli import main
from abtest.cli import KEYS
from abtest.config import load_config
from pinlift.core.errors import InputError
from pinlift.core.vocabulary import PINWORLD, write_vocabulary
from abtest.metrics import builtin_metrics

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.yaml"))

BASE = """\
name: exp1
workdir: {workdir}
arms:
  control:
    ranker: logging_policy
  treatment:
    ranker: logging_policy
days: {{start: 30, count: 2}}
"""


def _write(tmp_path, text: str, name="exp.yaml", vocab=PINWORLD) -> Path:
    """``text`` as ``name`` in the workspace ``tmp_path``, which declares ``vocab``."""
    write_vocabulary(tmp_path, vocab)
    p = tmp_path / name
    p.write_text(text)
    return p


def _error(path) -> str:
    with pytest.raises(InputError) as e:
        load_config(path)
    return str(e.value)


def test_examples_load(tmp_path):
    assert len(EXAMPLES) >= 5
    write_vocabulary(tmp_path, PINWORLD)
    for path in EXAMPLES:
        cfg = load_config(path, workdir=str(tmp_path))
        assert cfg.metric_list(), path
    cand = load_config(EXAMPLES[0].parent / "pinclip_candidates.yaml", workdir=str(tmp_path))
    assert cand.arms.treatment.related_ann.k == 16 and cand.surfaces == ["related"]
    aa = load_config(EXAMPLES[0].parent / "aa.yaml", workdir=str(tmp_path))
    assert aa.arm("treatment") == aa.arm("control")


def test_defaults_and_resolution(tmp_path):
    cfg = load_config(_write(tmp_path, BASE.format(workdir=tmp_path)))
    assert cfg.assignment_salt == "exp1" and cfg.traffic.shares() == (0.5, 0.5)
    cells = [(m.name, m.surfaces) for m in cfg.metric_list()]
    assert ("new_ad_clicks", ("ads",)) in cells and ("cpc", ("ads",)) in cells
    assert ("repins", ("homefeed", "related", "ads")) in cells
    assert cfg.experiment_dir == tmp_path / "experiments" / "exp1"


@pytest.mark.parametrize("patch, line, field, words", [
    ("days: {start: -1, count: 2}", 8, "days.start", "greater than or equal to 0"),
    ("days: {start: 3, count: 0}", 8, "days.count", "greater than or equal to 1"),
    ("days: {count: 3}", 8, "days.start", "expected a value, found nothing"),
    ("surfaces: [homefeed, search]", 9, "surfaces.1", "'search'"),
    ("metrics: [repins, bogus]", 9, "metrics.1", "unknown metric 'bogus'"),
    ("metrics:\n  - repins\n  - {name: cpc, surfaces: [homefeed]}", 11, "metrics.1",
     "expected surfaces among ['ads']"),
    ("traffic: {control: 0.7, treatment: 0.6}", 9, "traffic", "summing to at most 1"),
    ("alpah: 0.05", 9, "alpah", "unknown field 'alpah'"),
])
def test_errors_name_field_and_line(tmp_path, patch, line, field, words):
    text = BASE.format(workdir=tmp_path)
    if patch.startswith("days"):
        text = text.replace("days: {start: 30, count: 2}", patch)
    else:
        text += patch + "\n"
    path = _write(tmp_path, text)
    msg = _error(path)
    assert msg.startswith(f"{path}:{line}: {field}: expected"), msg
    assert words in msg, msg


def test_custom_metrics_are_validated_never_sql(tmp_path):
    ok = BASE.format(workdir=tmp_path) + (
        "metrics:\n"
        "  - {name: ad_spend, surfaces: [ads], aggregate: sum, column: value, action: click}\n"
        "  - {name: click_pos, aggregate: mean, column: position, action: click, pins: fresh}\n")
    cfg = load_config(_write(tmp_path, ok))
    spend, pos = cfg.metric_list()
    assert spend.kind == "mean" and spend.numerator.column == "value" and spend.surfaces == ("ads",)
    assert pos.kind == "ratio" and pos.denominator.column is None and pos.numerator.pins == "fresh"
    bad_column = BASE.format(workdir=tmp_path) + (
        "metrics:\n  - {name: x, aggregate: sum, column: \"value); DROP TABLE events; --\", action: click}\n")
    msg = _error(_write(tmp_path, bad_column, "b1.yaml"))
    assert ":10: metrics.0.column: expected one of 'value' or 'position'" in msg
    bad_name = BASE.format(workdir=tmp_path) + "metrics:\n  - {name: \"x'y\", aggregate: count, action: click}\n"
    assert "metrics.0.name: expected a name matching" in _error(_write(tmp_path, bad_name, "b2.yaml"))
    no_action = BASE.format(workdir=tmp_path) + "metrics:\n  - {name: z, aggregate: count}\n"
    assert "expected `action:`" in _error(_write(tmp_path, no_action, "b3.yaml"))
    shadow = BASE.format(workdir=tmp_path) + "metrics:\n  - {name: ctr, aggregate: count, action: click}\n"
    assert "other than the built-in 'ctr'" in _error(_write(tmp_path, shadow, "b4.yaml"))
    assert set(builtin_metrics(PINWORLD)) >= {"repins", "fresh_repins", "new_ad_clicks", "ctr", "cpc", "hides"}


def test_primary_guardrails_and_directions(tmp_path):
    metrics = ("metrics:\n  - repins\n  - cpc\n  - hides\n"
               "  - {name: n, aggregate: count, action: hide, direction: decrease}\n")
    cfg = load_config(_write(tmp_path, BASE.format(workdir=tmp_path) + metrics))
    assert cfg.primary_key == "repins/homefeed" and cfg.guardrails == []      # default: first metric, first surface
    assert cfg.treatment_label == "The treatment"
    assert {m.name: m.direction for m in cfg.metric_list()} == {
        "repins": "increase", "cpc": "decrease", "hides": "decrease", "n": "decrease"}
    ok = load_config(_write(tmp_path, BASE.format(workdir=tmp_path) + metrics
                            + "primary: hides/related\nguardrails: [cpc/ads, repins/homefeed]\n", "ok.yaml"))
    assert (ok.primary_key, ok.guardrails) == ("hides/related", ["cpc/ads", "repins/homefeed"])
    for i, (patch, field, words) in enumerate([
            ("primary: clicks/homefeed", "primary", "found 'clicks/homefeed'"),
            ("primary: cpc/homefeed", "primary", "(repins/homefeed | repins/related | repins/ads | cpc/ads |"),
            ("guardrails: [cpc/ads, cpc/ads]", "guardrails", "expected distinct guardrails"),
            ("primary: cpc/ads\nguardrails: [cpc/ads]", "guardrails", "other than the primary metric")]):
        path = _write(tmp_path, BASE.format(workdir=tmp_path) + metrics + patch + "\n", f"p{i}.yaml")
        line = 14 + patch.count("\n")
        assert _error(path).startswith(f"{path}:{line}: {field}: expected"), (patch, _error(path))
        assert words in _error(path)


def test_arm_rules(tmp_path):
    no_run = BASE.format(workdir=tmp_path).replace("    ranker: logging_policy\n  treatment", "    ranker: ranking_run\n  treatment")
    msg = _error(_write(tmp_path, no_run))
    assert ":4: arms.control: expected `run: NAME`" in msg
    no_treatment = BASE.format(workdir=tmp_path).replace("  treatment:\n    ranker: logging_policy\n", "")
    assert "expected `arms.treatment` (or `aa: true`)" in _error(_write(tmp_path, no_treatment, "t.yaml"))
    lift = BASE.format(workdir=tmp_path).replace("  treatment:\n    ranker: logging_policy\n",
                                                 "  treatment:\n    ranker: logging_policy\n    lift: {views: 0.1}\n")
    assert "arms.treatment.lift.views" in _error(_write(tmp_path, lift, "l.yaml"))


def test_bad_yaml_and_cli_exit_code(tmp_path, capsys):
    path = _write(tmp_path, "name: x\narms: [unclosed\n")
    msg = _error(path)
    assert msg.startswith(f"{path}:3: yaml: expected valid YAML, found")
    assert main(["analyze", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"abtest: {path}:3: yaml:") and "\n" not in err
    assert main(["simulate", str(tmp_path / "missing.yaml")]) == 2
    assert "expected an experiment YAML file, found no such file" in capsys.readouterr().err
    empty = _write(tmp_path, "", "empty.yaml")
    assert "expected a mapping of experiment fields, found an empty file" in _error(empty)


def test_surfaces_are_the_workspace_s(tmp_path):
    """Surfaces are those world/surfaces.yaml declares: an undeclared one is one line naming the file, the
    line, the field and the choices; a workspace that renames homefeed and ads uses its own names."""
    text = BASE.format(workdir=tmp_path) + "surfaces: [search, shop]\n"
    path = _write(tmp_path, text)
    msg = _error(path)
    assert msg == (f"{path}:9: surfaces.0: expected a surface the workspace declares in world/surfaces.yaml "
                   "(homefeed | related | ads), found 'search'")
    renamed = PINWORLD.renamed({"homefeed": "search", "ads": "shop"})
    cfg = load_config(_write(tmp_path, text, vocab=renamed))
    assert cfg.surfaces == ["search", "shop"]
    cells = {(m.name, m.surfaces) for m in cfg.metric_list()}
    assert {("repins", ("search", "shop")), ("cpc", ("shop",)), ("new_ad_clicks", ("shop",))} <= cells
    every = load_config(_write(tmp_path, BASE.format(workdir=tmp_path) + "metrics:\n  - {name: spend, surfaces: "
                                "[shop]}\n  - {name: n, aggregate: count, action: hide}\n", vocab=renamed))
    assert every.surfaces == ["search", "related", "shop"]
    assert [m.surfaces for m in every.metric_list()] == [("shop",), ("search", "related", "shop")]
    wrong = BASE.format(workdir=tmp_path) + "metrics:\n  - {name: cpc, surfaces: [search]}\n"
    assert "metrics.0: expected surfaces among ['shop'] for 'cpc', found 'search'" in _error(
        _write(tmp_path, wrong, vocab=renamed))


def test_the_workspace_must_declare_its_surfaces(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(BASE.format(workdir=tmp_path / "ws"))
    assert _error(path) == (f"{tmp_path / 'ws' / 'world' / 'surfaces.yaml'}: file: expected the workspace's "
                            "surfaces (docs/data.md, Surfaces), or `surfaces:` in the experiment file as {name, kind} "
                            "entries, found no file")


def test_help_lists_every_key_with_type_and_default(capsys):
    with pytest.raises(SystemExit):
        main(["analyze", "--help"])
    out = capsys.readouterr().out
    for where, model in KEYS:
        assert f"{where} keys (type, default):" in out
        for name in model.model_fields:
            assert f"\n  {name} " in out, (where, name)
    assert "list[Surface] | None           None          served and analysed" in out
