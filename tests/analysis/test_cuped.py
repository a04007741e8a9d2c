"""Tests for analysis.cuped against exact cases, numpy and statsmodels OLS."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import statsmodels.api as sm
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose

from analysis import cuped
from analysis.sufficient_stats import SufficientStats

CASES: dict[str, Any] = json.loads(
    (Path(__file__).parents[1] / "cases" / "cuped.json").read_text(encoding="utf-8")
)

SUMS = ("n", "sum_x", "sum_y", "sum_x2", "sum_y2", "sum_xy")


@pytest.mark.parametrize("case", CASES["single_arm"])
def test_single_arm_matches_exact_case(case: dict[str, Any]) -> None:
    sums = [case[key] for key in SUMS]
    assert_allclose(
        cuped.theta(case["n"], case["sum_x"], case["sum_y"], case["sum_x2"], case["sum_xy"]),
        case["theta"],
        rtol=1e-12,
    )
    adjusted = cuped.adjust(*sums)
    assert_allclose(adjusted.adjusted_mean, case["sum_y"] / case["n"], rtol=1e-12)
    assert_allclose(adjusted.adjusted_variance, case["adjusted_variance"], rtol=1e-10)
    assert_allclose(adjusted.variance_reduction, case["variance_reduction"], rtol=1e-10)
    assert_allclose(adjusted.variance_reduction, case["correlation_squared"], rtol=1e-10)


@pytest.mark.parametrize("case", CASES["comparison"])
def test_comparison_matches_exact_case(case: dict[str, Any]) -> None:
    control = SufficientStats.from_values(case["control"]["y"], case["control"]["x"])
    treatment = SufficientStats.from_values(case["treatment"]["y"], case["treatment"]["x"])
    result = cuped.compare(control, treatment)
    assert_allclose(result.theta, case["theta"], rtol=1e-12)
    assert_allclose(result.difference, case["difference"], rtol=1e-12)
    assert_allclose(result.difference_variance, case["difference_variance"], rtol=1e-10)
    assert_allclose(result.unadjusted_difference, case["unadjusted_difference"], rtol=1e-12)
    assert_allclose(
        result.unadjusted_difference_variance, case["unadjusted_difference_variance"], rtol=1e-10
    )


def _correlated(rng: np.random.Generator, n: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
    covariate = rng.gamma(3.0, 2.0, size=n)
    metric = 1.5 + 0.8 * covariate + rng.normal(0.0, 2.0, size=n) + shift
    return covariate, metric


def test_theta_matches_numpy_covariance_and_ols_slope() -> None:
    covariate, metric = _correlated(np.random.default_rng(11), 5_000, 0.0)
    stats = SufficientStats.from_values(metric, covariate)
    value = cuped.theta(
        stats.n, covariate.sum(), metric.sum(), covariate @ covariate, covariate @ metric
    )
    assert_allclose(value, np.cov(covariate, metric)[0, 1] / covariate.var(ddof=1), rtol=1e-10)
    slope = sm.OLS(metric, sm.add_constant(covariate)).fit().params[1]
    assert_allclose(value, slope, rtol=1e-10)


def test_adjusted_variance_matches_direct_computation() -> None:
    covariate, metric = _correlated(np.random.default_rng(12), 5_000, 0.0)
    adjusted = cuped.adjust_stats(SufficientStats.from_values(metric, covariate))
    direct = metric - adjusted.theta * (covariate - covariate.mean())
    assert_allclose(adjusted.adjusted_mean, direct.mean(), rtol=1e-12)
    assert_allclose(adjusted.adjusted_variance, direct.var(), rtol=1e-9)
    assert_allclose(adjusted.variance_reduction, np.corrcoef(covariate, metric)[0, 1] ** 2)


def test_comparison_matches_ols_with_treatment_indicator() -> None:
    rng = np.random.default_rng(13)
    x_a, y_a = _correlated(rng, 5_000, 0.0)
    x_b, y_b = _correlated(rng, 4_000, 0.3)
    result = cuped.compare(
        SufficientStats.from_values(y_a, x_a), SufficientStats.from_values(y_b, x_b)
    )
    design = np.column_stack(
        [np.ones(9_000), np.r_[np.zeros(5_000), np.ones(4_000)], np.r_[x_a, x_b]]
    )
    fit = sm.OLS(np.r_[y_a, y_b], design).fit()
    # Frisch-Waugh: the treatment coefficient is the pooled-theta CUPED difference, exactly.
    assert_allclose(result.difference, fit.params[1], rtol=1e-9)
    assert_allclose(result.theta, fit.params[2], rtol=1e-9)
    # Per-arm residual variances versus OLS's pooled one: same to within 1 % here.
    assert_allclose(result.difference_variance, fit.bse[1] ** 2, rtol=0.01)
    direct = (
        np.r_[y_a - result.theta * x_a].var() / 5_000 + (y_b - result.theta * x_b).var() / 4_000
    )
    assert_allclose(result.difference_variance, direct, rtol=1e-9)
    rho_squared = np.corrcoef(np.r_[x_a, x_b], np.r_[y_a, y_b])[0, 1] ** 2
    assert result.variance_reduction == pytest.approx(rho_squared, abs=0.02)


def test_adjusted_means_use_shared_theta_and_pooled_centre() -> None:
    rng = np.random.default_rng(14)
    x_a, y_a = _correlated(rng, 300, 0.0)
    x_b, y_b = _correlated(rng, 300, 1.0)
    result = cuped.compare(
        SufficientStats.from_values(y_a, x_a), SufficientStats.from_values(y_b, x_b)
    )
    centre = np.r_[x_a, x_b].mean()
    assert result.control.theta == result.treatment.theta == result.theta
    assert_allclose(result.control.adjusted_mean, y_a.mean() - result.theta * (x_a.mean() - centre))


def test_error_zero_covariate_variance() -> None:
    with pytest.raises(ValueError, match="covariate has zero variance"):
        cuped.theta(4, 8.0, 10.0, 16.0, 20.0)


def test_error_non_positive_n() -> None:
    with pytest.raises(ValueError, match="n must be finite and > 0"):
        cuped.theta(0, 1.0, 1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="n must be finite and > 0"):
        cuped.adjust(-3, 1.0, 1.0, 2.0, 2.0, 1.0)


def test_error_non_finite_sum() -> None:
    with pytest.raises(ValueError, match="sum_xy must be finite"):
        cuped.theta(3, 1.0, 1.0, 2.0, math.inf)
    with pytest.raises(ValueError, match="sum_y2 must be finite"):
        cuped.adjust(3, 3.0, 6.0, 5.0, math.nan, 7.0)


def test_error_zero_metric_variance() -> None:
    with pytest.raises(ValueError, match="metric has zero variance"):
        cuped.adjust(3, 6.0, 3.0, 14.0, 3.0, 6.0)


def test_error_missing_covariate_sums() -> None:
    with_covariate = SufficientStats.from_values([1.0, 2.0, 4.0], [1.0, 3.0, 2.0])
    without = SufficientStats.from_values([1.0, 2.0, 4.0])
    with pytest.raises(ValueError, match="CUPED needs covariate sums"):
        cuped.compare(with_covariate, without)
    with pytest.raises(ValueError, match="CUPED needs covariate sums"):
        cuped.adjust_stats(without)


def test_error_non_finite_shared_theta_or_centre() -> None:
    sums = (5, 15.0, 20.0, 55.0, 86.0, 66.0)
    with pytest.raises(ValueError, match="shared_theta must be finite"):
        cuped.adjust(*sums, shared_theta=math.nan)
    with pytest.raises(ValueError, match="covariate_mean must be finite"):
        cuped.adjust(*sums, covariate_mean=math.inf)


arm_data = st.lists(
    st.tuples(st.integers(-20, 20), st.integers(-20, 20)), min_size=3, max_size=30
).filter(lambda rows: len({x for x, _ in rows}) > 1 and len({y for _, y in rows}) > 1)


@settings(max_examples=60, deadline=None)
@given(arm_data, arm_data)
def test_swapping_arms_flips_difference_and_keeps_variance(
    control_rows: list[tuple[int, int]], treatment_rows: list[tuple[int, int]]
) -> None:
    def stats(rows: list[tuple[int, int]]) -> SufficientStats:
        return SufficientStats.from_values([float(y) for _, y in rows], [float(x) for x, _ in rows])

    forward = cuped.compare(stats(control_rows), stats(treatment_rows))
    backward = cuped.compare(stats(treatment_rows), stats(control_rows))
    assert_allclose(backward.theta, forward.theta, rtol=1e-9)
    assert_allclose(backward.difference, -forward.difference, atol=1e-9)
    assert_allclose(backward.difference_variance, forward.difference_variance, rtol=1e-9)
