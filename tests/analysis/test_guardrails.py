"""Tests for analysis.guardrails: verdicts, scales, replay and validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose

from analysis import confidence_sequence as cs
from analysis.guardrails import GuardrailResult, check_guardrail, guardrail_paths
from analysis.sufficient_stats import SufficientStats


def _stats(n: int, mean: float, sd: float) -> SufficientStats:
    return SufficientStats(n, n * mean, n * (sd**2 + mean**2))


def test_latency_regression_beyond_margin_is_breached() -> None:
    control, treatment = _stats(20_000, 100.0, 30.0), _stats(20_000, 106.0, 30.0)
    result = check_guardrail(control, treatment, margin=0.02, planned_n=20_000)
    assert result.breached and not result.holds
    assert_allclose(result.harm, 0.06)
    assert result.harm_lower_bound > 0.02


def test_equal_variant_with_enough_data_holds() -> None:
    control, treatment = _stats(200_000, 0.10, 0.3), _stats(200_000, 0.10, 0.3)
    result = check_guardrail(control, treatment, margin=0.05, planned_n=200_000)
    assert result.holds and not result.breached
    assert result.harm_upper_bound < 0.05


def test_inconclusive_when_data_are_scarce() -> None:
    result = check_guardrail(_stats(50, 10.0, 5.0), _stats(50, 10.2, 5.0), margin=0.01, rho=0.05)
    assert not result.breached and not result.holds


def test_absolute_margin_bounds_use_one_sided_sequence() -> None:
    control, treatment = _stats(4_000, 2.0, 1.0), _stats(4_000, 2.1, 2.0)
    result = check_guardrail(control, treatment, margin=0.05, relative=False, rho=0.03)
    variance, effective_n = cs.two_sample_scale(4_000, 1.0, 4_000, 4.0)
    width = cs.one_sided_halfwidth(effective_n, math.sqrt(variance * effective_n), 0.05, rho=0.03)
    assert_allclose(result.harm, 0.1)
    assert_allclose((result.harm_lower_bound, result.harm_upper_bound), (0.1 - width, 0.1 + width))


def test_relative_harm_uses_delta_method_variance() -> None:
    control, treatment = _stats(10_000, 50.0, 10.0), _stats(8_000, 49.0, 12.0)
    result = check_guardrail(
        control, treatment, margin=0.01, higher_is_better=True, rho=0.02, alpha=0.1
    )
    variance = 12.0**2 / (8_000 * 50.0**2) + 49.0**2 * 10.0**2 / (10_000 * 50.0**4)
    unit_terms = 12.0**2 / 50.0**2 + 49.0**2 * 10.0**2 / 50.0**4
    width = cs.one_sided_halfwidth(unit_terms / variance, math.sqrt(unit_terms), 0.1, rho=0.02)
    assert_allclose(result.harm, 0.02)
    assert_allclose(result.harm_upper_bound, 0.02 + width, rtol=1e-9)


@settings(max_examples=60, deadline=None)
@given(
    st.floats(min_value=1, max_value=100),
    st.floats(min_value=-5, max_value=5),
    st.floats(min_value=0.5, max_value=20),
    st.floats(min_value=0, max_value=2),
)
def test_direction_flips_harm_and_mirrors_bounds(
    mean: float, change: float, sd: float, margin: float
) -> None:
    control, treatment = _stats(1_000, mean, sd), _stats(1_200, mean + change, sd)
    lower_better, higher_better = (
        check_guardrail(
            control, treatment, margin=margin, relative=False, rho=0.05, higher_is_better=flag
        )
        for flag in (False, True)
    )
    assert_allclose(higher_better.harm, -lower_better.harm, atol=1e-12)
    assert_allclose(higher_better.harm_upper_bound, -lower_better.harm_lower_bound, atol=1e-9)
    assert not (lower_better.breached and lower_better.holds)


def test_previous_look_tightens_bounds_and_replay_matches() -> None:
    rng = np.random.default_rng(31)
    looks, batch = 12, 500
    batches = [rng.normal(loc, 2.0, size=(looks, batch)) for loc in (10.0, 10.3)]
    sums = [
        (np.arange(1, looks + 1) * batch, np.cumsum(b.sum(1)), np.cumsum((b * b).sum(1)))
        for b in batches
    ]
    paths = guardrail_paths(*sums[0], *sums[1], margin=0.01, rho=0.02)
    result: GuardrailResult | None = None
    for look in range(looks):
        arms = [SufficientStats(int(n[look]), t[look], q[look]) for n, t, q in sums]
        result = check_guardrail(*arms, margin=0.01, rho=0.02, previous=result)
        assert_allclose(result.harm_lower_bound, paths.harm_lower_bound[look], rtol=1e-9)
        assert_allclose(result.harm_upper_bound, paths.harm_upper_bound[look], rtol=1e-9)
        assert result.breached == paths.breached[look]
    assert np.all(np.diff(paths.harm_lower_bound) >= 0)
    assert np.all(np.diff(paths.harm_upper_bound) <= 0)


def test_error_negative_margin() -> None:
    with pytest.raises(ValueError, match="margin must be finite and >= 0"):
        check_guardrail(_stats(100, 1.0, 1.0), _stats(100, 1.0, 1.0), margin=-0.1, rho=0.1)


def test_error_relative_margin_with_non_positive_control_mean() -> None:
    with pytest.raises(ValueError, match="positive control mean"):
        check_guardrail(_stats(100, -1.0, 1.0), _stats(100, 1.0, 1.0), margin=0.1, rho=0.1)


def test_error_rho_and_planned_n() -> None:
    arms = (_stats(100, 1.0, 1.0), _stats(100, 1.0, 1.0))
    with pytest.raises(ValueError, match="exactly one of rho and planned_n"):
        check_guardrail(*arms, margin=0.1)
    with pytest.raises(ValueError, match="exactly one of rho and planned_n"):
        check_guardrail(*arms, margin=0.1, rho=0.1, planned_n=100)


def test_error_alpha_with_planned_n() -> None:
    arms = (_stats(100, 1.0, 1.0), _stats(100, 1.0, 1.0))
    with pytest.raises(ValueError, match=r"alpha must lie in \(0, 0.5\)"):
        check_guardrail(*arms, margin=0.1, planned_n=100, alpha=0.5)


def test_error_alpha_with_rho() -> None:
    arms = (_stats(100, 1.0, 1.0), _stats(100, 1.0, 1.0))
    with pytest.raises(ValueError, match=r"alpha must lie in \(0, 1\)"):
        check_guardrail(*arms, margin=0.1, rho=0.1, alpha=1.0)


def test_error_zero_variance() -> None:
    constant = SufficientStats.from_values([2.0] * 10)
    with pytest.raises(ValueError, match="zero estimated variance"):
        check_guardrail(constant, constant, margin=0.1, rho=0.1)


def test_error_design_changes_between_looks() -> None:
    arms = (_stats(1_000, 1.0, 1.0), _stats(1_000, 1.0, 1.0))
    first = check_guardrail(*arms, margin=0.1, rho=0.1)
    with pytest.raises(ValueError, match="must not change between looks"):
        check_guardrail(*arms, margin=0.2, rho=0.1, previous=first)


def test_error_paths_with_empty_look() -> None:
    with pytest.raises(ValueError, match="every look needs n > 0"):
        guardrail_paths([0, 10], [0, 5], [0, 5], [5, 10], [2, 5], [2, 5], margin=0.1, rho=0.1)


def test_error_paths_with_zero_variance() -> None:
    with pytest.raises(ValueError, match="zero estimated variance at some look"):
        guardrail_paths([10], [10], [10], [10], [10], [10], margin=0.1, rho=0.1)
