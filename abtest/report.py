"""Reports of an analysis: ``analysis.json``, ``report.md`` and a self-contained ``report.html`` with a
forest plot of relative lifts and their confidence intervals (``forest.png``, embedded as base64)."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from abtest.storage import atomic_files  # noqa: E402

REPORT_FILES = ["analysis.json", "report.md", "report.html", "forest.png"]


def forest_plot(analysis: dict) -> bytes:
    """PNG bytes: one row per (metric, surface), relative lift with its CI; significant rows in colour."""
    rows = [r for r in analysis["results"] if r["relative"]["value"] is not None]
    fig, ax = plt.subplots(figsize=(7.5, 0.42 * max(len(rows), 1) + 1.4), dpi=110)
    for y, r in enumerate(reversed(rows)):
        rel = r["relative"]
        lo = rel["ci_low"] if rel["ci_low"] is not None else rel["value"]
        hi = rel["ci_high"] if rel["ci_high"] is not None else rel["value"]
        colour = "#c0392b" if r["significant"] else "#34495e"
        ax.plot([100 * lo, 100 * hi], [y, y], color=colour, lw=2)
        ax.plot([100 * rel["value"]], [y], "o", color=colour, ms=5)
    ax.axvline(0, color="#999", lw=1, ls="--")
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"{r['metric']} / {r['surface']}" for r in reversed(rows)], fontsize=8)
    ax.set_xlabel(f"relative lift, % (treatment / control − 1), {100 * (1 - analysis['alpha']):.0f}% CI")
    ax.set_title(f"{analysis['experiment']}: lifts (red: significant after {analysis['multiple_testing']})",
                 fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
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


def _rows(analysis: dict) -> list[list[str]]:
    out = []
    for r in analysis["results"]:
        rel = r["relative"]
        ci = "—" if rel["ci_low"] is None else f"[{_pct(rel['ci_low'])}, {_pct(rel['ci_high'])}]"
        cuped = r.get("cuped") or {}
        vr = cuped.get("variance_reduction_factor")
        out.append([r["metric"], r["surface"], r["method"], _g(r["control_mean"]), _g(r["treatment_mean"]),
                    _pct(rel["value"]), ci, _p(r["p_value"]), _p(r["p_adjusted"]),
                    "yes" if r["significant"] else "no",
                    _pct((r.get("mde") or {}).get("relative"), signed=False),
                    "—" if vr is None else f"{vr:.2f}"])
    return out


HEADER = ["metric", "surface", "method", "control", "treatment", "lift", "CI", "p", "p adj.", "significant",
          "MDE", "CUPED var. factor"]


def _srm_line(a: dict) -> str:
    s = a["srm"]
    status = "MISMATCH — do not trust the results" if s["mismatch"] else "ok"
    return (f"SRM: {status} (χ² = {s['chi2']:.3f}, p = {_p(s['p_value'])}, alert below {s['threshold']}; "
            f"users control {a['users']['control']:,} / treatment {a['users']['treatment']:,}, "
            f"expected split {' / '.join(f'{x:g}' for x in s['shares'])})")


DIFF_HEADER = ("cold-start metric − overall metric", "lift (cold start)", "lift (overall)", "difference", "95% CI")


def _diff_rows(a: dict) -> list[list[str]]:
    """Rows comparing a cold-start lift with its overall lift (paired delta-method CI)."""
    return [[d["key"], _pct(d["lift_a"]["value"]), _pct(d["lift_b"]["value"]), _pct(d["difference"]["value"]),
             f"[{_pct(d['difference']['ci_low'])}, {_pct(d['difference']['ci_high'])}]"]
            for d in a.get("lift_differences", [])]


def render_markdown(a: dict) -> str:
    pre = a["pre_period"]
    lines = [f"# A/B experiment `{a['experiment']}`", "",
             f"- {_srm_line(a)}",
             f"- events: {a['events']['rows']:,} rows, days {a['events']['first_day']}–{a['events']['last_day']}",
             "- CUPED pre-period: " + ("none" if pre is None else f"organic logs, days {pre['first_day']}–{pre['last_day']}"),
             f"- alpha {a['alpha']}, multiple testing: {a['multiple_testing']} across {len(a['results'])} tests, "
             f"MDE at power {a['power']}",
             f"- generator version: {a['generator_version']}", "",
             "![forest plot](forest.png)", "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in _rows(a)]
    lines += ["", "Lift = treatment / control − 1 with a delta-method CI; means are per exposed user "
              "(CUPED-adjusted where a pre-period exists), ratios are Σ numerator / Σ denominator.", ""]
    if _diff_rows(a):
        lines += ["## Cold-start lift vs overall lift", "",
                  "| " + " | ".join(DIFF_HEADER) + " |", "|" + "---|" * len(DIFF_HEADER)]
        lines += ["| " + " | ".join(row) + " |" for row in _diff_rows(a)]
        lines += ["", "Unadjusted lifts on the same users; the CI of the difference uses their covariance.", ""]
    return "\n".join(lines)


def render_html(a: dict, png: bytes) -> str:
    esc = html.escape
    img = base64.b64encode(png).decode()
    srm_class = "bad" if a["srm"]["mismatch"] else "ok"
    table = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in _rows(a))
    pre = a["pre_period"]
    diffs = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in _diff_rows(a))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>abtest: {esc(a['experiment'])}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.85em; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: right; }}
th {{ background: #f3f3f3; }} td:first-child, td:nth-child(2), td:nth-child(3) {{ text-align: left; }}
.ok {{ color: #1e7e34; }} .bad {{ color: #b00020; font-weight: bold; }}
</style></head><body>
<h1>A/B experiment <code>{esc(a['experiment'])}</code></h1>
<p class="{srm_class}">{esc(_srm_line(a))}</p>
<p>Sample sizes: control {a['users']['control']:,} users, treatment {a['users']['treatment']:,} users.
Events: {a['events']['rows']:,} rows, days {a['events']['first_day']}–{a['events']['last_day']}.
CUPED pre-period: {esc('none' if pre is None else f"organic logs, days {pre['first_day']}–{pre['last_day']}")}.
Alpha {a['alpha']}, multiple testing {esc(a['multiple_testing'])} across {len(a['results'])} tests.</p>
<img alt="forest plot of relative lifts" src="data:image/png;base64,{img}">
<table><tr>{''.join(f'<th>{esc(h)}</th>' for h in HEADER)}</tr>{table}</table>
<h2>Cold-start lift vs overall lift</h2>
<table><tr>{''.join(f'<th>{esc(h)}</th>' for h in DIFF_HEADER)}</tr>{diffs}</table>
<p>Lift = treatment / control − 1 with a delta-method CI. Generated {esc(a['created'])}, generator
{esc(str(a['generator_version']))}.</p>
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
