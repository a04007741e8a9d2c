"""Tests for analysis.msprt against closed forms, reference values and invariants."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose
from scipy import optimize

from analysis import msprt
from analysis.sufficient_stats import SufficientStats

CASES: dict[str, Any] = json.loads(
    (Path(__file__).parents[1] / "cases" / "msprt.json").read_text(encoding="utf-8")
)


@pytest.mark.parametrize("case", CASES["log_likelihood_ratio"])
def test_likelihood_ratio_matches_closed_form(case: dict[str, float]) -> None:
    args = (case["estimate"], case["variance"], case["tau2"])
    assert_allclose(msprt.log_mixture_likelihood_ratio(*args), case["log_likelihood_ratio"], 1e-12)
    assert_allclose(msprt.mixture_likelihood_ratio(*args), case["likelihood_ratio"], rtol=1e-12)


@pytest.mark.parametrize("case", CASES["johari_two_stream"])
def test_matches_johari_two_stream_form(case: dict[str, float]) -> None:
    variance = 2 * case["sigma"] ** 2 / case["n_per_arm"]
    ratio = msprt.mixture_likelihood_ratio(case["difference"], variance, case["tau2"])
    assert_allclose(ratio, case["likelihood_ratio"], rtol=1e-11)


@pytest.mark.parametrize("case", CASES["confidence_halfwidth"])
def test_confidence_halfwidth_matches_closed_form(case: dict[str, float]) -> None:
    width = msprt.confidence_halfwidth(case["variance"], case["tau2"], case["alpha"])
    assert_allclose(width, case["halfwidth"], rtol=1e-12)


@pytest.mark.parametrize("case", CASES["p_value_sequences"])
def test_p_value_sequence_matches_running_minimum(case: dict[str, Any]) -> None:
    p_values = msprt.always_valid_p_values(case["estimates"], case["variances"], case["tau2"])
    assert_allclose(p_values, case["p_values"], rtol=1e-12)


@pytest.mark.parametrize("case", CASES["confseq_two_sided"])
def test_matches_confseq_two_sided_normal_mixture(case: dict[str, float]) -> None:
    # Howard's rho is v / x; in this module x = tau2 / V with V = v, so tau2 = v^2 / rho.
    tau2 = case["v"] ** 2 / case["rho_howard"]
    assert_allclose(case["rho_howard"], case["best_rho_expected"], rtol=1e-6)
    log_ratio = msprt.log_mixture_likelihood_ratio(case["s"], case["v"], tau2)
    assert_allclose(log_ratio, case["log_mixture"], atol=1e-6)
    width = msprt.confidence_halfwidth(case["v"], tau2, case["alpha"])
    assert_allclose(width, case["bound"], atol=1e-5)


@pytest.mark.parametrize("case", CASES["confseq_one_sided"])
def test_matches_confseq_one_sided_normal_mixture(case: dict[str, float]) -> None:
    tau2 = case["v"] ** 2 / case["rho_howard"]
    log_ratio = msprt.log_one_sided_mixture_likelihood_ratio(case["s"], case["v"], tau2)
    assert_allclose(log_ratio, case["log_mixture"], atol=1e-7)


def test_interval_is_where_likelihood_ratio_is_below_one_over_alpha() -> None:
    estimate, variance, tau2, alpha = 0.3, 0.01, 0.04, 0.05
    width = msprt.confidence_halfwidth(variance, tau2, alpha)
    for edge in (estimate - width, estimate + width):
        ratio = msprt.mixture_likelihood_ratio(estimate, variance, tau2, null_value=edge)
        assert_allclose(ratio, 1 / alpha, rtol=1e-10)
    inside = msprt.mixture_likelihood_ratio(estimate, variance, tau2, null_value=estimate)
    assert inside < 1 / alpha


def test_tau2_for_horizon_minimises_width_at_horizon() -> None:
    variance, alpha = 2e-4, 0.05
    best = optimize.minimize_scalar(
        lambda log_tau2: msprt.confidence_halfwidth(variance, math.exp(log_tau2), alpha),
        bounds=(math.log(variance * 1e-3), math.log(variance * 1e3)),
        method="bounded",
        options={"xatol": 1e-10},
    )
    tau2 = msprt.tau2_for_horizon(variance, alpha)
    assert_allclose(tau2, math.exp(best.x), rtol=1e-4)
    assert msprt.confidence_halfwidth(variance, tau2, alpha) <= best.fun * (1 + 1e-12)


def test_optimal_variance_ratio_solves_stationarity() -> None:
    for alpha in (0.001, 0.01, 0.05, 0.2):
        x = msprt.optimal_variance_ratio(alpha)
        assert_allclose(x, 2 * math.log(1 / alpha) + math.log1p(x), rtol=1e-12)


def test_tau2_from_expected_effect() -> None:
    assert msprt.tau2_from_expected_effect(-0.03) == pytest.approx(9e-4)


def test_intervals_shrink_and_agree_with_p_values() -> None:
    rng = np.random.default_rng(3)
    batch, looks = 200, 40
    n = np.arange(1, looks + 1) * batch
    # A cumulative path: each batch of 200 paired differences has variance 2.
    estimates = list(np.cumsum(rng.normal(0.08 * batch, np.sqrt(2 * batch), looks)) / n)
    variances = list(2 / n)
    intervals = msprt.always_valid_confidence_intervals(estimates, variances, 0.01, 0.05)
    p_values = msprt.always_valid_p_values(estimates, variances, 0.01)
    for (low, high), (next_low, next_high) in itertools.pairwise(intervals):
        assert next_low >= low and next_high <= high
    for (low, high), p in zip(intervals, p_values, strict=True):
        assert (not low <= 0 <= high) == (p <= 0.05)


def test_look_by_look_equals_batch_functions() -> None:
    estimates, variances = [0.05, -0.02, 0.08, 0.06], [0.004, 0.002, 0.001, 0.0008]
    result = None
    for estimate, variance in zip(estimates, variances, strict=True):
        result = msprt.msprt_look(estimate, variance, 0.01, 0.1, previous=result)
    assert result is not None and result.looks == 4
    assert_allclose(
        result.p_value_always_valid, msprt.always_valid_p_values(estimates, variances, 0.01)[-1]
    )
    low, high = msprt.always_valid_confidence_intervals(estimates, variances, 0.01, 0.1)[-1]
    assert_allclose((result.ci_low, result.ci_high), (low, high))


def test_compare_proportions_uses_binomial_variance() -> None:
    result = msprt.compare_proportions(10_000, 1_000, 10_000, 1_100, tau2=1e-4)
    assert_allclose(result.difference, 0.01)
    assert_allclose(result.difference_variance, (0.1 * 0.9 + 0.11 * 0.89) / 10_000)
    same = msprt.compare_means(
        SufficientStats.from_binary(10_000, 1_000),
        SufficientStats.from_binary(10_000, 1_100),
        tau2=1e-4,
    )
    assert same == result
    assert result.significant == (result.p_value_always_valid <= 0.05)


def test_likelihood_ratio_overflow_gives_infinity_not_nan() -> None:
    assert msprt.mixture_likelihood_ratio(100.0, 1e-4, 1.0) == math.inf
    assert msprt.always_valid_p_values([100.0], [1e-4], 1.0) == [0.0]


arm = st.tuples(
    st.integers(min_value=20, max_value=10_000),
    st.floats(min_value=-50, max_value=50),
    st.floats(min_value=0.1, max_value=30),
)


def _stats(n: int, mean: float, sd: float) -> SufficientStats:
    return SufficientStats(n, n * mean, n * (sd**2 + mean**2))


@settings(max_examples=80, deadline=None)
@given(arm, arm, st.floats(min_value=1e-4, max_value=10))
def test_swapping_arms_flips_difference_and_keeps_p_value(
    control: tuple[int, float, float], treatment: tuple[int, float, float], tau2: float
) -> None:
    forward = msprt.compare_means(_stats(*control), _stats(*treatment), tau2)
    backward = msprt.compare_means(_stats(*treatment), _stats(*control), tau2)
    assert_allclose(backward.difference, -forward.difference, atol=1e-9)
    assert_allclose(backward.p_value_always_valid, forward.p_value_always_valid, rtol=1e-9)
    assert_allclose((backward.ci_low, backward.ci_high), (-forward.ci_high, -forward.ci_low))


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(min_value=-5, max_value=5), st.floats(min_value=1e-4, max_value=4)),
        min_size=1,
        max_size=30,
    ),
    st.floats(min_value=1e-4, max_value=10),
)
def test_p_values_only_go_down_and_lie_in_unit_interval(
    looks: list[tuple[float, float]], tau2: float
) -> None:
    p_values = msprt.always_valid_p_values([e for e, _ in looks], [v for _, v in looks], tau2)
    assert all(0.0 <= p <= 1.0 for p in p_values)
    assert all(later <= earlier for earlier, later in itertools.pairwise(p_values))


@settings(max_examples=80, deadline=None)
@given(
    st.floats(min_value=0, max_value=20),
    st.floats(min_value=0.01, max_value=20),
    st.floats(min_value=1e-3, max_value=100),
    st.floats(min_value=1e-3, max_value=100),
)
def test_likelihood_ratio_increases_with_absolute_estimate(
    estimate: float, step: float, variance: float, tau2: float
) -> None:
    smaller = msprt.log_mixture_likelihood_ratio(estimate, variance, tau2)
    larger = msprt.log_mixture_likelihood_ratio(-(estimate + step), variance, tau2)
    assert larger > smaller


@settings(max_examples=80, deadline=None)
@given(
    st.floats(min_value=-3, max_value=3),
    st.floats(min_value=1e-3, max_value=3),
    st.floats(min_value=1e-3, max_value=3),
    st.floats(min_value=1e-3, max_value=1e3),
)
def test_p_value_invariant_to_units(
    estimate: float, variance: float, tau2: float, scale: float
) -> None:
    original = msprt.msprt_look(estimate, variance, tau2)
    rescaled = msprt.msprt_look(scale * estimate, scale**2 * variance, scale**2 * tau2)
    assert_allclose(rescaled.p_value_always_valid, original.p_value_always_valid, rtol=1e-9)
    assert_allclose(rescaled.ci_high, scale * original.ci_high, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("variance", [0.0, -1.0, math.nan, math.inf])
def test_error_variance_not_positive(variance: float) -> None:
    with pytest.raises(ValueError, match="variance must be finite and > 0"):
        msprt.log_mixture_likelihood_ratio(0.1, variance, 1.0)


@pytest.mark.parametrize("tau2", [0.0, -0.5])
def test_error_tau2_not_positive(tau2: float) -> None:
    with pytest.raises(ValueError, match="tau2 must be finite and > 0"):
        msprt.mixture_likelihood_ratio(0.1, 1.0, tau2)
    with pytest.raises(ValueError, match="tau2 must be finite and > 0"):
        msprt.always_valid_p_values([0.1], [1.0], tau2)


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 1.5])
def test_error_alpha_outside_unit_interval(alpha: float) -> None:
    with pytest.raises(ValueError, match=r"alpha must lie in \(0, 1\)"):
        msprt.confidence_halfwidth(1.0, 1.0, alpha)
    with pytest.raises(ValueError, match=r"alpha must lie in \(0, 1\)"):
        msprt.tau2_for_horizon(1.0, alpha)


def test_error_non_finite_estimate() -> None:
    with pytest.raises(ValueError, match="estimate must be finite"):
        msprt.log_mixture_likelihood_ratio(math.nan, 1.0, 1.0)
    with pytest.raises(ValueError, match="estimate must be finite"):
        msprt.log_one_sided_mixture_likelihood_ratio(math.inf, 1.0, 1.0)
    with pytest.raises(ValueError, match="estimates must be finite"):
        msprt.log_mixture_likelihood_ratios([math.nan], [1.0], 1.0)


def test_error_non_positive_variance_in_arrays() -> None:
    with pytest.raises(ValueError, match="variances must be finite and > 0"):
        msprt.always_valid_p_values([0.1, 0.2], [1.0, 0.0], 1.0)


def test_error_length_mismatch() -> None:
    with pytest.raises(ValueError, match="same length"):
        msprt.always_valid_p_values([0.1, 0.2], [1.0], 1.0)
    with pytest.raises(ValueError, match="same length"):
        msprt.always_valid_confidence_intervals([0.1], [1.0, 2.0], 1.0)


def test_error_zero_expected_effect() -> None:
    with pytest.raises(ValueError, match="expected_effect must be nonzero"):
        msprt.tau2_from_expected_effect(0.0)


def test_error_non_positive_horizon_variance() -> None:
    with pytest.raises(ValueError, match="variance_at_horizon must be finite and > 0"):
        msprt.tau2_for_horizon(0.0)


def test_error_design_changes_between_looks() -> None:
    first = msprt.msprt_look(0.1, 0.01, tau2=0.01)
    with pytest.raises(ValueError, match="must not change between looks"):
        msprt.msprt_look(0.1, 0.005, tau2=0.02, previous=first)


def test_error_zero_variance_comparison() -> None:
    with pytest.raises(ValueError, match="zero estimated variance"):
        msprt.compare_proportions(100, 0, 100, 0, tau2=0.01)


def test_error_invalid_proportion_counts() -> None:
    with pytest.raises(ValueError, match="n must be >= 0"):
        msprt.compare_proportions(-10, 0, 100, 5, tau2=0.01)
    with pytest.raises(ValueError, match=r"successes must lie in \[0, n\]"):
        msprt.compare_proportions(100, 101, 100, 5, tau2=0.01)
