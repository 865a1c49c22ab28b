"""The test of a cell, chosen in one place for `abtest analyze` and `abtest validate`.

A cell's estimator depends on its metric kind and on whether the pre-period covariate is used
(``analyze.pre_window``: `cuped:` on, `pre_period_days` > 0 and organic activity in those days):

| kind  | covariate | primary test        | also reported  |
|-------|-----------|---------------------|----------------|
| mean  | no        | welch               |                |
| mean  | yes       | cuped_welch         | welch          |
| ratio | no        | delta_ratio         |                |
| ratio | yes       | cuped_delta_ratio   | delta_ratio    |

It reads one variant's sums by name: ``n`` and ``s<a>`` = Σa, ``s<a><b>`` = Σa·b over the per-user
columns x (the metric, or a ratio's numerator), y (a ratio's denominator), c and d (the same over the
pre-period); e.g. ``sxd`` = Σx·d. These are the names ``metrics.sufficient_stats`` gives (without the
cell index). Sums may be numpy arrays of one shape (one entry per re-randomisation); so are the results.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from abtest import stats
from abtest.stats import Value

KINDS = ("mean", "ratio")


@dataclass(frozen=True)
class CellTest:
    """A cell's tests: the unadjusted one and, with the covariate, CUPED."""

    unadjusted: stats.EffectResult
    cuped: stats.CupedResult | None
    unit_variance: tuple[Value, Value]  # per-user variance behind the unadjusted test, control and treatment

    @property
    def primary(self) -> stats.EffectResult:
        """The test `abtest analyze` reports and adjusts for multiple testing."""
        return self.unadjusted if self.cuped is None else self.cuped.effect


@dataclass(frozen=True)
class Estimator:
    """The tests of one metric kind, CUPED-adjusted when ``covariate``."""

    kind: str
    covariate: bool

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"abtest: metric kind: expected one of {', '.join(KINDS)}, found {self.kind!r}")

    @property
    def columns(self) -> str:
        """The per-user columns it sums, one letter each."""
        ratio = self.kind == "ratio"
        return ("xy" if ratio else "x") + (("cd" if ratio else "c") if self.covariate else "")

    @property
    def sums(self) -> tuple[str, ...]:
        """The per-variant sums it needs besides ``n``: of its columns and their pairwise products, "sx", "sxx", ..."""
        cols = self.columns
        return tuple(f"s{a}" for a in cols) + tuple(f"s{a}{b}" for i, a in enumerate(cols) for b in cols[i:])

    def run(self, control: Mapping[str, Value], treatment: Mapping[str, Value], *, alpha: float,
            metric: str | None = None) -> CellTest:
        """Treatment vs control from each variant's ``n`` and ``sums``."""
        with np.errstate(divide="ignore", invalid="ignore"):
            if self.kind == "ratio":
                rc, rt = (_ratio(s, "x", "y") for s in (control, treatment))
                plain = stats.ratio_test(rc, rt, alpha=alpha, metric=metric)
                unit = (rc.ratio_variance * rc.n, rt.ratio_variance * rt.n)
                cuped = stats.ratio_cuped_test(
                    *(stats.RatioCupedStats(r, _ratio(s, "c", "d"), s["sxc"], s["sxd"], s["syc"], s["syd"])
                      for r, s in ((rc, control), (rt, treatment))),
                    alpha=alpha, metric=metric) if self.covariate else None
            else:
                mc, mt = (stats.MeanStats(s["n"], s["sx"], s["sxx"]) for s in (control, treatment))
                plain = stats.welch_test(mc, mt, alpha=alpha, metric=metric)
                unit = (mc.variance, mt.variance)
                cuped = stats.cuped_test(
                    *(stats.CupedStats(s["n"], s["sx"], s["sxx"], s["sc"], s["scc"], s["sxc"])
                      for s in (control, treatment)),
                    alpha=alpha, metric=metric) if self.covariate else None
        return CellTest(plain, cuped, unit)


def _ratio(s: Mapping[str, Value], x: str, y: str) -> stats.RatioStats:
    return stats.RatioStats(s["n"], s[f"s{x}"], s[f"s{y}"], s[f"s{x}{x}"], s[f"s{y}{y}"], s[f"s{x}{y}"])
