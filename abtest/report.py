"""Reports of an analysis: ``analysis.json``, ``report.md`` and a self-contained ``report.html``, each
opening with the verdict (analysis.json's ``verdict``: the primary metric and the guardrails), then a
forest plot of relative lifts and their confidence intervals (``forest.png``, embedded as base64)."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from abtest.logs import excluded_text  # noqa: E402
from abtest.storage import atomic_files  # noqa: E402

REPORT_FILES = ["analysis.json", "report.md", "report.html", "forest.png"]
COLOURS = {"good": "#1e7e34", "bad": "#b00020", "none": "#6c757d"}   # by effect: significant good / bad, or not
OUTCOME = {"good": "good", "bad": "wrong way", "none": "no"}
TICKS = (-0.5, -0.2, -0.1, -0.05, -0.02, -0.01, 0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
MAX_RATIO = 2.0   # the forest plot's axis spans at most treatment / control in [1/2, 2], −50% to +100%


def _ordered(a: dict) -> list[dict]:
    """Results with the primary first, then the guardrails, then the rest in analysis order."""
    v = a["verdict"]
    first = [v["primary"]["key"]] + [g["key"] for g in v["guardrails"]]
    by_key = {r["key"]: r for r in a["results"]}
    return [by_key[k] for k in first] + [r for r in a["results"] if r["key"] not in first]


def _role(a: dict, key: str) -> str:
    v = a["verdict"]
    guardrails = {g["key"] for g in v["guardrails"]}
    return "primary" if key == v["primary"]["key"] else "guardrail" if key in guardrails else ""


def _ticks(half: float) -> list[float]:
    """0 and lifts from ``TICKS`` within ±``half`` on the log-ratio axis, at least ``half``/5 apart outwards."""
    out, zero = [0.0], TICKS.index(0.0)
    for side in (TICKS[zero + 1:], TICKS[zero - 1::-1]):
        last = 0.0
        for t in side:
            if abs(np.log1p(t)) <= half * 1.001 and abs(np.log1p(t) - last) >= half / 5:
                out.append(t)
                last = np.log1p(t)
    return sorted(out)


def forest_figure(analysis: dict):
    """One row per cell with a relative lift, primary first, on a log-ratio axis labelled in %, coloured by
    effect; the axis stops at ``MAX_RATIO`` and rows that run off it end in an arrow and say so."""
    rows = [r for r in _ordered(analysis) if r["relative"]["value"] is not None]
    spans = [np.log1p([r["relative"]["ci_low"], r["relative"]["value"], r["relative"]["ci_high"]]) for r in rows]
    half = min(1.1 * max([np.abs(s).max() for s in spans] + [np.log(1.05)]), np.log(MAX_RATIO))
    fig, ax = plt.subplots(figsize=(7.5, 0.42 * max(len(rows), 1) + 1.4), dpi=110)
    labels = []
    for y, (r, (lo, mid, hi)) in enumerate(zip(rows, spans)):
        colour = COLOURS[r["effect"]]
        ax.plot(np.clip([lo, hi], -half, half), [y, y], color=colour, lw=2)
        ax.plot([np.clip(mid, -half, half)], [y], "o", color=colour, ms=5)
        for end, marker in ((lo, "<"), (hi, ">")):
            if abs(end) > half:
                ax.plot([np.sign(end) * half], [y], marker, color=colour, ms=7, clip_on=False)
        role = _role(analysis, r["key"])
        off = max(abs(lo), abs(hi)) > half
        labels.append(r["key"] + (f" ({role})" if role else "") + (" off scale" if off else ""))
    ax.axvline(0, color="#999", lw=1, ls="--")
    ax.set_xlim(-half, half)
    ticks = _ticks(half)
    ax.set_xticks(np.log1p(ticks), [f"{100 * t:+g}%" if t else "0%" for t in ticks])
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    for tick, r in zip(ax.get_yticklabels(), rows):
        tick.set_color(COLOURS[r["effect"]])
    ax.set_xlabel(f"lift (treatment / control − 1) on a log-ratio axis, {100 * (1 - analysis['alpha']):.0f}% CI")
    ax.set_title(f"{analysis['experiment']}: green good, red bad (significant after {analysis['multiple_testing']}), "
                 "grey not significant", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def forest_plot(analysis: dict) -> bytes:
    """``forest_figure`` as PNG bytes."""
    fig = forest_figure(analysis)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _pct(x, signed=True) -> str:
    if x is None:
        return "—"
    return f"{100 * x:+.2f}%" if signed else f"{100 * x:.2f}%"


def _g(x) -> str:
    return "—" if x is None else f"{x:.4g}"


def _p(x) -> str:
    return "—" if x is None else (f"{x:.2e}" if x < 1e-4 else f"{x:.4f}")


def _ci(lo, hi) -> str:
    return f"[{_pct(lo)}, {_pct(hi)}]"


def _lift_cells(lift, ci, excluded: str | None) -> list[str]:
    """A row's lift and CI cells, or "—" and why it has no relative lift."""
    return ["—", f"no relative lift: {excluded}"] if excluded else [_pct(lift), _ci(*ci)]


VERDICT_HEADER = ["", "metric", "good when", "lift", "CI", "p", "p adj.", "moved"]


def _verdict_rows(a: dict) -> list[tuple[str, list[str]]]:
    """(effect, cells) of the primary metric and each guardrail."""
    v = a["verdict"]
    return [(e["effect"], [role, e["key"], e["direction"] + "s", *_lift_cells(e["lift"], e["ci"], e["excluded"]),
                           _p(e["p"]), _p(e["p_adjusted"]), OUTCOME[e["effect"]]])
            for role, e in [("primary", v["primary"])] + [("guardrail", g) for g in v["guardrails"]]]


def _rows(analysis: dict) -> list[tuple[str, list[str]]]:
    """(effect, cells) of every result, primary first."""
    out = []
    for r in _ordered(analysis):
        rel = r["relative"]
        cuped = r.get("cuped") or {}
        vr = cuped.get("variance_reduction_factor")
        out.append((r["effect"], [r["metric"], r["surface"], r["method"], _g(r["control_mean"]),
                                  _g(r["treatment_mean"]),
                                  *_lift_cells(rel["value"], (rel["ci_low"], rel["ci_high"]), r["excluded"]),
                                  _p(r["p_value"]),
                                  _p(r["p_adjusted"]), OUTCOME[r["effect"]],
                                  _pct((r.get("mde") or {}).get("relative"), signed=False),
                                  "—" if vr is None else f"{vr:.2f}"]))
    return out


HEADER = ["metric", "surface", "method", "control", "treatment", "lift", "CI", "p", "p adj.", "significant",
          "MDE", "CUPED var. factor"]


def _srm_line(a: dict) -> str:
    s = a["srm"]
    status = "MISMATCH — do not trust the results" if s["mismatch"] else "ok"
    return (f"SRM: {status} (χ² = {s['chi2']:.3f}, p = {_p(s['p_value'])}, alert below {s['threshold']}; "
            f"users control {a['users']['control']:,} / treatment {a['users']['treatment']:,}, "
            f"expected split {' / '.join(f'{x:g}' for x in s['shares'])})")


def _events_line(a: dict) -> str:
    """'events: 52,310 rows, days 18–26, 48,120 counted (window days 20–24); excluded: ...'."""
    e = a["events"]
    lo, hi = e["window"]
    window = f"days {lo}–{hi}" if hi is not None else f"day {lo} on"
    return (f"events: {e['rows']:,} rows, days {e['first_day']}–{e['last_day']}, {e['counted']:,} counted "
            f"(window {window}); {excluded_text(e)}")


def _covariate_line(a: dict) -> str:
    pre = a["pre_period"]
    if pre is None:
        return "CUPED covariates: none"
    if "table" in pre:
        return (f"CUPED covariates: the table {pre['table']}, a row for {pre['users_with_row']:,} of "
                f"{pre['users']:,} exposed users (the others 0)")
    return f"CUPED covariates: organic logs, days {pre['first_day']}–{pre['last_day']}"


def _notes(a: dict) -> list[str]:
    """What the lifts are, what "significant" means and which cells have no relative lift."""
    excluded = [f"{r['key']} ({r['excluded']})" for r in a["results"] if r["excluded"]]
    return [f"Lift = treatment / control − 1 (CUPED-adjusted where a pre-period exists); its "
            f"{100 * (1 - a['alpha']):.0f}% CI is exp(log ratio ± z·se) − 1 (delta method on the log ratio), so it "
            "never crosses −100%. Means are per exposed user, ratios Σ numerator / Σ denominator.",
            f"Significant / moved: adjusted p ≤ {a['alpha']} ({a['multiple_testing']} across {len(a['results'])} "
            "tests); good or wrong way by each metric's good direction.",
            "Cells without a relative lift (a mean ≤ 0 or no data; not in the plot): "
            + (", ".join(excluded) if excluded else "none") + "."]


DIFF_HEADER = ("cold-start metric − overall metric", "lift (cold start)", "lift (overall)", "difference", "95% CI")
DIFF_NOTE = ("These lifts are unadjusted (no CUPED), so they differ from the CUPED-adjusted lifts above; "
             "they are on the same users and the CI of their difference uses their covariance.")


def _diff_rows(a: dict) -> list[list[str]]:
    """Rows comparing a cold-start lift with its overall lift (paired delta-method CI)."""
    return [[d["key"], _pct(d["lift_a"]["value"]), _pct(d["lift_b"]["value"]), _pct(d["difference"]["value"]),
             _ci(d["difference"]["ci_low"], d["difference"]["ci_high"])]
            for d in a.get("lift_differences", [])]


def _md_table(header, rows) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def render_markdown(a: dict) -> str:
    lines = [f"# A/B experiment `{a['experiment']}`", "", "## Verdict", "", f"**{a['verdict']['sentence']}**", ""]
    lines += _md_table(VERDICT_HEADER, [cells for _, cells in _verdict_rows(a)])
    lines += ["", f"- {_srm_line(a)}",
              f"- {_events_line(a)}",
              f"- {_covariate_line(a)}",
              f"- alpha {a['alpha']}, multiple testing: {a['multiple_testing']} across {len(a['results'])} tests, "
              f"MDE at power {a['power']}",
              f"- generator version: {a['generator_version']}", "",
              "## All metrics", "", "![forest plot](forest.png)", ""]
    lines += _md_table(HEADER, [cells for _, cells in _rows(a)]) + [""] + _notes(a) + [""]
    if _diff_rows(a):
        lines += ["## Cold-start lift vs overall lift (unadjusted)", ""] + _md_table(DIFF_HEADER, _diff_rows(a))
        lines += ["", DIFF_NOTE, ""]
    return "\n".join(lines)


def _html_table(header, rows) -> str:
    esc = html.escape
    return ("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>"
            + "".join(f'<tr class="{effect}">' + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>"
                      for effect, cells in rows) + "</table>")


def render_html(a: dict, png: bytes) -> str:
    esc = html.escape
    img = base64.b64encode(png).decode()
    srm_class = "bad" if a["srm"]["mismatch"] else ""
    colours = " ".join(f"tr.{k} td {{ color: {c}; }}" for k, c in COLOURS.items())
    notes = "".join(f"<p class=note>{esc(n)}</p>" for n in _notes(a))
    diffs = (f"<h2>Cold-start lift vs overall lift (unadjusted)</h2>"
             f"{_html_table(DIFF_HEADER, [('', r) for r in _diff_rows(a)])}"
             f"<p class=note>{esc(DIFF_NOTE)}</p>" if _diff_rows(a) else "")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>abtest: {esc(a['experiment'])}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em 2em; color: #222; }}
h1 {{ font-size: 1.5em; margin: 0 0 0.6em; }}
table {{ border-collapse: collapse; font-size: 0.85em; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: right; }}
th {{ background: #f3f3f3; }} td:first-child, td:nth-child(2), td:nth-child(3) {{ text-align: left; }}
{colours} #verdict tr.bad td:last-child, #verdict tr.good td:last-child {{ font-weight: bold; }}
#verdict {{ border: 2px solid #ccc; border-radius: 6px; padding: 0.6em 1em; margin-bottom: 1em; }}
#verdict.good {{ border-color: {COLOURS['good']}; }} #verdict.bad {{ border-color: {COLOURS['bad']}; }}
#verdict .sentence {{ font-size: 1.25em; font-weight: 600; margin: 0.2em 0 0.6em; }}
.note {{ font-size: 0.85em; color: #555; max-width: 60em; }} p.bad {{ color: {COLOURS['bad']}; font-weight: bold; }}
</style></head><body>
<h1>A/B experiment <code>{esc(a['experiment'])}</code></h1>
<section id="verdict" class="{a['verdict']['primary']['effect']}">
<p class="sentence">{esc(a['verdict']['sentence'])}</p>
{_html_table(VERDICT_HEADER, _verdict_rows(a))}
<p class="{srm_class}">{esc(_srm_line(a))}</p>
</section>
<p>{esc(_events_line(a)[0].upper() + _events_line(a)[1:])}.
{esc(_covariate_line(a))}.
Alpha {a['alpha']}, multiple testing {esc(a['multiple_testing'])} across {len(a['results'])} tests.</p>
<h2>All metrics</h2>
<img alt="forest plot of relative lifts" src="data:image/png;base64,{img}">
{_html_table(HEADER, _rows(a))}
{notes}
{diffs}
<p class=note>Generated {esc(a['created'])}, generator {esc(str(a['generator_version']))}.</p>
</body></html>
"""


def write_report(exp_dir: Path, analysis: dict) -> dict[str, Path]:
    """Write the four report files into ``exp_dir`` (each replaced atomically)."""
    png = forest_plot(analysis)
    with atomic_files(Path(exp_dir), REPORT_FILES) as tmp:
        (tmp / "forest.png").write_bytes(png)
        (tmp / "report.md").write_text(render_markdown(analysis))
        (tmp / "report.html").write_text(render_html(analysis, png))
        (tmp / "analysis.json").write_text(json.dumps(analysis, indent=2))
    return {n: Path(exp_dir) / n for n in REPORT_FILES}
