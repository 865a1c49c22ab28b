"""abtest.stats against hand calculations, scipy references and seeded simulations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from abtest.stats import (
    CupedStats,
    MeanStats,
    PairedMeanStats,
    RatioCupedStats,
    RatioStats,
    adjust_p_values,
    cuped_test,
    lift_difference_test,
    minimum_detectable_effect,
    power_check,
    ratio_cuped_test,
    ratio_test,
    relative_lift,
    sample_size,
    srm_test,
    welch_test,
)

Z975 = 1.959963984540054
Z80 = 0.8416212335729143

CONTROL = [1.0, 2.0, 3.0, 4.0]          # mean 2.5, variance 5/3
TREATMENT = [2.0, 4.0, 6.0, 8.0, 10.0]  # mean 6, variance 10


def _coverage(estimate, truth) -> float:
    return float(np.mean((estimate.ci_low <= truth) & (truth <= estimate.ci_high)))


# --- sufficient statistics -------------------------------------------------------------------

def test_mean_stats_by_hand():
    s = MeanStats.from_values(CONTROL)
    assert (s.n, s.sum_x, s.sum_x2) == (4, 10.0, 30.0)
    assert s.mean == 2.5
    assert s.variance == pytest.approx(5 / 3)


def test_from_values_sums_the_last_axis():
    x = np.arange(12.0).reshape(3, 4)
    s = MeanStats.from_values(x)
    assert s.n == 4
    np.testing.assert_allclose(s.mean, x.mean(1))
    np.testing.assert_allclose(s.variance, x.var(1, ddof=1))


# --- Welch t-test and relative lift ----------------------------------------------------------

def test_welch_by_hand_and_against_scipy():
    r = welch_test(MeanStats.from_values(CONTROL), MeanStats.from_values(TREATMENT), metric="m")
    a = r.absolute
    assert (r.metric, r.method, r.control_mean, r.treatment_mean) == ("m", "welch", 2.5, 6.0)
    # se² = (5/3)/4 + 10/5 = 29/12; df = (29/12)² / ((5/12)²/3 + 2²/4) = 2523/457
    assert a.value == pytest.approx(3.5)
    assert a.se == pytest.approx(math.sqrt(29 / 12))
    assert a.df == pytest.approx(2523 / 457)
    ref = sps.ttest_ind(TREATMENT, CONTROL, equal_var=False)
    assert a.statistic == pytest.approx(ref.statistic)
    assert a.p_value == pytest.approx(ref.pvalue)
    ci = ref.confidence_interval(0.95)
    assert (a.ci_low, a.ci_high) == (pytest.approx(ci.low), pytest.approx(ci.high))


@pytest.mark.parametrize("seed, n_c, n_t, alpha", [(1, 30, 50, 0.05), (2, 7, 300, 0.1)])
def test_welch_matches_scipy_on_random_data(seed, n_c, n_t, alpha):
    rng = np.random.default_rng(seed)
    x_c, x_t = rng.exponential(2.0, n_c), rng.normal(2.5, 3.0, n_t)
    a = welch_test(MeanStats.from_values(x_c), MeanStats.from_values(x_t), alpha=alpha).absolute
    ref = sps.ttest_ind(x_t, x_c, equal_var=False)
    ci = ref.confidence_interval(1 - alpha)
    np.testing.assert_allclose([a.statistic, a.p_value, a.df, a.ci_low, a.ci_high],
                               [ref.statistic, ref.pvalue, ref.df, ci.low, ci.high], rtol=1e-9)


def test_welch_on_constant_metrics():
    zeros = MeanStats.from_values(np.zeros(10))
    r = welch_test(zeros, zeros)
    assert (r.absolute.value, r.absolute.p_value, r.absolute.ci_low, r.absolute.ci_high) == (
        0, 1, 0, 0)
    assert np.isnan(r.relative.value) and np.isnan(r.relative.p_value)
    shifted = welch_test(MeanStats.from_values(np.ones(10)), MeanStats.from_values(np.full(10, 2)))
    assert shifted.absolute.p_value == 0 and shifted.relative.value == 1


def test_welch_rejects_single_user_variants():
    with pytest.raises(ValueError, match="control needs at least 2 users"):
        welch_test(MeanStats.from_values([1.0]), MeanStats.from_values(TREATMENT))


def test_relative_lift_log_ratio_interval_by_hand():
    r = welch_test(MeanStats.from_values(CONTROL), MeanStats.from_values(TREATMENT)).relative
    # log-ratio delta method: se_log² = (10/5)/6² + ((5/3)/4)/2.5²; the lift's se is (6/2.5)·se_log = sqrt(0.704)
    se_log = math.sqrt(2 / 36 + (5 / 12) / 6.25)
    assert r.value == pytest.approx(1.4)
    assert r.se == pytest.approx(math.sqrt(0.704))
    assert (r.ci_low, r.ci_high) == (pytest.approx(2.4 * math.exp(-Z975 * se_log) - 1),
                                     pytest.approx(2.4 * math.exp(Z975 * se_log) - 1))
    assert r.p_value == pytest.approx(2 * sps.norm.sf(math.log(2.4) / se_log))
    direct = relative_lift(2.5, (5 / 3) / 4, 6.0, 10 / 5)
    assert (direct.value, direct.se, direct.ci_low) == (pytest.approx(1.4), pytest.approx(r.se),
                                                        pytest.approx(r.ci_low))


def test_relative_lift_never_crosses_minus_100_percent():
    rng = np.random.default_rng(7)
    c, t = rng.uniform(0.1, 2, 500), rng.uniform(0.05, 2, 500)
    var_c, var_t = rng.uniform(0, 0.3, 500), rng.uniform(0, 0.3, 500)   # noisy: linear CIs often go below −100%
    r = relative_lift(c, var_c, t, var_t)
    assert (r.ci_low > -1).all() and (r.ci_low <= r.value).all() and (r.value <= r.ci_high).all()
    se_log = np.sqrt(var_t / t**2 + var_c / c**2)
    np.testing.assert_allclose(r.ci_low, np.exp(np.log(t / c) - Z975 * se_log) - 1, rtol=1e-9)
    np.testing.assert_allclose(r.ci_high, np.exp(np.log(t / c) + Z975 * se_log) - 1, rtol=1e-9)
    assert (t / c - 1 - Z975 * r.se < -1).any()
    # a mean that is not positive has no relative lift
    none = relative_lift(np.array([0.0, -0.1, 1.0]), 0.1, np.array([1.0, 1.0, -0.5]), 0.1)
    assert np.isnan(none.value).all() and np.isnan(none.ci_low).all() and np.isnan(none.p_value).all()


def test_welch_and_lift_intervals_cover_in_simulation():
    rng = np.random.default_rng(3)
    control = MeanStats.from_values(rng.exponential(2.0, (2000, 300)))
    treatment = MeanStats.from_values(rng.exponential(2.2, (2000, 300)))
    r = welch_test(control, treatment)
    assert 0.93 <= _coverage(r.absolute, 0.2) <= 0.97
    assert 0.93 <= _coverage(r.relative, 0.1) <= 0.97


def test_vectorised_results_equal_the_scalar_ones():
    rng = np.random.default_rng(4)
    x_c, x_t = rng.normal(1.0, 1.0, (5, 40)), rng.normal(1.3, 2.0, (5, 60))
    batch = welch_test(MeanStats.from_values(x_c), MeanStats.from_values(x_t))
    for i in range(5):
        one = welch_test(MeanStats.from_values(x_c[i]), MeanStats.from_values(x_t[i]))
        assert batch.absolute.p_value[i] == pytest.approx(one.absolute.p_value)
        assert batch.relative.ci_high[i] == pytest.approx(one.relative.ci_high)


# --- ratio metrics ----------------------------------------------------------------------------

CLICKS = [1.0, 0.0, 2.0, 1.0, 3.0]
IMPRESSIONS = [10.0, 5.0, 8.0, 4.0, 12.0]


def test_ratio_variance_by_hand():
    s = RatioStats.from_values(CLICKS, IMPRESSIONS)
    assert s.ratio == pytest.approx(7 / 39)
    # residuals x − R·y = (−31, −35, 22, 11, 33)/39 sum to 0 and square-sum to 3880/39²;
    # Var(R) = 3880/39² / (n − 1) / (n·ȳ²) with ȳ = 7.8, which is 4850/39⁴.
    assert s.ratio_variance == pytest.approx(4850 / 39**4)


def test_ratio_variance_matches_bootstrap():
    rng = np.random.default_rng(5)
    impressions = rng.poisson(rng.gamma(2.0, 10.0, 3000)) + 1
    clicks = rng.binomial(impressions, rng.beta(2.0, 30.0, 3000))
    delta = RatioStats.from_values(clicks, impressions).ratio_variance
    idx = rng.integers(0, 3000, (1000, 3000))
    boot = clicks[idx].sum(1) / impressions[idx].sum(1)
    assert boot.var(ddof=1) == pytest.approx(delta, rel=0.15)


def test_ratio_test_by_hand():
    c = RatioStats.from_values(CLICKS, IMPRESSIONS)
    t = RatioStats.from_values([2.0, 1.0, 3.0, 0.0], [10.0, 10.0, 10.0, 10.0])  # CTR 0.15
    r = ratio_test(c, t, metric="ctr")
    var_c, var_t = 4850 / 39**4, (np.var([0.2, 0.1, 0.3, 0.0], ddof=1) / 4)
    assert (r.control_mean, r.treatment_mean) == (pytest.approx(7 / 39), pytest.approx(0.15))
    assert r.absolute.value == pytest.approx(0.15 - 7 / 39)
    assert r.absolute.se == pytest.approx(math.sqrt(var_c + var_t))
    assert r.absolute.p_value == pytest.approx(
        2 * sps.norm.sf(abs(0.15 - 7 / 39) / math.sqrt(var_c + var_t)))
    lift = relative_lift(7 / 39, var_c, 0.15, var_t)
    assert (r.relative.value, r.relative.se) == (pytest.approx(lift.value), pytest.approx(lift.se))
    same = ratio_test(c, c)
    assert (same.absolute.value, same.absolute.p_value, same.relative.value) == (0, 1, 0)


def test_ratio_test_covers_where_the_binomial_formula_does_not():
    rng = np.random.default_rng(6)
    reps, users = 1000, 400

    def variant(ctr_scale):
        impressions = rng.poisson(rng.gamma(1.5, 20.0, (reps, users))) + 1
        ctr = np.minimum(rng.beta(1.0, 12.0, (reps, users)) * ctr_scale, 1.0)
        return RatioStats.from_values(rng.binomial(impressions, ctr), impressions)

    control, treatment = variant(1.0), variant(1.1)
    r = ratio_test(control, treatment)
    true_diff = 1.1 / 13 - 1 / 13  # mean of Beta(1, 12) is 1/13
    assert 0.92 <= _coverage(r.absolute, true_diff) <= 0.98
    assert 0.92 <= _coverage(r.relative, 0.1) <= 0.98
    # Treating impressions as independent Bernoulli trials ignores user clustering.
    naive_se = np.sqrt(r.control_mean * (1 - r.control_mean) / control.sum_y
                       + r.treatment_mean * (1 - r.treatment_mean) / treatment.sum_y)
    naive_hits = np.abs(r.absolute.value - true_diff) <= Z975 * naive_se
    assert naive_hits.mean() < 0.9


# --- CUPED --------------------------------------------------------------------------------------

def test_cuped_matches_welch_on_explicitly_adjusted_values():
    rng = np.random.default_rng(7)
    c_c, c_t = rng.gamma(2.0, 1.0, 60), rng.gamma(2.0, 1.0, 80)
    x_c = 1.0 + 0.8 * c_c + rng.normal(0, 1, 60)
    x_t = 1.5 + 0.8 * c_t + rng.normal(0, 1, 80)
    r = cuped_test(CupedStats.from_values(x_c, c_c), CupedStats.from_values(x_t, c_t))
    within = np.cov(x_c, c_c)[0, 1] * 59 + np.cov(x_t, c_t)[0, 1] * 79
    theta = within / (np.var(c_c, ddof=1) * 59 + np.var(c_t, ddof=1) * 79)
    assert r.theta == pytest.approx(theta)
    grand = np.concatenate([c_c, c_t]).mean()
    adj_c, adj_t = x_c - theta * (c_c - grand), x_t - theta * (c_t - grand)
    ref = sps.ttest_ind(adj_t, adj_c, equal_var=False)
    e = r.effect
    assert (e.control_mean, e.treatment_mean) == (pytest.approx(adj_c.mean()),
                                                  pytest.approx(adj_t.mean()))
    assert (e.absolute.statistic, e.absolute.p_value, e.absolute.df) == (
        pytest.approx(ref.statistic), pytest.approx(ref.pvalue), pytest.approx(ref.df))
    x_all, c_all = np.concatenate([x_c - x_c.mean(), x_t - x_t.mean()]), np.concatenate(
        [c_c - c_c.mean(), c_t - c_t.mean()])
    assert r.variance_reduction_factor == pytest.approx(1 - np.corrcoef(x_all, c_all)[0, 1] ** 2)
    raw = welch_test(MeanStats.from_values(x_c), MeanStats.from_values(x_t))
    assert e.absolute.se < raw.absolute.se


def test_cuped_with_a_perfect_covariate_removes_all_variance():
    rng = np.random.default_rng(8)
    c_c, c_t = rng.normal(5, 2, 50), rng.normal(5, 2, 70)
    r = cuped_test(CupedStats.from_values(3 + 2 * c_c, c_c),
                   CupedStats.from_values(3.25 + 2 * c_t, c_t))
    raw = welch_test(MeanStats.from_values(3 + 2 * c_c), MeanStats.from_values(3.25 + 2 * c_t))
    assert r.theta == pytest.approx(2.0)
    assert r.variance_reduction_factor == pytest.approx(0.0, abs=1e-9)
    assert r.effect.absolute.value == pytest.approx(0.25)
    assert r.effect.absolute.se < 1e-6 * raw.absolute.se
    assert r.effect.absolute.p_value < 1e-6


def test_cuped_with_an_uncorrelated_covariate_changes_nothing():
    rng = np.random.default_rng(9)
    x_c, x_t = rng.normal(10, 3, 40), rng.normal(11, 3, 60)

    def orthogonal(x):  # a covariate exactly uncorrelated with x within the variant
        c = rng.normal(0, 1, x.size)
        xc, cc = x - x.mean(), c - c.mean()
        return c - (cc @ xc) / (xc @ xc) * xc

    r = cuped_test(CupedStats.from_values(x_c, orthogonal(x_c)),
                   CupedStats.from_values(x_t, orthogonal(x_t)))
    raw = welch_test(MeanStats.from_values(x_c), MeanStats.from_values(x_t))
    assert r.theta == pytest.approx(0.0, abs=1e-12)
    assert r.variance_reduction_factor == pytest.approx(1.0)
    for field in ("value", "se", "df", "p_value", "ci_low", "ci_high"):
        assert getattr(r.effect.absolute, field) == pytest.approx(getattr(raw.absolute, field))
        assert getattr(r.effect.relative, field) == pytest.approx(getattr(raw.relative, field))


def test_cuped_variance_reduction_in_simulation():
    rng = np.random.default_rng(10)
    rho = 0.8
    c = rng.normal(0, 1, (2, 300, 500))
    x = rho * c + math.sqrt(1 - rho**2) * rng.normal(0, 1, c.shape) + 5.0
    x[1] += 0.1  # 2% true lift
    r = cuped_test(CupedStats.from_values(x[0], c[0]), CupedStats.from_values(x[1], c[1]))
    raw = welch_test(MeanStats.from_values(x[0]), MeanStats.from_values(x[1]))
    assert np.median(r.variance_reduction_factor) == pytest.approx(1 - rho**2, abs=0.03)
    assert np.median(r.effect.absolute.se / raw.absolute.se) == pytest.approx(0.6, abs=0.02)
    assert 0.92 <= _coverage(r.effect.absolute, 0.1) <= 0.98
    assert 0.92 <= _coverage(r.effect.relative, 0.02) <= 0.98
    assert np.mean(r.effect.absolute.p_value < 0.05) > np.mean(raw.absolute.p_value < 0.05)


def _clicks(rng, n, ctr_scale, pre_ctr):
    """Per-user impressions and clicks now (y, x) and over the pre-period (d, c); a user's own CTR
    carries over from the pre-period, so the two ratios correlate."""
    taste = rng.beta(2, 20, n)
    d = rng.poisson(30, n).astype(float)
    c = rng.binomial(d.astype(int), taste * pre_ctr).astype(float)
    y = rng.poisson(40, n).astype(float)
    x = rng.binomial(y.astype(int), np.minimum(taste * ctr_scale, 1)).astype(float)
    return x, y, c, d


def test_ratio_cuped_matches_the_explicit_linearisation():
    rng = np.random.default_rng(11)
    (xc, yc, cc, dc), (xt, yt, ct, dt) = _clicks(rng, 400, 1.0, 1.0), _clicks(rng, 500, 1.1, 1.0)
    r = ratio_cuped_test(RatioCupedStats.from_values(xc, yc, cc, dc), RatioCupedStats.from_values(xt, yt, ct, dt))

    def lin(x, y, c, d):   # per-user linearisations L and M of the ratio and the pre-period ratio
        return (x - x.sum() / y.sum() * y) / y.mean(), (c - c.sum() / d.sum() * d) / d.mean()

    (lc, mc), (lt, mt) = lin(xc, yc, cc, dc), lin(xt, yt, ct, dt)
    theta = ((lc - lc.mean()) @ (mc - mc.mean()) + (lt - lt.mean()) @ (mt - mt.mean())) / (
        ((mc - mc.mean()) ** 2).sum() + ((mt - mt.mean()) ** 2).sum())
    assert r.theta == pytest.approx(theta)
    pooled = (cc.sum() + ct.sum()) / (dc.sum() + dt.sum())
    adj_c = xc.sum() / yc.sum() - theta * (cc.sum() / dc.sum() - pooled)
    adj_t = xt.sum() / yt.sum() - theta * (ct.sum() / dt.sum() - pooled)
    se = math.sqrt(np.var(lc - theta * mc, ddof=1) / 400 + np.var(lt - theta * mt, ddof=1) / 500)
    e = r.effect
    assert (e.control_mean, e.treatment_mean) == (pytest.approx(adj_c), pytest.approx(adj_t))
    assert e.absolute.value == pytest.approx(adj_t - adj_c) and e.absolute.se == pytest.approx(se)
    plain = ratio_test(RatioStats.from_values(xc, yc), RatioStats.from_values(xt, yt))
    assert r.correlation > 0.3 and e.absolute.se < plain.absolute.se


def test_ratio_cuped_without_pre_period_is_the_plain_delta_method():
    rng = np.random.default_rng(12)
    (xc, yc, _, _), (xt, yt, _, _) = _clicks(rng, 300, 1.0, 1.0), _clicks(rng, 300, 1.2, 1.0)
    zero = np.zeros(300)
    r = ratio_cuped_test(RatioCupedStats.from_values(xc, yc, zero, zero),
                         RatioCupedStats.from_values(xt, yt, zero, zero))
    plain = ratio_test(RatioStats.from_values(xc, yc), RatioStats.from_values(xt, yt))
    assert r.theta == 0 and r.variance_reduction_factor == 1
    assert (r.effect.absolute.value, r.effect.absolute.se, r.effect.relative.value) == (
        pytest.approx(plain.absolute.value), pytest.approx(plain.absolute.se), pytest.approx(plain.relative.value))


def test_ratio_cuped_covers_in_simulation():
    rng = np.random.default_rng(13)
    runs = [(_clicks(rng, 400, 1.0, 1.0), _clicks(rng, 400, 1.05, 1.0)) for _ in range(400)]
    stacked = [[np.stack([run[v][k] for run in runs]) for k in range(4)] for v in range(2)]
    r = ratio_cuped_test(RatioCupedStats.from_values(*stacked[0]), RatioCupedStats.from_values(*stacked[1]))
    plain = ratio_test(RatioStats.from_values(*stacked[0][:2]), RatioStats.from_values(*stacked[1][:2]))
    true_ctr = 2 / 22   # E[beta(2, 20)]
    assert 0.92 <= _coverage(r.effect.absolute, 0.05 * true_ctr) <= 0.98
    assert np.median(r.effect.absolute.se / plain.absolute.se) < 0.95


# --- SRM ------------------------------------------------------------------------------------------

def test_srm_balanced_counts_pass():
    r = srm_test([5000, 5000], [0.5, 0.5])
    assert (r.chi2, r.p_value, r.mismatch) == (0.0, 1.0, False)
    assert srm_test([9000, 1000], [90, 10]).p_value == pytest.approx(1.0)


def test_srm_skewed_counts_by_hand():
    mild = srm_test([5000, 5300], [1, 1])
    assert mild.chi2 == pytest.approx(2 * 150**2 / 5150)  # 8.74, p ≈ 0.0031
    assert mild.p_value == pytest.approx(sps.chi2.sf(2 * 150**2 / 5150, 1))
    assert not mild.mismatch
    assert srm_test([5000, 5300], [1, 1], threshold=0.01).mismatch
    severe = srm_test([5000, 5500], [1, 1])
    assert severe.chi2 == pytest.approx(2 * 250**2 / 5250) and severe.mismatch
    np.testing.assert_allclose(srm_test([10, 20, 30], [1, 2, 3]).expected, [10, 20, 30])


def test_srm_rejects_bad_input():
    with pytest.raises(ValueError, match="one count per variant"):
        srm_test([10, 20], [1, 1, 1])
    with pytest.raises(ValueError, match="positive"):
        srm_test([10, 20], [1, 0])


# --- multiple testing ---------------------------------------------------------------------------

P_FAMILY = [0.01, 0.04, 0.03, 0.005]


def test_benjamini_hochberg_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 → p·m/rank 0.02, 0.02, 0.04, 0.04 → running min from the top
    r = adjust_p_values(P_FAMILY)
    assert r.method == "bh"
    np.testing.assert_allclose(r.adjusted, [0.02, 0.04, 0.04, 0.02])
    assert r.reject.tolist() == [True, True, True, True]
    assert adjust_p_values(P_FAMILY, alpha=0.03).reject.tolist() == [True, False, False, True]


def test_holm_bonferroni_and_none_by_hand():
    # Holm: 0.005·4, 0.01·3, 0.03·2, 0.04·1 → running max 0.02, 0.03, 0.06, 0.06
    holm = adjust_p_values(P_FAMILY, "holm")
    np.testing.assert_allclose(holm.adjusted, [0.03, 0.06, 0.06, 0.02])
    assert holm.reject.tolist() == [True, False, False, True]
    bonferroni = adjust_p_values(P_FAMILY, "bonferroni")
    np.testing.assert_allclose(bonferroni.adjusted, [0.04, 0.16, 0.12, 0.02])
    assert bonferroni.reject.tolist() == [True, False, False, True]
    none = adjust_p_values(P_FAMILY, "none")
    np.testing.assert_allclose(none.adjusted, P_FAMILY)
    assert none.reject.all()
    assert adjust_p_values([], "holm").adjusted.size == 0
    with pytest.raises(ValueError, match="unknown method"):
        adjust_p_values(P_FAMILY, "fdr")


# --- power ----------------------------------------------------------------------------------------

def test_mde_closed_form():
    mde = minimum_detectable_effect(1000, 1000, 4.0, baseline_mean=5.0)
    assert mde.absolute == pytest.approx((Z975 + Z80) * math.sqrt(8 / 1000))
    assert mde.relative == pytest.approx(mde.absolute / 5.0)
    unequal = minimum_detectable_effect(1000, 250, 4.0, 9.0, alpha=0.01, power=0.9)
    z = sps.norm.ppf(0.995) + sps.norm.ppf(0.9)
    assert unequal.absolute == pytest.approx(z * math.sqrt(4 / 1000 + 9 / 250))
    assert unequal.relative is None
    with pytest.raises(ValueError, match="non-zero baseline"):
        minimum_detectable_effect(1000, 1000, 4.0, baseline_mean=0.0)


def test_sample_size_inverts_the_mde():
    n = sample_size(0.05, 5.0, 4.0)
    # n per variant = 2·(z₀.₉₇₅ + z₀.₈)²·σ²/δ² with δ = 0.25
    assert n.n_control == n.n_treatment == math.ceil(2 * (Z975 + Z80) ** 2 * 4 / 0.25**2)
    assert minimum_detectable_effect(n.n_control, n.n_treatment, 4.0,
                                     baseline_mean=5.0).relative <= 0.05
    uneven = sample_size(0.05, 5.0, 4.0, treatment_share=0.2)
    assert uneven.n_control == pytest.approx(4 * uneven.n_treatment, abs=4)
    assert minimum_detectable_effect(uneven.n_control, uneven.n_treatment, 4.0,
                                     baseline_mean=5.0).relative == pytest.approx(0.05, rel=1e-3)


def test_power_at_the_mde_is_the_target_in_simulation():
    rng = np.random.default_rng(11)
    n, reps = 200, 3000
    mde = minimum_detectable_effect(n, n, 1.0, baseline_mean=10.0)
    control = MeanStats.from_values(rng.normal(10.0, 1.0, (reps, n)))
    treatment = MeanStats.from_values(rng.normal(10.0 + mde.absolute, 1.0, (reps, n)))
    power = np.mean(welch_test(control, treatment).absolute.p_value < 0.05)
    assert power == pytest.approx(0.8, abs=0.03)


def test_power_check():
    at_mde = minimum_detectable_effect(5000, 5000, 4.0, baseline_mean=2.0).relative
    check = power_check(at_mde, 2.0, 5000, 5000, 4.0)
    assert check.power == pytest.approx(0.8, abs=1e-6) and not check.underpowered
    small = power_check(at_mde / 2, 2.0, 5000, 5000, 4.0)
    assert small.underpowered and small.power < 0.4
    assert small.relative_mde == pytest.approx(at_mde)
    assert not power_check(-2 * at_mde, 2.0, 5000, 5000, 4.0).underpowered


# --- difference of two lifts ------------------------------------------------------------------

def test_lift_difference_matches_a_numerical_delta_method():
    rng = np.random.default_rng(12)
    b_c, b_t = rng.poisson(3.0, 40).astype(float), rng.poisson(3.4, 50).astype(float)
    a_c, a_t = rng.binomial(b_c.astype(int), 0.3), rng.binomial(b_t.astype(int), 0.4)
    r = lift_difference_test(PairedMeanStats.from_values(a_c, b_c),
                             PairedMeanStats.from_values(a_t, b_t),
                             metric_a="fresh_repins", metric_b="repins")

    def difference(m):  # m = (ā_c, b̄_c, ā_t, b̄_t)
        return m[2] / m[0] - m[3] / m[1]

    means = np.array([a_c.mean(), b_c.mean(), a_t.mean(), b_t.mean()])
    cov = np.zeros((4, 4))
    cov[:2, :2] = np.cov(a_c, b_c) / 40
    cov[2:, 2:] = np.cov(a_t, b_t) / 50
    step = 1e-6
    grad = np.array([(difference(means + step * e) - difference(means - step * e)) / (2 * step)
                     for e in np.eye(4)])
    assert r.difference.value == pytest.approx(difference(means))
    assert r.difference.se == pytest.approx(math.sqrt(grad @ cov @ grad), rel=1e-6)
    assert r.lift_a.value == pytest.approx(a_t.mean() / a_c.mean() - 1)
    assert (r.metric_a, r.metric_b) == ("fresh_repins", "repins")
    assert r.lift_correlation > 0


def test_lift_difference_of_a_metric_with_itself_is_exactly_zero():
    rng = np.random.default_rng(13)
    x_c, x_t = rng.exponential(1.0, 100), rng.exponential(1.2, 100)
    r = lift_difference_test(PairedMeanStats.from_values(x_c, x_c),
                             PairedMeanStats.from_values(x_t, x_t))
    assert r.lift_a.se > 0.05
    assert r.lift_correlation == pytest.approx(1.0)
    assert r.difference.value == 0
    assert r.difference.se == pytest.approx(0.0, abs=1e-6)
    assert r.difference.p_value == pytest.approx(1.0)


def test_lift_difference_interval_covers_in_simulation():
    rng = np.random.default_rng(14)
    reps, users = 400, 500

    def variant(repin_rate, fresh_share):
        repins = rng.poisson(rng.gamma(2.0, repin_rate / 2.0, (reps, users)))
        return PairedMeanStats.from_values(rng.binomial(repins, fresh_share), repins)

    r = lift_difference_test(variant(2.0, 0.30), variant(2.1, 0.33))
    true_difference = (2.1 * 0.33) / (2.0 * 0.30) - 1.05  # 0.155 − 0.05
    assert 0.9 <= _coverage(r.difference, true_difference) <= 0.99
    # Fresh repins are a subset of repins; ignoring that correlation would inflate the interval.
    independent_se = np.sqrt(r.lift_a.se**2 + r.lift_b.se**2)
    assert np.median(r.difference.se / independent_se) < 0.9
