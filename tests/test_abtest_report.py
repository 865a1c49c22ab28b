"""The report gives the verdict: analysis.json's `verdict` (primary metric, guardrails, one sentence) opens
report.md and report.html with the same numbers, fits the first screen of a real browser, and the forest
plot stays readable with extreme rows."""

from __future__ import annotations

import copy
import html
import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from abtest.analyze import _excluded, analyze, lift_text, verdict
from abtest.config import load_config
from abtest.estimators import Estimator
from abtest.report import OUTCOME, forest_figure, render_html, render_markdown
from pinlift.readouts.summary import stage_figures
from test_abtest_analyze import make_workspace

GUARDRAILS = ["hides/homefeed", "ctr/homefeed", "cpc/ads", "ad_spend/ads"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """(config, analysis as analysis.json holds it, experiment directory) of the synthetic experiment."""
    path, _ = make_workspace(tmp_path_factory.mktemp("report"))
    path.write_text(path.read_text() + f"primary: repins/homefeed\nguardrails: [{', '.join(GUARDRAILS)}]\n")
    cfg = load_config(path)
    analyze(cfg)
    return cfg, json.loads((cfg.experiment_dir / "analysis.json").read_text()), cfg.experiment_dir


def test_verdict_record(report):
    cfg, a, _ = report
    v = a["verdict"]
    by_key = {r["key"]: r for r in a["results"]}
    assert [v["primary"]["key"]] + [g["key"] for g in v["guardrails"]] == ["repins/homefeed"] + GUARDRAILS
    for e in [v["primary"]] + v["guardrails"]:
        r = by_key[e["key"]]
        assert (e["p"], e["p_adjusted"], e["moved"], e["effect"]) == (r["p_value"], r["p_adjusted"], r["significant"],
                                                                      r["effect"])
        assert e["lift"] == r["relative"]["value"] and e["direction"] == r["direction"]
    p = v["primary"]
    assert p["effect"] == "good" and p["ci"][0] < 0.30 < p["ci"][1]       # the injected +30% repins
    assert v["sentence"] == f"The treatment lifts repins on Homefeed by {lift_text(p)}; no guardrail moved."
    hides = v["guardrails"][0]
    assert (hides["direction"], hides["lift"], hides["ci"], hides["excluded"]) == ("decrease", None, None, "no data")
    assert all(r["relative"]["ci_low"] > -1 for r in a["results"] if r["relative"]["value"] is not None)
    headline = {stage: h for stage, h, _ in stage_figures(cfg.workdir)}["A/B synth"]
    assert headline == f"repins/homefeed: {v['sentence']}"


def test_cells_without_a_relative_lift_say_why():
    def why(control, treatment):
        c, t = ({"n": np.float64(len(x)), "sx": np.sum(x, dtype=float), "sxx": np.dot(x, x) * 1.0}
                for x in (control, treatment))
        return _excluded(Estimator("mean", False).run(c, t, alpha=0.05))

    assert why([0, 0, 0], [1, 2, 0]) == "control mean ≤ 0" and why([1, 2, 0], [0, 0, 0]) == "treatment mean ≤ 0"
    assert why([0, 0], [0, 0]) == "no data" and why([1, 2], [2, 3]) is None


def _check_rows(rows: list[list[str]], a: dict) -> None:
    """The verdict table's cells say what analysis.json's verdict holds, to their printed precision."""
    v = a["verdict"]
    entries = [v["primary"]] + v["guardrails"]
    assert [r[:2] for r in rows] == [["primary", v["primary"]["key"]]] + [["guardrail", g["key"]]
                                                                          for g in v["guardrails"]]
    for cells, e in zip(rows, entries):
        _, _, good_when, lift, ci, p, p_adj, moved = cells
        assert good_when == e["direction"] + "s" and moved == OUTCOME[e["effect"]]
        if e["lift"] is None:
            assert lift == "—" and ci == f"no relative lift: {e['excluded']}"
        else:
            assert float(lift.rstrip("%")) == pytest.approx(100 * e["lift"], abs=0.005)
            assert [float(x) for x in re.findall(r"[-+][\d.]+", ci)] == pytest.approx([100 * x for x in e["ci"]],
                                                                                     abs=0.005)
        if e["p"] is None:       # a cell without data has no test
            assert p == p_adj == "—" and e["excluded"] == "no data"
            continue
        assert float(p) == pytest.approx(e["p"], rel=5e-3, abs=5e-5)
        assert float(p_adj) == pytest.approx(e["p_adjusted"], rel=5e-3, abs=5e-5)


def test_html_and_markdown_open_with_the_verdict_of_analysis_json(report):
    _, a, d = report
    page = (d / "report.html").read_text()
    body = page[page.index("<body>"):]
    m = re.search(r'<section id="verdict" class="(\w+)">\s*<p class="sentence">(.*?)</p>(.*?)</section>', body, re.S)
    assert m, "report.html has no verdict block"
    assert body.index('id="verdict"') < body.index("<img") and body.index("<h1>") < body.index('id="verdict"')
    assert m.group(1) == a["verdict"]["primary"]["effect"] and html.unescape(m.group(2)) == a["verdict"]["sentence"]
    rows = [[html.unescape(c) for c in re.findall(r"<td>(.*?)</td>", tr)]
            for tr in re.findall(r'<tr class="\w+">(.*?)</tr>', m.group(3))]
    _check_rows(rows, a)
    md = (d / "report.md").read_text().split("\n")
    assert md[2:5] == ["## Verdict", "", f"**{a['verdict']['sentence']}**"]
    table = md[6:md.index("", 6)]
    _check_rows([[c.strip() for c in line.strip("|").split("|")] for line in table[2:]], a)
    # the report says what is not in the plot and what the cold-start table's lifts are
    for text in (page, "\n".join(md)):
        assert "hides/homefeed (no data)" in text and "unadjusted (no CUPED)" in text
    with pytest.raises(KeyError):
        render_markdown({k: x for k, x in a.items() if k != "verdict"})


def test_sentences_follow_each_metric_s_good_direction(report):
    cfg, a, _ = report
    results = copy.deepcopy(a["results"])
    by_key = {r["key"]: r for r in results}
    by_key["ctr/homefeed"].update(significant=True, effect="bad")
    by_key["cpc/ads"].update(significant=True, effect="good")
    assert verdict(results, cfg, False)["sentence"].endswith(
        f"; guardrail moved the wrong way: ctr on Homefeed {lift_text(verdict(results, cfg, False)['guardrails'][1])}; "
        f"guardrail moved the good way: cpc on Ads {lift_text(verdict(results, cfg, False)['guardrails'][2])}.")
    by_key["repins/homefeed"].update(significant=False, effect="none")
    v = verdict(results, cfg, True)
    assert v["sentence"].startswith("Sample-ratio mismatch, do not trust this: The treatment does not move repins on "
                                    f"Homefeed significantly: {lift_text(v['primary'])}")
    by_key["repins/homefeed"].update(significant=True, effect="bad", direction="decrease")
    assert verdict(results, cfg, False)["sentence"].startswith("The treatment lifts repins on Homefeed by +")
    assert ", the wrong way;" in verdict(results, cfg, False)["sentence"]


def test_forest_plot_clips_extreme_rows_and_leaves_out_rows_without_a_lift(report):
    _, a, _ = report
    a = copy.deepcopy(a)
    by_key = {r["key"]: r for r in a["results"]}
    by_key["fresh_repins/ads"]["relative"].update(value=-0.9, ci_low=-0.9999, ci_high=117.6)   # past the window
    by_key["ctr/ads"].update(excluded="control mean ≤ 0")
    by_key["ctr/ads"]["relative"].update(value=None, ci_low=None, ci_high=None)
    fig = forest_figure(a)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[0] == "repins/homefeed (primary)" and labels[1] == "ctr/homefeed (guardrail)"
    assert "fresh_repins/ads off scale" in labels and not any(x.startswith(("ctr/ads", "hides/")) for x in labels)
    assert ax.get_xlim() == pytest.approx((-np.log(2), np.log(2)))
    assert [t.get_text() for t in ax.get_xticklabels()] == ["-50%", "-20%", "0%", "+20%", "+50%", "+100%"]
    colours = {t.get_text(): t.get_color() for t in ax.get_yticklabels()}
    assert colours["repins/homefeed (primary)"] == "#1e7e34" and colours["ctr/homefeed (guardrail)"] == "#6c757d"
    assert "ctr/ads (control mean ≤ 0)" in render_html(a, b"")


PROBE = """<script>window.addEventListener("load", () => {
  const r = document.getElementById("verdict").getBoundingClientRect(), p = document.createElement("pre");
  p.id = "verdict-box";
  p.textContent = JSON.stringify({top: r.top, bottom: r.bottom, right: r.right, height: innerHeight});
  document.body.appendChild(p);
});</script>"""


def test_verdict_fits_the_first_screen_in_a_browser(report, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium on this machine (.ci/run installs Debian's `chromium`)")
    page = tmp_path / "report.html"
    page.write_text((report[2] / "report.html").read_text().replace("</body>", PROBE + "</body>"))
    out = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,800",
                          "--virtual-time-budget=5000", f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
                          page.as_uri()], capture_output=True, text=True, timeout=120)
    m = re.search(r'<pre id="verdict-box">(.*?)</pre>', out.stdout)
    assert m, out.stderr[-2000:]
    box = json.loads(html.unescape(m.group(1)))
    assert 0 <= box["top"] < box["bottom"] <= min(800, box["height"]) and box["right"] <= 1280, box
