"""Ratio metrics as linearised sufficient statistics: exact cases, CUPED, A/A coverage."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose
from scipy import stats

from analysis import cuped
from analysis.ratio_metric import RatioCrossSums, linearized_stats, ratio_estimate
from analysis.sufficient_stats import SufficientStats

CASES: dict[str, Any] = json.loads(
    (Path(__file__).parents[1] / "cases" / "ratio_metric.json").read_text(encoding="utf-8")
)


def _arm(
    x: np.ndarray, y: np.ndarray, x_pre: np.ndarray | None = None, y_pre: np.ndarray | None = None
) -> SufficientStats:
    """One arm's ratio from raw units, through the same sums the rollup keeps."""
    if x_pre is None or y_pre is None:
        numerator, denominator = SufficientStats.from_values(x), SufficientStats.from_values(y)
        return linearized_stats(numerator, denominator, RatioCrossSums(float(x @ y)))
    numerator = SufficientStats.from_values(x, x_pre)
    denominator = SufficientStats.from_values(y, y_pre)
    cross = RatioCrossSums(float(x @ y), float(x_pre @ y_pre), float(x @ y_pre), float(x_pre @ y))
    return linearized_stats(numerator, denominator, cross)


@pytest.mark.parametrize("case", CASES["single_arm"])
def test_linearized_variance_is_the_delta_method_variance(case: dict[str, Any]) -> None:
    linear = _arm(np.array(case["numerator"]), np.array(case["denominator"]))
    assert_allclose(linear.mean, case["ratio"], rtol=1e-12)
    assert_allclose(linear.variance_of_mean, case["variance"], rtol=1e-10)
    assert not linear.has_covariate


def test_cuped_on_linearized_ratio_matches_exact_case() -> None:
    case = CASES["cuped_comparison"]
    arms = {
        name: _arm(*(np.array(data[k], dtype=float) for k in
                     ("numerator", "denominator", "pre_numerator", "pre_denominator")))
        for name, data in case["arms"].items()
    }  # fmt: skip
    result = cuped.compare(arms["control"], arms["treatment"])
    assert_allclose(arms["control"].mean, case["ratio_control"], rtol=1e-12)
    assert_allclose(arms["treatment"].mean, case["ratio_treatment"], rtol=1e-12)
    assert_allclose(result.theta, case["theta"], rtol=1e-9)
    assert_allclose(result.difference, case["difference"], rtol=1e-9)
    assert_allclose(result.difference_variance, case["difference_variance"], rtol=1e-9)
    assert_allclose(
        result.unadjusted_difference_variance, case["unadjusted_difference_variance"], rtol=1e-9
    )


def test_no_pre_period_denominator_means_no_covariate() -> None:
    x, y = np.array([1.0, 2.0, 3.0]), np.array([1.0, 1.0, 2.0])
    zeros = np.zeros(3)
    assert not _arm(x, y, zeros, zeros).has_covariate


def test_units_must_match() -> None:
    with pytest.raises(ValueError, match="same units"):
        linearized_stats(SufficientStats(3, 3.0, 5.0), SufficientStats(4, 4.0, 6.0),
                         RatioCrossSums(4.0))  # fmt: skip


def test_partial_pre_period_cross_sums_are_refused() -> None:
    x = SufficientStats.from_values([1.0, 2.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="given together"):
        linearized_stats(x, x, RatioCrossSums(5.0, sum_xy_pre=2.0))


def _sessions(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    """Users with habits: their sessions and their revenue per session carry over in time."""
    habit = rng.gamma(2.0, 1.0, size=shape)
    spend = rng.gamma(2.0, 1.0, size=shape)  # the user's revenue per session, mean 2
    y_pre, y = 1 + rng.poisson(habit), 1 + rng.poisson(habit)
    x_pre, x = rng.gamma(y_pre * 4.0, spend / 4.0), rng.gamma(y * 4.0, spend / 4.0)
    return x.astype(float), y.astype(float), x_pre.astype(float), y_pre.astype(float)


def test_aa_interval_coverage_with_and_without_cuped() -> None:
    # 2,000 A/A experiments of 400 users per arm: the 95 % intervals should cover the true
    # difference 0 in 95 % of them (Monte-Carlo SE 0.5 %; tolerance about 4 SE), and CUPED
    # must shrink the variance (the pre-period habit explains much of it).
    rng = np.random.default_rng(2018)
    z = stats.norm.ppf(0.975)
    covered = {"delta": 0, "cuped": 0}
    reductions = []
    trials = 2_000
    for _ in range(trials):
        control = _arm(*_sessions(rng, (400,)))
        treatment = _arm(*_sessions(rng, (400,)))
        plain = treatment.mean - control.mean
        plain_variance = treatment.variance_of_mean + control.variance_of_mean
        covered["delta"] += abs(plain) <= z * np.sqrt(plain_variance)
        adjusted = cuped.compare(control, treatment)
        covered["cuped"] += abs(adjusted.difference) <= z * np.sqrt(adjusted.difference_variance)
        reductions.append(adjusted.variance_reduction)
    for method, hits in covered.items():
        assert 0.93 <= hits / trials <= 0.97, (method, hits / trials)
    assert np.mean(reductions) > 0.3


def test_linearized_variance_matches_direct_estimate() -> None:
    x, y, _, _ = _sessions(np.random.default_rng(5), (1_000,))
    direct = ratio_estimate(len(x), x.sum(), y.sum(), x @ x, y @ y, x @ y)
    assert_allclose(_arm(x, y).variance_of_mean, direct.variance, rtol=1e-9)


unit_values = st.lists(
    st.tuples(st.integers(0, 50), st.integers(1, 8), st.integers(0, 50), st.integers(1, 8)),
    min_size=3, max_size=40,
)  # fmt: skip


@settings(max_examples=80, deadline=None)
@given(unit_values, st.floats(0.01, 100.0))
def test_units_of_the_numerator_and_denominator_scale_out(
    units: list[tuple[int, int, int, int]], scale: float
) -> None:
    # Revenue in cents instead of dollars scales the ratio and its standard error alike;
    # sessions counted in halves divides both: the z statistic never changes.
    x, y, x_pre, y_pre = (np.array(column, dtype=float) for column in zip(*units, strict=True))
    base = _arm(x, y, x_pre, y_pre)
    cents = _arm(x * scale, y, x_pre * scale, y_pre)
    halves = _arm(x, y * scale, x_pre, y_pre * scale)
    assert_allclose(cents.mean, base.mean * scale, rtol=1e-9)
    assert_allclose(halves.mean, base.mean / scale, rtol=1e-9)
    assert_allclose(cents.variance_of_mean, base.variance_of_mean * scale**2, rtol=1e-6, atol=1e-12)
    assert_allclose(
        halves.variance_of_mean, base.variance_of_mean / scale**2, rtol=1e-6, atol=1e-12
    )
    assert base.variance_of_mean >= 0
    assert base.has_covariate
