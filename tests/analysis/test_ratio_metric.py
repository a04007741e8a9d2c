"""Tests for analysis.ratio_metric: exact cases, direct computation, simulation."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.testing import assert_allclose

from analysis.ratio_metric import RatioEstimate, compare_ratios, ratio_estimate

CASES: dict[str, Any] = json.loads(
    (Path(__file__).parents[1] / "cases" / "ratio_metric.json").read_text(encoding="utf-8")
)

SUMS = ("n", "sum_x", "sum_y", "sum_x2", "sum_y2", "sum_xy")


def _from_units(numerator: np.ndarray, denominator: np.ndarray) -> RatioEstimate:
    return ratio_estimate(
        len(numerator),
        numerator.sum(),
        denominator.sum(),
        numerator @ numerator,
        denominator @ denominator,
        numerator @ denominator,
    )


@pytest.mark.parametrize("case", CASES["single_arm"])
def test_matches_exact_case(case: dict[str, Any]) -> None:
    estimate = ratio_estimate(*(case[key] for key in SUMS))
    assert_allclose(estimate.ratio, case["ratio"], rtol=1e-12)
    assert_allclose(estimate.variance, case["variance"], rtol=1e-10)


@pytest.mark.parametrize("case", CASES["comparison"])
def test_comparison_matches_exact_case(case: dict[str, Any]) -> None:
    arms = [ratio_estimate(*(arm[key] for key in SUMS)) for arm in CASES["single_arm"]]
    result = compare_ratios(arms[case["control_index"]], arms[case["treatment_index"]])
    assert_allclose(result.difference, case["difference"], rtol=1e-12)
    assert_allclose(result.difference_variance, case["difference_variance"], rtol=1e-10)
    assert_allclose(result.lift_relative, case["lift_relative"], rtol=1e-12)
    assert_allclose(result.lift_relative_variance, case["lift_relative_variance"], rtol=1e-10)


def _sessions_and_revenue(
    rng: np.random.Generator, shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    sessions = 1 + rng.poisson(2.0, size=shape)
    revenue = rng.gamma(sessions * 0.5, 4.0)  # revenue grows with sessions: correlated
    return revenue.astype(float), sessions.astype(float)


def test_variance_matches_direct_delta_method_computation() -> None:
    revenue, sessions = _sessions_and_revenue(np.random.default_rng(21), (2_000,))
    estimate = _from_units(revenue, sessions)
    mu_x, mu_y = revenue.mean(), sessions.mean()
    covariance = np.cov(revenue, sessions, bias=True)
    direct = (
        covariance[0, 0] / mu_y**2
        - 2 * mu_x * covariance[0, 1] / mu_y**3
        + mu_x**2 * covariance[1, 1] / mu_y**4
    ) / len(revenue)
    assert_allclose(estimate.ratio, revenue.sum() / sessions.sum(), rtol=1e-12)
    assert_allclose(estimate.variance, direct, rtol=1e-9)
    linearised = (revenue - estimate.ratio * sessions) / mu_y
    assert_allclose(estimate.unit_variance, linearised.var(), rtol=1e-9)


def _per_experiment(revenue: np.ndarray, sessions: np.ndarray) -> list[RatioEstimate]:
    sums = (
        revenue.sum(1),
        sessions.sum(1),
        (revenue * revenue).sum(1),
        (sessions * sessions).sum(1),
        (revenue * sessions).sum(1),
    )
    return [ratio_estimate(revenue.shape[1], *row) for row in zip(*sums, strict=True)]


def test_variance_matches_simulated_sampling_variance() -> None:
    # 10,000 independent experiments of 300 users: the spread of the ratio
    # across experiments is the true sampling variance (SE of that variance
    # about 1.4 %); the tolerance is about 4 SE.
    revenue, sessions = _sessions_and_revenue(np.random.default_rng(22), (10_000, 300))
    ratios = revenue.sum(axis=1) / sessions.sum(axis=1)
    deltas = [estimate.variance for estimate in _per_experiment(revenue, sessions)]
    assert_allclose(np.mean(deltas), ratios.var(ddof=1), rtol=0.06)


def test_variance_matches_bootstrap() -> None:
    rng = np.random.default_rng(23)
    revenue, sessions = _sessions_and_revenue(rng, (3_000,))
    estimate = _from_units(revenue, sessions)
    draws = rng.integers(0, 3_000, size=(2_000, 3_000))
    bootstrap = revenue[draws].sum(axis=1) / sessions[draws].sum(axis=1)
    assert_allclose(estimate.variance, bootstrap.var(ddof=1), rtol=0.1)


def test_naive_session_level_variance_is_too_small() -> None:
    revenue, sessions = _sessions_and_revenue(np.random.default_rng(24), (3_000,))
    estimate = _from_units(revenue, sessions)
    per_session = np.repeat(revenue / sessions, sessions.astype(int))
    assert per_session.var() / per_session.size < estimate.variance


def test_relative_lift_variance_matches_simulation() -> None:
    rng = np.random.default_rng(25)
    control = _per_experiment(*_sessions_and_revenue(rng, (10_000, 300)))
    treatment = _per_experiment(*_sessions_and_revenue(rng, (10_000, 300)))
    comparisons = [compare_ratios(a, b) for a, b in zip(control, treatment, strict=True)]
    lifts = [comparison.lift_relative for comparison in comparisons]
    predicted = np.mean([comparison.lift_relative_variance for comparison in comparisons])
    assert_allclose(predicted, np.var(lifts, ddof=1), rtol=0.06)


def test_error_zero_denominator() -> None:
    with pytest.raises(ValueError, match="denominator total sum_y is zero"):
        ratio_estimate(3, 1.0, 0.0, 1.0, 0.0, 0.0)


def test_error_non_positive_n() -> None:
    with pytest.raises(ValueError, match="n must be finite and > 0"):
        ratio_estimate(0, 1.0, 1.0, 1.0, 1.0, 1.0)


def test_error_non_finite_sum() -> None:
    with pytest.raises(ValueError, match="sum_xy must be finite"):
        ratio_estimate(3, 1.0, 1.0, 1.0, 1.0, math.nan)


def test_error_negative_sum_of_squares() -> None:
    with pytest.raises(ValueError, match="sums of squares must be >= 0"):
        ratio_estimate(3, 1.0, 1.0, -1.0, 1.0, 1.0)


def test_error_zero_control_ratio() -> None:
    zero = RatioEstimate(ratio=0.0, variance=0.1, n=10)
    with pytest.raises(ValueError, match="control ratio is zero"):
        compare_ratios(zero, RatioEstimate(ratio=1.0, variance=0.1, n=10))


def test_error_zero_variance_comparison() -> None:
    exact = RatioEstimate(ratio=2.0, variance=0.0, n=10)
    with pytest.raises(ValueError, match="zero estimated variance"):
        compare_ratios(exact, exact)
