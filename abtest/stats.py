"""A/B statistics on per-variant sufficient statistics.

SQL (or any dataframe engine) reduces each variant to a few sums per metric — n, Σx, Σx², … — and
the pure functions here turn them into result records. Nothing in this module touches raw events.

Conventions
  * Every comparison is treatment − control; the relative lift is treatment / control − 1.
  * The user is the randomisation unit: per-user values are i.i.d. within a variant and the two
    variants are independent samples.
  * Variances are sample variances (ddof = 1) recovered from the sums,
    s²_x = (Σx² − (Σx)²/n) / (n − 1), likewise covariances; SQL should sum in double precision.
  * Tests are two-sided; intervals are (1 − alpha) confidence intervals.
  * Record fields may be numpy arrays of one shape (say one entry per simulated experiment); every
    result field is then an array of that shape. ``from_values`` sums over the last axis.

Estimators
  * Welch: d = x̄_t − x̄_c, se² = s²_t/n_t + s²_c/n_c,
    df = se⁴ / [(s²_t/n_t)²/(n_t − 1) + (s²_c/n_c)²/(n_c − 1)] (Welch–Satterthwaite),
    CI d ± t(1 − alpha/2, df)·se.
  * Relative lift L = m_t/m_c − 1 of two independent positive estimates (delta method on the log ratio):
    se_log² = Var(m_t)/m_t² + Var(m_c)/m_c², CI exp(log(m_t/m_c) ± z·se_log) − 1 (never below −100%),
    p-value of log(m_t/m_c)/se_log; the lift's own se is (1 + L)·se_log. No lift when a mean is ≤ 0.
  * Ratio metric R = Σx/Σy per variant (CTR = clicks/impressions, CPC = spend/clicks), users as
    clusters: linearising x̄/ȳ around the means gives
    Var(R) ≈ (s²_x − 2R·s_xy + R²·s²_y) / (n·ȳ²); difference and lift use normal inference.
  * CUPED: θ = Σ_v S_xc,v / Σ_v S_cc,v with S the within-variant centred sums of (cross-)products, so
    the treatment shifting x does not leak into θ. With c̄ the mean of c over both variants, the
    adjusted metric is x − θ(c − c̄): adjusted mean x̄_v − θ(c̄_v − c̄) and adjusted variance
    s²_x − 2θ·s_xc + θ²·s²_c per variant, then Welch and the relative lift on those. ρ is the pooled
    within-variant correlation of x and c and 1 − ρ² the variance reduction factor (adjusted
    variance ≈ (1 − ρ²) × raw variance). θ is treated as known, the usual large-sample practice.
  * Difference of two relative lifts D = L_a − L_b of metrics a, b measured on the same users:
    Var(D) = Var(L_a) + Var(L_b) − 2·Cov(L_a, L_b), with
    Cov(L_a, L_b) ≈ s_ab,t/(n_t·ā_c·b̄_c) + ā_t·b̄_t·s_ab,c/(n_c·ā_c²·b̄_c²)
    (delta method on (ā_c, b̄_c, ā_t, b̄_t); s_ab,v the within-variant covariance of a and b).
  * Power: MDE = (z(1 − alpha/2) + z(power))·sqrt(σ²_c/n_c + σ²_t/n_t).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

Value = float | np.ndarray  # a number, or an array of them (one per experiment)


def _as_result(x) -> Value:
    """0-d arrays become numpy scalars, so scalar inputs give scalar results."""
    return np.asarray(x, dtype=float)[()]


def _sample_cov(n, sum_a, sum_b, sum_ab):
    return (sum_ab - sum_a * sum_b / n) / (n - 1)


def _sample_var(n, sum_a, sum_a2):
    # Cancellation in Σx² − (Σx)²/n can leave a tiny negative number for a constant metric.
    return np.maximum(_sample_cov(n, sum_a, sum_a, sum_a2), 0.0)


def _require_users(where: str, control_n, treatment_n) -> None:
    for name, n in (("control", control_n), ("treatment", treatment_n)):
        if np.min(n) < 2:
            raise ValueError(f"{where}: {name} needs at least 2 users, got n = {np.min(n)}")


def _require_probability(where: str, name: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise ValueError(f"{where}: {name} must be in (0, 1), got {value}")


# ---------------------------------------------------------------------------------------------
# Sufficient statistics (one record per variant and metric)


@dataclass(frozen=True)
class MeanStats:
    """Sums of a per-user metric x over the users of one variant."""

    n: Value
    sum_x: Value
    sum_x2: Value

    @classmethod
    def from_values(cls, x) -> MeanStats:
        """Sufficient statistics of per-user values ``x`` (summed over the last axis)."""
        x = np.asarray(x, dtype=float)
        return cls(x.shape[-1], x.sum(-1), (x * x).sum(-1))

    @property
    def mean(self) -> Value:
        return self.sum_x / self.n

    @property
    def variance(self) -> Value:
        """Sample variance of x across users."""
        return _sample_var(self.n, self.sum_x, self.sum_x2)


@dataclass(frozen=True)
class RatioStats:
    """Sums of a ratio metric's per-user numerator x and denominator y in one variant."""

    n: Value
    sum_x: Value
    sum_y: Value
    sum_x2: Value
    sum_y2: Value
    sum_xy: Value

    @classmethod
    def from_values(cls, x, y) -> RatioStats:
        """Sufficient statistics of per-user numerators ``x`` and denominators ``y``."""
        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        return cls(x.shape[-1], x.sum(-1), y.sum(-1), (x * x).sum(-1), (y * y).sum(-1),
                   (x * y).sum(-1))

    @property
    def ratio(self) -> Value:
        """Σx / Σy, e.g. clicks per impression."""
        return self.sum_x / self.sum_y

    @property
    def ratio_variance(self) -> Value:
        """Delta-method variance of the ratio estimator, users as clusters."""
        n, r = self.n, self.ratio
        var_x = _sample_var(n, self.sum_x, self.sum_x2)
        var_y = _sample_var(n, self.sum_y, self.sum_y2)
        cov_xy = _sample_cov(n, self.sum_x, self.sum_y, self.sum_xy)
        linearised = np.maximum(var_x - 2 * r * cov_xy + r * r * var_y, 0.0)
        return linearised / (n * (self.sum_y / n) ** 2)


@dataclass(frozen=True)
class CupedStats:
    """Sums of a per-user metric x and its pre-period covariate c in one variant."""

    n: Value
    sum_x: Value
    sum_x2: Value
    sum_c: Value
    sum_c2: Value
    sum_xc: Value

    @classmethod
    def from_values(cls, x, c) -> CupedStats:
        """Sufficient statistics of per-user metric ``x`` and pre-period covariate ``c``."""
        x, c = np.asarray(x, dtype=float), np.asarray(c, dtype=float)
        return cls(x.shape[-1], x.sum(-1), (x * x).sum(-1), c.sum(-1), (c * c).sum(-1),
                   (x * c).sum(-1))

    @property
    def unadjusted(self) -> MeanStats:
        """The metric alone, for the plain Welch test."""
        return MeanStats(self.n, self.sum_x, self.sum_x2)


@dataclass(frozen=True)
class RatioCupedStats:
    """A ratio metric's per-user numerator x and denominator y, and the same ratio's pre-period numerator
    c and denominator d, in one variant: the sums the delta method needs for CUPED on a ratio."""

    ratio: RatioStats
    pre: RatioStats
    sum_xc: Value
    sum_xd: Value
    sum_yc: Value
    sum_yd: Value

    @classmethod
    def from_values(cls, x, y, c, d) -> RatioCupedStats:
        x, y, c, d = (np.asarray(v, dtype=float) for v in (x, y, c, d))
        return cls(RatioStats.from_values(x, y), RatioStats.from_values(c, d),
                   (x * c).sum(-1), (x * d).sum(-1), (y * c).sum(-1), (y * d).sum(-1))


@dataclass(frozen=True)
class PairedMeanStats:
    """Sums of two per-user metrics a and b measured on the same users of one variant."""

    n: Value
    sum_a: Value
    sum_a2: Value
    sum_b: Value
    sum_b2: Value
    sum_ab: Value

    @classmethod
    def from_values(cls, a, b) -> PairedMeanStats:
        """Sufficient statistics of per-user metrics ``a`` and ``b`` (same users, same order)."""
        a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
        return cls(a.shape[-1], a.sum(-1), (a * a).sum(-1), b.sum(-1), (b * b).sum(-1),
                   (a * b).sum(-1))


# ---------------------------------------------------------------------------------------------
# Result records


@dataclass(frozen=True)
class Estimate:
    """A point estimate, its standard error and test statistic, CI, and two-sided p-value vs 0."""

    value: Value
    se: Value
    df: Value  # inf for normal (z) inference
    statistic: Value
    ci_low: Value
    ci_high: Value
    p_value: Value


@dataclass(frozen=True)
class EffectResult:
    """Treatment vs control on one metric: absolute difference and relative lift."""

    method: str
    alpha: float
    control_mean: Value
    treatment_mean: Value
    absolute: Estimate  # treatment − control
    relative: Estimate  # treatment / control − 1
    metric: str | None = None


@dataclass(frozen=True)
class CupedResult:
    """A CUPED-adjusted comparison with the adjustment that produced it."""

    effect: EffectResult  # means are the adjusted means
    theta: Value
    correlation: Value  # pooled within-variant correlation of metric and covariate
    variance_reduction_factor: Value  # 1 − ρ²


@dataclass(frozen=True)
class LiftDifferenceResult:
    """Relative lift of metric a minus relative lift of metric b, both on the same users."""

    alpha: float
    lift_a: Estimate
    lift_b: Estimate
    lift_correlation: Value  # correlation of the two lift estimators
    difference: Estimate
    method: str = "delta_lift_difference"
    metric_a: str | None = None
    metric_b: str | None = None


@dataclass(frozen=True)
class SrmResult:
    """Sample-ratio-mismatch check: observed variant counts against the configured split."""

    observed: np.ndarray
    expected: np.ndarray
    chi2: float
    p_value: float
    threshold: float
    mismatch: bool  # p_value < threshold


@dataclass(frozen=True)
class MultipleTestingResult:
    """Adjusted p-values and reject flags for a family of tests (input order kept)."""

    method: str
    alpha: float
    p_values: np.ndarray
    adjusted: np.ndarray
    reject: np.ndarray


@dataclass(frozen=True)
class Mde:
    """Minimum detectable effect of a two-sided test at alpha with the given power."""

    absolute: float
    relative: float | None  # absolute / |baseline mean|, when a baseline is given
    se: float  # standard error of the difference of means
    alpha: float
    power: float


@dataclass(frozen=True)
class SampleSize:
    """Users needed per variant."""

    n_control: int
    n_treatment: int


@dataclass(frozen=True)
class PowerCheck:
    """Whether an experiment can detect an expected relative lift."""

    expected_lift: float
    relative_mde: float
    power: float  # power against the expected lift
    target_power: float
    underpowered: bool  # |expected lift| < relative MDE


# ---------------------------------------------------------------------------------------------
# Tests


def _inference(value, se, df, alpha: float) -> Estimate:
    """t inference with ``df`` degrees of freedom (normal when df = inf)."""
    value, se = np.asarray(value, dtype=float), np.asarray(se, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        statistic = value / se
    # se = 0 when both variants are constant (a metric nobody triggered): a zero difference is
    # then no evidence at all, and any other difference is certain (±inf already).
    statistic = np.where((se == 0) & (value == 0), 0.0, statistic)
    p_value = 2 * sps.t.sf(np.abs(statistic), df)
    half_width = sps.t.ppf(1 - alpha / 2, df) * se
    return Estimate(_as_result(value), _as_result(se), _as_result(df), _as_result(statistic),
                    _as_result(value - half_width), _as_result(value + half_width),
                    _as_result(p_value))


def _welch(control_mean, control_var, control_n, treatment_mean, treatment_var, treatment_n,
           alpha: float) -> Estimate:
    var_mean_c, var_mean_t = control_var / control_n, treatment_var / treatment_n
    se2 = var_mean_c + var_mean_t
    df_denominator = var_mean_c**2 / (control_n - 1) + var_mean_t**2 / (treatment_n - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        # With no variance in either variant the Satterthwaite df is 0/0; the pooled df stands in.
        df = np.where(df_denominator > 0, se2**2 / df_denominator, control_n + treatment_n - 2.0)
    return _inference(treatment_mean - control_mean, np.sqrt(se2), df, alpha)


def relative_lift(control_mean, control_mean_variance, treatment_mean, treatment_mean_variance,
                  alpha: float = 0.05) -> Estimate:
    """treatment/control − 1 of two independent positive estimates; CI and p-value on the log-ratio scale.

    The variances are those of the estimates (e.g. s²/n for a mean). As in tea-tasting, log(T/C) has the
    delta-method se_log² = Var(T)/T² + Var(C)/C², the CI is exp(log(T/C) ± z·se_log) − 1 (it never
    crosses −100%) and the p-value is that of log(T/C) / se_log; ``se`` is the lift's own delta-method
    standard error (T/C)·se_log. A mean ≤ 0 gives NaN: such a cell has no relative lift.
    """
    control_mean, treatment_mean = np.asarray(control_mean, dtype=float), np.asarray(treatment_mean, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where((control_mean > 0) & (treatment_mean > 0), treatment_mean / control_mean, np.nan)
        se_log = np.sqrt(treatment_mean_variance / treatment_mean**2 + control_mean_variance / control_mean**2)
    log = _inference(np.log(ratio), se_log, np.inf, alpha)
    return Estimate(_as_result(ratio - 1), _as_result(ratio * se_log), log.df, log.statistic,
                    _as_result(np.expm1(log.ci_low)), _as_result(np.expm1(log.ci_high)), log.p_value)


def welch_test(control: MeanStats, treatment: MeanStats, *, alpha: float = 0.05,
               metric: str | None = None) -> EffectResult:
    """Welch t-test on the difference of per-user means, plus the delta-method relative lift."""
    _require_users("welch_test", control.n, treatment.n)
    _require_probability("welch_test", "alpha", alpha)
    var_c, var_t = control.variance, treatment.variance
    absolute = _welch(control.mean, var_c, control.n, treatment.mean, var_t, treatment.n, alpha)
    relative = relative_lift(control.mean, var_c / control.n, treatment.mean,
                             var_t / treatment.n, alpha)
    return EffectResult("welch", alpha, _as_result(control.mean), _as_result(treatment.mean),
                        absolute, relative, metric)


def ratio_test(control: RatioStats, treatment: RatioStats, *, alpha: float = 0.05,
               metric: str | None = None) -> EffectResult:
    """Compare a ratio metric Σx/Σy (CTR, CPC) between variants with the delta method."""
    _require_users("ratio_test", control.n, treatment.n)
    _require_probability("ratio_test", "alpha", alpha)
    ratio_c, ratio_t = control.ratio, treatment.ratio
    var_c, var_t = control.ratio_variance, treatment.ratio_variance
    absolute = _inference(ratio_t - ratio_c, np.sqrt(var_c + var_t), np.inf, alpha)
    relative = relative_lift(ratio_c, var_c, ratio_t, var_t, alpha)
    return EffectResult("delta_ratio", alpha, _as_result(ratio_c), _as_result(ratio_t),
                        absolute, relative, metric)


def _centred_sums(stats: CupedStats):
    """Within-variant centred sums of squares and cross-products (S_xx, S_cc, S_xc)."""
    n = stats.n
    return (stats.sum_x2 - stats.sum_x**2 / n,
            stats.sum_c2 - stats.sum_c**2 / n,
            stats.sum_xc - stats.sum_x * stats.sum_c / n)


def cuped_test(control: CupedStats, treatment: CupedStats, *, alpha: float = 0.05,
               metric: str | None = None) -> CupedResult:
    """Welch test and relative lift on the CUPED-adjusted metric x − θ(c − c̄)."""
    _require_users("cuped_test", control.n, treatment.n)
    _require_probability("cuped_test", "alpha", alpha)
    sxx_c, scc_c, sxc_c = _centred_sums(control)
    sxx_t, scc_t, sxc_t = _centred_sums(treatment)
    sxx, scc, sxc = sxx_c + sxx_t, scc_c + scc_t, sxc_c + sxc_t
    with np.errstate(divide="ignore", invalid="ignore"):
        # A constant covariate carries no information: no adjustment.
        theta = np.where(scc > 0, sxc / scc, 0.0)
        correlation = np.where(sxx * scc > 0, sxc / np.sqrt(sxx * scc), 0.0)
    grand_mean_c = (control.sum_c + treatment.sum_c) / (control.n + treatment.n)

    def adjusted(stats: CupedStats, s_xx, s_cc, s_xc):
        mean = (stats.sum_x - theta * (stats.sum_c - stats.n * grand_mean_c)) / stats.n
        variance = np.maximum((s_xx - 2 * theta * s_xc + theta**2 * s_cc) / (stats.n - 1), 0.0)
        return mean, variance

    mean_c, var_c = adjusted(control, sxx_c, scc_c, sxc_c)
    mean_t, var_t = adjusted(treatment, sxx_t, scc_t, sxc_t)
    absolute = _welch(mean_c, var_c, control.n, mean_t, var_t, treatment.n, alpha)
    relative = relative_lift(mean_c, var_c / control.n, mean_t, var_t / treatment.n, alpha)
    effect = EffectResult("cuped_welch", alpha, _as_result(mean_c), _as_result(mean_t),
                          absolute, relative, metric)
    return CupedResult(effect, _as_result(theta), _as_result(correlation),
                       _as_result(np.clip(1 - correlation**2, 0.0, 1.0)))


def _linearised_moments(s: RatioCupedStats):
    """Centred sums of the ratio's and the pre-period ratio's per-user linearisations
    L = (x − R·y)/ȳ and M = (c − R₀·d)/d̄: (S_LL, S_MM, S_LM), each Σ over users of the centred products."""
    r, p, n = s.ratio, s.pre, s.ratio.n
    R, R0 = r.ratio, p.ratio
    mean_y, mean_d = r.sum_y / n, p.sum_y / n

    def centred(sum_ab, sum_a, sum_b):
        return sum_ab - sum_a * sum_b / n

    s_xx, s_yy, s_xy = centred(r.sum_x2, r.sum_x, r.sum_x), centred(r.sum_y2, r.sum_y, r.sum_y), \
        centred(r.sum_xy, r.sum_x, r.sum_y)
    s_cc, s_dd, s_cd = centred(p.sum_x2, p.sum_x, p.sum_x), centred(p.sum_y2, p.sum_y, p.sum_y), \
        centred(p.sum_xy, p.sum_x, p.sum_y)
    s_xc, s_xd = centred(s.sum_xc, r.sum_x, p.sum_x), centred(s.sum_xd, r.sum_x, p.sum_y)
    s_yc, s_yd = centred(s.sum_yc, r.sum_y, p.sum_x), centred(s.sum_yd, r.sum_y, p.sum_y)
    s_ll = (s_xx - 2 * R * s_xy + R * R * s_yy) / mean_y**2
    s_mm = (s_cc - 2 * R0 * s_cd + R0 * R0 * s_dd) / mean_d**2
    s_lm = (s_xc - R0 * s_xd - R * s_yc + R * R0 * s_yd) / (mean_y * mean_d)
    return s_ll, s_mm, s_lm


def ratio_cuped_test(control: RatioCupedStats, treatment: RatioCupedStats, *, alpha: float = 0.05,
                     metric: str | None = None) -> CupedResult:
    """Delta-method test of a ratio metric adjusted by its pre-period ratio (CUPED on ratios, Deng et al.
    2013): R − θ(R₀ − R̄₀), θ from the pooled within-variant moments of the per-user linearisations, R̄₀
    the pre-period ratio over both variants. Users without pre-period activity contribute c = d = 0."""
    _require_users("ratio_cuped_test", control.ratio.n, treatment.ratio.n)
    _require_probability("ratio_cuped_test", "alpha", alpha)
    ll_c, mm_c, lm_c = _linearised_moments(control)
    ll_t, mm_t, lm_t = _linearised_moments(treatment)
    ll, mm, lm = ll_c + ll_t, mm_c + mm_t, lm_c + lm_t
    with np.errstate(divide="ignore", invalid="ignore"):
        ok = np.isfinite(mm) & (mm > 0)     # no pre-period signal: no adjustment
        theta = np.where(ok, lm / np.where(ok, mm, 1.0), 0.0)
        correlation = np.where(ok & (ll > 0), lm / np.sqrt(ll * mm), 0.0)
        pooled_pre = (control.pre.sum_x + treatment.pre.sum_x) / (control.pre.sum_y + treatment.pre.sum_y)

        def adjusted(s: RatioCupedStats, s_ll, s_mm, s_lm):
            shift = np.where(ok, s.pre.ratio - pooled_pre, 0.0)
            value = s.ratio.ratio - theta * shift
            variance = np.maximum(s_ll - 2 * theta * np.where(ok, s_lm, 0.0) + theta**2 * np.where(ok, s_mm, 0.0),
                                  0.0) / (s.ratio.n - 1) / s.ratio.n
            return value, variance

        value_c, var_c = adjusted(control, ll_c, mm_c, lm_c)
        value_t, var_t = adjusted(treatment, ll_t, mm_t, lm_t)
    absolute = _inference(value_t - value_c, np.sqrt(var_c + var_t), np.inf, alpha)
    relative = relative_lift(value_c, var_c, value_t, var_t, alpha)
    effect = EffectResult("cuped_delta_ratio", alpha, _as_result(value_c), _as_result(value_t),
                          absolute, relative, metric)
    return CupedResult(effect, _as_result(theta), _as_result(correlation),
                       _as_result(np.clip(1 - correlation**2, 0.0, 1.0)))


def lift_difference_test(control: PairedMeanStats, treatment: PairedMeanStats, *,
                         alpha: float = 0.05, metric_a: str | None = None,
                         metric_b: str | None = None) -> LiftDifferenceResult:
    """Lift of metric a minus lift of metric b, with a delta-method CI that uses their covariance.

    Example: a = fresh repins per user, b = repins per user; D > 0 means the treatment lifts fresh
    content more than engagement overall.
    """
    _require_users("lift_difference_test", control.n, treatment.n)
    _require_probability("lift_difference_test", "alpha", alpha)
    n_c, n_t = control.n, treatment.n
    a_c, b_c = control.sum_a / n_c, control.sum_b / n_c
    a_t, b_t = treatment.sum_a / n_t, treatment.sum_b / n_t
    lift_a = relative_lift(a_c, _sample_var(n_c, control.sum_a, control.sum_a2) / n_c,
                           a_t, _sample_var(n_t, treatment.sum_a, treatment.sum_a2) / n_t, alpha)
    lift_b = relative_lift(b_c, _sample_var(n_c, control.sum_b, control.sum_b2) / n_c,
                           b_t, _sample_var(n_t, treatment.sum_b, treatment.sum_b2) / n_t, alpha)
    cov_c = _sample_cov(n_c, control.sum_a, control.sum_b, control.sum_ab)
    cov_t = _sample_cov(n_t, treatment.sum_a, treatment.sum_b, treatment.sum_ab)
    with np.errstate(divide="ignore", invalid="ignore"):
        cov_lifts = cov_t / (n_t * a_c * b_c) + a_t * b_t * cov_c / (n_c * a_c**2 * b_c**2)
        var_diff = np.maximum(lift_a.se**2 + lift_b.se**2 - 2 * cov_lifts, 0.0)
        lift_correlation = cov_lifts / (lift_a.se * lift_b.se)
    difference = _inference(lift_a.value - lift_b.value, np.sqrt(var_diff), np.inf, alpha)
    return LiftDifferenceResult(alpha, lift_a, lift_b, _as_result(lift_correlation), difference,
                                metric_a=metric_a, metric_b=metric_b)


def srm_test(observed_counts: Sequence[int], expected_shares: Sequence[float], *,
             threshold: float = 0.001) -> SrmResult:
    """Chi-square goodness of fit of variant counts to the configured split (shares need not sum to 1)."""
    observed = np.asarray(observed_counts, dtype=float)
    shares = np.asarray(expected_shares, dtype=float)
    if observed.shape != shares.shape or observed.ndim != 1 or observed.size < 2:
        raise ValueError(f"srm_test: need one count per variant and at least 2 variants, got "
                         f"{observed.size} counts for {shares.size} shares")
    if (shares <= 0).any():
        raise ValueError(f"srm_test: expected shares must be positive, got {shares.tolist()}")
    if observed.sum() <= 0:
        raise ValueError("srm_test: no exposures in any variant")
    _require_probability("srm_test", "threshold", threshold)
    expected = observed.sum() * shares / shares.sum()
    chi2, p_value = sps.chisquare(observed, expected)
    return SrmResult(observed, expected, float(chi2), float(p_value), threshold,
                     bool(p_value < threshold))


_STATSMODELS_METHOD = {"bh": "fdr_bh", "holm": "holm", "bonferroni": "bonferroni"}


def adjust_p_values(p_values: Sequence[float], method: str = "bh", *,
                    alpha: float = 0.05) -> MultipleTestingResult:
    """Adjust a family of p-values: "bh" (Benjamini–Hochberg FDR), "holm", "bonferroni", "none".

    A hypothesis is rejected when its adjusted p-value is <= alpha.
    """
    if method not in (*_STATSMODELS_METHOD, "none"):
        raise ValueError(f"adjust_p_values: unknown method {method!r}; "
                         f"expected one of bh, holm, bonferroni, none")
    _require_probability("adjust_p_values", "alpha", alpha)
    p = np.asarray(p_values, dtype=float)
    if ((p < 0) | (p > 1) | np.isnan(p)).any():
        raise ValueError(f"adjust_p_values: p-values must be in [0, 1], got {p.tolist()}")
    if method == "none" or p.size == 0:
        adjusted = p.copy()
    else:
        adjusted = multipletests(p, alpha=alpha, method=_STATSMODELS_METHOD[method])[1]
    return MultipleTestingResult(method, alpha, p, adjusted, adjusted <= alpha)


# ---------------------------------------------------------------------------------------------
# Power


def _z_sum(alpha: float, power: float) -> float:
    return float(sps.norm.ppf(1 - alpha / 2) + sps.norm.ppf(power))


def minimum_detectable_effect(n_control: int, n_treatment: int, variance_control: float,
                              variance_treatment: float | None = None, *,
                              baseline_mean: float | None = None, alpha: float = 0.05,
                              power: float = 0.8) -> Mde:
    """Smallest true difference of means a two-sided test detects with the given power.

    ``variance_*`` are per-user variances (the treatment defaults to the control's); the relative
    MDE needs the control ``baseline_mean``.
    """
    _require_users("minimum_detectable_effect", n_control, n_treatment)
    _require_probability("minimum_detectable_effect", "alpha", alpha)
    _require_probability("minimum_detectable_effect", "power", power)
    if baseline_mean == 0:
        raise ValueError("minimum_detectable_effect: a relative MDE needs a non-zero baseline mean")
    if variance_treatment is None:
        variance_treatment = variance_control
    se = math.sqrt(variance_control / n_control + variance_treatment / n_treatment)
    absolute = _z_sum(alpha, power) * se
    relative = None if baseline_mean is None else absolute / abs(baseline_mean)
    return Mde(absolute, relative, se, alpha, power)


def sample_size(relative_mde: float, baseline_mean: float, variance: float, *,
                alpha: float = 0.05, power: float = 0.8,
                treatment_share: float = 0.5) -> SampleSize:
    """Users per variant for a relative MDE, with a fraction ``treatment_share`` in treatment."""
    _require_probability("sample_size", "alpha", alpha)
    _require_probability("sample_size", "power", power)
    _require_probability("sample_size", "treatment_share", treatment_share)
    effect = relative_mde * abs(baseline_mean)
    if effect == 0:
        raise ValueError("sample_size: the MDE must be non-zero")
    # Var of the difference with N users in total: σ² / (N·s·(1 − s)).
    total = _z_sum(alpha, power) ** 2 * variance / (
        treatment_share * (1 - treatment_share) * effect**2)
    return SampleSize(max(math.ceil((1 - treatment_share) * total), 2),
                      max(math.ceil(treatment_share * total), 2))


def power_check(expected_lift: float, baseline_mean: float, n_control: int, n_treatment: int,
                variance_control: float, variance_treatment: float | None = None, *,
                alpha: float = 0.05, power: float = 0.8) -> PowerCheck:
    """Say whether the experiment is underpowered for an expected relative lift."""
    mde = minimum_detectable_effect(n_control, n_treatment, variance_control, variance_treatment,
                                    baseline_mean=baseline_mean, alpha=alpha, power=power)
    shift = abs(expected_lift * baseline_mean) / mde.se
    z_alpha = sps.norm.ppf(1 - alpha / 2)
    achieved = float(sps.norm.cdf(shift - z_alpha) + sps.norm.cdf(-shift - z_alpha))
    return PowerCheck(expected_lift, mde.relative, achieved, power,
                      abs(expected_lift) < mde.relative)
