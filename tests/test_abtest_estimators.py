"""abtest.estimators: the one choice of a cell's tests, against the abtest.stats functions it wraps."""

from __future__ import annotations

import numpy as np
import pytest

from abtest import stats
from abtest.estimators import Estimator

RNG = np.random.default_rng(7)
N = 400
Y = RNG.poisson(5.0, (2, N)).astype(float)             # impressions per user, control and treatment
D = Y + RNG.poisson(1.0, (2, N))                       # pre-period impressions
X = RNG.binomial(Y.astype(int), 0.1).astype(float)     # clicks
C = RNG.binomial(D.astype(int), 0.1).astype(float)     # pre-period clicks
COLUMNS = {"x": X, "y": Y, "c": C, "d": D}


def _sums(est: Estimator, v: int, rows=slice(None)) -> dict:
    """Variant v's sums, by name, of the columns over users (the last axis) of ``rows``."""
    cols = {a: COLUMNS[a][v][rows] for a in est.columns}
    return {"n": cols["x"].shape[-1]} | {k: np.prod([cols[a] for a in k[1:]], axis=0).sum(-1) for k in est.sums}


@pytest.mark.parametrize("kind, covariate, primary, methods, reference", [
    ("mean", False, "welch", ["welch"],
     lambda v: stats.MeanStats.from_values(X[v])),
    ("mean", True, "cuped_welch", ["welch", "cuped_welch"],
     lambda v: stats.CupedStats.from_values(X[v], C[v])),
    ("ratio", False, "delta_ratio", ["delta_ratio"],
     lambda v: stats.RatioStats.from_values(X[v], Y[v])),
    ("ratio", True, "cuped_delta_ratio", ["delta_ratio", "cuped_delta_ratio"],
     lambda v: stats.RatioCupedStats.from_values(X[v], Y[v], C[v], D[v])),
])
def test_choice_by_kind_and_covariate(kind, covariate, primary, methods, reference):
    est = Estimator(kind, covariate)
    res = est.run(_sums(est, 0), _sums(est, 1), alpha=0.05, metric="m")
    assert res.primary.method == primary
    assert [res.unadjusted.method] + ([res.cuped.effect.method] if covariate else []) == methods
    assert (res.cuped is not None) == covariate
    test = {"welch": stats.welch_test, "cuped_welch": stats.cuped_test, "delta_ratio": stats.ratio_test,
            "cuped_delta_ratio": stats.ratio_cuped_test}[primary]
    ref = test(reference(0), reference(1), alpha=0.05, metric="m")
    ref = ref.effect if covariate else ref
    assert float(res.primary.absolute.p_value) == pytest.approx(float(ref.absolute.p_value), rel=1e-9)
    assert float(res.primary.relative.ci_low) == pytest.approx(float(ref.relative.ci_low), rel=1e-9)


def test_sum_names_and_unit_variance():
    assert Estimator("mean", False).sums == ("sx", "sxx")
    assert Estimator("mean", True).sums == ("sx", "sc", "sxx", "sxc", "scc")
    assert set(Estimator("ratio", True).sums) == {"sx", "sy", "sc", "sd", "sxx", "sxy", "sxc", "sxd", "syy", "syc",
                                                  "syd", "scc", "scd", "sdd"}
    ratio, mean = Estimator("ratio", False), Estimator("mean", True)
    control = stats.RatioStats.from_values(X[0], Y[0])
    assert float(ratio.run(_sums(ratio, 0), _sums(ratio, 1), alpha=0.05).unit_variance[0]) == pytest.approx(
        float(control.ratio_variance * N))
    # CUPED's MDE scales the unadjusted per-user variance
    assert float(mean.run(_sums(mean, 0), _sums(mean, 1), alpha=0.05).unit_variance[1]) == pytest.approx(
        np.var(X[1], ddof=1))
    with pytest.raises(ValueError, match="metric kind: expected one of mean, ratio, found 'median'"):
        Estimator("median", False)


def test_vectorised_over_assignments():
    """Sums with a leading axis (one entry per re-randomisation) give the per-row results."""
    est = Estimator("ratio", True)
    rows = [slice(0, 200), slice(100, 400), slice(50, 350)]
    stacked = {v: {k: np.array([_sums(est, v, r)[k] for r in rows]) for k in ("n",) + est.sums} for v in (0, 1)}
    res = est.run(stacked[0], stacked[1], alpha=0.05)
    assert res.primary.absolute.p_value.shape == (3,)
    for j, r in enumerate(rows):
        one = est.run(_sums(est, 0, r), _sums(est, 1, r), alpha=0.05)
        assert res.primary.absolute.p_value[j] == pytest.approx(float(one.primary.absolute.p_value), rel=1e-9)
        assert res.cuped.theta[j] == pytest.approx(float(one.cuped.theta), rel=1e-9)
