"""`abtest analyze` on a team's own experiment logs (an analysis-only exp.yaml, no pins table, surfaces of its
own): every silent wrong answer of issue 28 now exits 2 with one line naming the table, the column and what
was found, or is excluded, counted and shown in the CLI line and the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from statsmodels.stats.multitest import multipletests

from abtest import stats
from abtest.cli import main
from pinlift.core.vocabulary import FEED, ADS, Surface, Vocabulary, write_vocabulary

NAME, START, COUNT, USERS = "checkout_v2", 10, 4, 40
TEAM = Vocabulary(surfaces=(Surface(name="search", kind=FEED, tasks=("click",)),
                            Surface(name="shop", kind=ADS, tasks=("click",))))
CONFIG = f"""name: {NAME}
workdir: ws                      # relative to this file
days: {{start: {START}, count: {COUNT}}}
"""


def _logs(seed: int = 0) -> tuple[list[dict], list[dict], dict[int, float]]:
    """Exposures and events of USERS users (even ids control) and each user's click propensity. Search slates of
    3 pins and shop slates of 1 ad, from each user's first exposure day to the window's end; the treatment clicks
    more; shop clicks cost 30 cents; repins only on search; no hides."""
    rng = np.random.default_rng(seed)
    exposures, events, request = [], [], 0
    taste = {u: float(rng.uniform(0.05, 0.4)) for u in range(USERS)}
    for u in range(USERS):
        variant = "control" if u % 2 == 0 else "treatment"
        first = START + (u % 3 == 0)
        exposures.append({"experiment": NAME, "user_id": u, "variant": variant, "first_exposure_day": first})
        for day in range(first, START + COUNT):
            for surface, slots in (("search", 3), ("shop", 1)):
                request += 1
                for pos in range(slots):
                    row = {"day": day, "user_id": u, "surface": surface, "request_id": request, "pin_id": 100 + pos,
                           "position": pos}
                    events.append({**row, "action": "impression", "value": None})
                    if rng.random() < taste[u] * (1.5 if variant == "treatment" else 1.0):
                        events.append({**row, "action": "click", "value": 30.0 if surface == "shop" else None})
                    if surface == "search" and rng.random() < 0.1:
                        events.append({**row, "action": "repin", "value": None})
    return exposures, events, taste


def _write(path: Path, rows: list[dict]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    for old in path.glob("*.parquet"):
        old.unlink()
    pq.write_table(pa.Table.from_pylist(rows), path / "part-0.parquet")


def team(root: Path, exposures=None, events=None, config: str = CONFIG) -> Path:
    """A team's workspace under ``root``: surfaces.yaml, the experiment's logs, exp.yaml beside ``ws/``."""
    base_exp, base_ev, _ = _logs()
    write_vocabulary(root / "ws", TEAM)
    exp = root / "ws" / "experiments" / NAME
    _write(exp / "exposures", base_exp if exposures is None else exposures)
    _write(exp / "events", base_ev if events is None else events)
    (root / "exp.yaml").write_text(config)
    return root / "exp.yaml"


def _analyze(path: Path, capsys) -> tuple[int, str, str]:
    code = main(["analyze", str(path)])
    out = capsys.readouterr()
    return code, out.out, out.err


def _one_line_error(path: Path, capsys, *words: str) -> str:
    """Exit 2, one line on stderr holding ``words``, and no analysis written."""
    written = path.parent / "ws" / "experiments" / NAME / "analysis.json"
    before = written.stat().st_mtime_ns if written.exists() else None
    code, _, err = _analyze(path, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    for w in words:
        assert w in err, (w, err)
    assert (written.stat().st_mtime_ns if written.exists() else None) == before
    return err.strip()


def _analysis(path: Path) -> dict:
    return json.loads((path.parent / "ws" / "experiments" / NAME / "analysis.json").read_text())


def _result(a: dict, key: str) -> dict:
    return next(r for r in a["results"] if r["key"] == key)


def _ctr(events: list[dict], exposures: list[dict], surface="search") -> dict[str, float]:
    """Σ clicks / Σ impressions per variant, by hand."""
    e = pd.DataFrame(events).merge(pd.DataFrame(exposures)[["user_id", "variant"]], on="user_id")
    e = e[e.surface == surface]
    return {v: (g.action == "click").sum() / (g.action == "impression").sum() for v, g in e.groupby("variant")}


@pytest.fixture()
def clean(tmp_path, capsys, monkeypatch):
    """The clean logs analysed from another folder: (exp.yaml, analysis, stdout)."""
    path = team(tmp_path)
    monkeypatch.chdir(tmp_path.parent)       # `workdir: ws` is relative to the file, not to the current folder
    code, out, err = _analyze(path, capsys)
    assert code == 0, err
    return path, _analysis(path), out


def test_an_analysis_only_config_on_a_team_workspace(clean, capsys):
    path, a, out = clean
    exposures, events, _ = _logs()
    # no arms, no pins table: the default metrics are those without pins, on the team's own surfaces
    assert [r["key"] for r in a["results"]] == ["repins/search", "repins/shop", "clicks/search", "clicks/shop",
                                                "ctr/search", "ctr/shop", "cpc/shop", "hides/search", "hides/shop"]
    ctr = _result(a, "ctr/search")
    hand = _ctr(events, exposures)
    assert (ctr["control_mean"], ctr["treatment_mean"]) == pytest.approx((hand["control"], hand["treatment"]))
    assert a["events"]["rows"] == a["events"]["counted"] == len(events) and a["events"]["window"] == [10, 13]
    assert "excluded: none" in out and f"events: {len(events):,} rows, {len(events):,} counted" in out
    # simulating needs arms: one line
    assert main(["simulate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("arms: expected `arms:` (what each variant serves) to simulate, found an analysis-only "
                        "config") and len(err.splitlines()) == 1


def test_a_cell_without_data_stays_out_of_the_family(clean):
    _, a, out = clean
    empty = [r for r in a["results"] if r["excluded"] == "no data"]
    assert [r["key"] for r in empty] == ["repins/shop", "hides/search", "hides/shop"]
    assert all(r["p_value"] is None and r["p_adjusted"] is None and not r["significant"] for r in empty)
    tested = [r for r in a["results"] if r["p_value"] is not None]
    assert len(tested) == 6
    np.testing.assert_allclose([r["p_adjusted"] for r in tested],
                               multipletests([r["p_value"] for r in tested], method="fdr_bh")[1])
    assert "no data: repins/shop, hides/search, hides/shop" in out
    assert "| repins | shop | welch | — | — | — | no relative lift: no data | — | — |" in \
        (Path(_one_dir(clean)) / "report.md").read_text()


def _one_dir(clean) -> Path:
    return clean[0].parent / "ws" / "experiments" / NAME


@pytest.mark.parametrize("table, column, value, found", [
    ("events", "user_id", None, "column 'user_id': expected no nulls, found 1 null row"),
    ("events", "request_id", None, "column 'request_id': expected no nulls, found 1 null row"),
    ("exposures", "user_id", None, "column 'user_id': expected no nulls, found 1 null row"),
    ("events", "action", "Click", "column 'action': expected one of impression, repin, click, hide, "
                                  "found 'Click' (1 row)"),
    ("events", "surface", "movielens", "column 'surface': expected a surface the workspace declares (search, shop), "
                                       "found 'movielens' (1 row)"),
    ("exposures", "experiment", "checkout_v1", f"column 'experiment': expected '{NAME}' (the experiment's name), "
                                               "found 'checkout_v1' (1 row)"),
    ("exposures", "first_exposure_day", 9, "column 'first_exposure_day': expected days 10–13 (exp.yaml `days:`), "
                                           "found 1 user first exposed on days 9–9 (e.g. user 5)"),
])
def test_bad_rows_are_one_line_errors(tmp_path, capsys, table, column, value, found):
    exposures, events, _ = _logs()
    rows = exposures if table == "exposures" else events
    rows[5] = {**rows[5], column: value}
    path = team(tmp_path, exposures, events)
    err = _one_line_error(path, capsys, found)
    assert err.startswith(f"abtest: {tmp_path / 'ws' / 'experiments' / NAME / table}: ")


def test_unknown_values_are_listed(tmp_path, capsys):
    exposures, events, _ = _logs()
    clicks = [i for i, e in enumerate(events) if e["action"] == "click"]
    for i in clicks[:3]:
        events[i] = {**events[i], "action": "Click"}
    events[clicks[3]] = {**events[clicks[3]], "action": "CLICK"}
    path = team(tmp_path, exposures, events)
    _one_line_error(path, capsys, "found 'Click' (3 rows), 'CLICK' (1 row)")


def test_conflicting_duplicates_are_errors(tmp_path, capsys):
    exposures, events, _ = _logs()
    click = next(e for e in events if e["action"] == "click" and e["surface"] == "shop")
    path = team(tmp_path, exposures, events + [{**click, "value": 45.0}])
    _one_line_error(path, capsys, "key (request_id, position, action): expected one row per key (or exact "
                    f"duplicates), found different rows for ({click['request_id']}, 0, 'click'), differing in value")


def test_exact_duplicates_are_counted_once_and_shown(tmp_path, capsys, clean):
    exposures, events, _ = _logs()
    dup = [e for e in events if e["surface"] == "search"][:50]
    path = team(tmp_path, exposures, events + dup)
    code, out, _ = _analyze(path, capsys)
    a = _analysis(path)
    assert code == 0 and a["events"]["excluded"]["duplicate_rows"] == 50 and a["events"]["counted"] == len(events)
    assert _result(a, "ctr/search")["control_mean"] == _result(clean[1], "ctr/search")["control_mean"]  # not doubled
    assert "excluded: 50 exact duplicate rows" in out
    assert "excluded: 50 exact duplicate rows" in (path.parent / "ws" / "experiments" / NAME / "report.md").read_text()


def test_events_outside_the_window_or_before_exposure_are_excluded_and_counted(tmp_path, capsys, clean):
    exposures, events, _ = _logs()
    late = [{**e, "day": START + COUNT, "request_id": e["request_id"] + 10**6} for e in events[:30]]
    early = [{**e, "day": d, "request_id": e["request_id"] + 2 * 10**6 + d} for e in events[:10] for d in (-1, 9)]
    # user 0 is first exposed on day 11: its day-10 events come before its exposure
    user0 = [{**e, "day": 10, "request_id": e["request_id"] + 3 * 10**6} for e in events if e["user_id"] == 0][:4]
    stranger = [{**e, "user_id": 999, "request_id": e["request_id"] + 4 * 10**6} for e in events[:7]]
    path = team(tmp_path, exposures, events + late + early + user0 + stranger)
    code, out, _ = _analyze(path, capsys)
    a = _analysis(path)
    assert code == 0
    assert a["events"]["excluded"] == {"duplicate_rows": 0, "after_window": 30, "before_exposure": 24,
                                       "without_exposure": 7}
    assert a["events"]["counted"] == len(events)
    for key in ("ctr/search", "clicks/search", "cpc/shop"):       # the same numbers as the clean logs
        for field in ("control_mean", "treatment_mean", "p_value"):
            assert _result(a, key)[field] == _result(clean[1], key)[field]
    line = ("excluded: 30 events after the window (day ≥ 14), 24 events before first exposure, "
            "7 events of users without an exposure")
    assert line in out
    report = (path.parent / "ws" / "experiments" / NAME)
    assert line in (report / "report.md").read_text() and line in (report / "report.html").read_text()


def test_without_days_count_every_later_day_counts(tmp_path, capsys):
    exposures, events, _ = _logs()
    late = [{**e, "day": START + COUNT, "request_id": e["request_id"] + 10**6} for e in events[:30]]
    path = team(tmp_path, exposures, events + late, CONFIG.replace(f", count: {COUNT}", ""))
    code, out, _ = _analyze(path, capsys)
    assert code == 0 and "excluded: none" in out and _analysis(path)["events"]["window"] == [START, None]


def test_covariates_table_gives_cuped(tmp_path, capsys):
    exposures, events, taste = _logs()
    covariates = [{"user_id": u, "repins": 0.0, "clicks": 40 * t, "ctr": t, "cpc": 30.0, "hides": 0.0}
                  for u, t in taste.items() if u not in (3, 4)]          # users 3 and 4 without a row: 0
    path = team(tmp_path, exposures, events, CONFIG + "covariates: pre_period.parquet\n")
    pq.write_table(pa.Table.from_pylist(covariates), tmp_path / "pre_period.parquet")
    code, out, err = _analyze(path, capsys)
    assert code == 0, err
    a = _analysis(path)
    clicks = _result(a, "clicks/search")
    assert clicks["method"] == "cuped_welch" and _result(a, "ctr/search")["method"] == "cuped_delta_ratio"
    # the CUPED test on per-user values computed by hand
    e = pd.DataFrame(events)
    x = e[(e.surface == "search") & (e.action == "click")].groupby("user_id").size().reindex(range(USERS), fill_value=0)
    c = pd.Series({r["user_id"]: r["clicks"] for r in covariates}).reindex(range(USERS), fill_value=0.0)
    ctrl = np.arange(USERS) % 2 == 0
    ref = stats.cuped_test(stats.CupedStats.from_values(x[ctrl].to_numpy(float), c[ctrl].to_numpy()),
                           stats.CupedStats.from_values(x[~ctrl].to_numpy(float), c[~ctrl].to_numpy()))
    assert clicks["absolute"]["value"] == pytest.approx(float(ref.effect.absolute.value))
    assert clicks["cuped"]["theta"] == pytest.approx(float(ref.theta))
    assert clicks["cuped"]["variance_reduction_factor"] < 0.9
    assert a["pre_period"]["users_with_row"] == USERS - 2
    assert "CUPED covariates: the table" in (path.parent / "ws" / "experiments" / NAME / "report.md").read_text()
    # a metric without its column, or a null, is one line
    pq.write_table(pa.Table.from_pylist([{k: v for k, v in r.items() if k != "hides"} for r in covariates]),
                   tmp_path / "pre_period.parquet")
    _one_line_error(path, capsys, "pre_period.parquet: column 'hides': expected a float column, found no such column")
    pq.write_table(pa.Table.from_pylist([{**covariates[0], "clicks": None}] + covariates[1:]),
                   tmp_path / "pre_period.parquet")
    _one_line_error(path, capsys, "pre_period.parquet: column 'clicks': expected no nulls, found 1 null row")


def test_default_metrics_need_no_pins_but_a_pins_metric_says_so(tmp_path, capsys):
    path = team(tmp_path, config=CONFIG + "metrics: [clicks, fresh_repins]\n")
    _one_line_error(path, capsys, "world/pins.parquet: pins: expected the pins table (metric 'fresh_repins' needs "
                    "created_day / is_ad), found no such file")


def test_surfaces_declared_by_the_experiment(tmp_path, capsys):
    path = team(tmp_path, config=CONFIG + "surfaces:\n  - {name: search, kind: feed}\n  - {name: shop, kind: ads}\n")
    (tmp_path / "ws" / "world" / "surfaces.yaml").unlink()
    code, _, err = _analyze(path, capsys)
    assert code == 0, err
    assert _result(_analysis(path), "cpc/shop")["control_mean"] == pytest.approx(30.0)   # shop is of kind ads
    write_vocabulary(tmp_path / "ws", TEAM)       # both declare: which one holds is ambiguous
    _one_line_error(path, capsys, "surfaces: expected surface names (the workspace declares its surfaces in")
