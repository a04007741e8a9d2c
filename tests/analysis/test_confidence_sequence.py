"""Tests for analysis.confidence_sequence: paper formula, tuning, one-sided bounds."""

from __future__ import annotations

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

from analysis import confidence_sequence as cs
from analysis import msprt
from analysis.sufficient_stats import SufficientStats

CASES: dict[str, Any] = json.loads(
    (Path(__file__).parents[1] / "cases" / "confidence_sequence.json").read_text(encoding="utf-8")
)


@pytest.mark.parametrize("case", CASES["halfwidth"])
def test_halfwidth_matches_paper_formula(case: dict[str, float]) -> None:
    width = cs.halfwidth(case["n"], case["sigma"], case["alpha"], rho=case["rho"])
    assert_allclose(width, case["halfwidth"], rtol=1e-12)


def test_vectorised_halfwidths_match_scalar() -> None:
    cases = [c for c in CASES["halfwidth"] if c["sigma"] == 2.0]
    n = np.array([c["n"] for c in cases], dtype=float)
    widths = cs.halfwidths(n, 2.0, 0.05, 0.1)
    assert_allclose(widths, [c["halfwidth"] for c in cases], rtol=1e-12)


@pytest.mark.parametrize("case", CASES["confseq_two_sided"])
def test_matches_confseq_two_sided_bound(case: dict[str, float]) -> None:
    # Unit-variance sums: n = v, sigma = 1, rho_ws^2 = 1 / rho_howard; bound is on the sum.
    rho = math.sqrt(1.0 / case["rho_howard"])
    width = cs.halfwidth(case["v"], 1.0, case["alpha"], rho=rho)
    assert_allclose(width * case["v"], case["bound"], atol=1e-5)


@pytest.mark.parametrize("case", CASES["confseq_one_sided"])
def test_matches_confseq_one_sided_bound(case: dict[str, float]) -> None:
    rho = math.sqrt(1.0 / case["rho_howard"])
    width = cs.one_sided_halfwidth(case["v"], 1.0, case["alpha"], rho=rho)
    assert_allclose(width * case["v"], case["bound"], atol=1e-5)
    vectorised = cs.one_sided_halfwidths(np.array([case["v"]]), 1.0, case["alpha"], rho)
    assert_allclose(vectorised[0] * case["v"], case["bound"], atol=1e-5)


@pytest.mark.parametrize("case", CASES["optimal_variance_ratio"])
def test_optimal_ratio_matches_fixed_point(case: dict[str, float]) -> None:
    assert_allclose(msprt.optimal_variance_ratio(case["alpha"]), case["x_star"], rtol=1e-12)
    planned_n = 5000
    assert_allclose(
        cs.optimal_rho(planned_n, case["alpha"]) ** 2 * planned_n, case["x_star"], rtol=1e-12
    )


@pytest.mark.parametrize("alpha", [0.01, 0.05, 0.1])
@pytest.mark.parametrize("planned_n", [100, 2_500, 1_000_000])
def test_planned_n_rho_minimises_width_at_planned_n(alpha: float, planned_n: int) -> None:
    best = optimize.minimize_scalar(
        lambda log_rho: cs.halfwidth(planned_n, 1.0, alpha, rho=math.exp(log_rho)),
        bounds=(math.log(1e-6), math.log(10.0)),
        method="bounded",
        options={"xatol": 1e-10},
    )
    tuned = cs.halfwidth(planned_n, 1.0, alpha, planned_n=planned_n)
    assert tuned <= best.fun * (1 + 1e-12)
    assert_allclose(cs.optimal_rho(planned_n, alpha), math.exp(best.x), rtol=1e-4)
    # The paper's closed-form approximation is within 0.1 % of the optimum width.
    approximate_rho = math.sqrt(
        (-2 * math.log(alpha) + math.log(-2 * math.log(alpha) + 1)) / planned_n
    )
    approximate = cs.halfwidth(planned_n, 1.0, alpha, rho=approximate_rho)
    assert tuned <= approximate <= tuned * 1.001


@pytest.mark.parametrize("n", [10.0, 1_000.0, 1e6])
def test_one_sided_bound_lies_between_two_sided_levels(n: float) -> None:
    one_sided = cs.one_sided_halfwidth(n, 1.0, 0.05, rho=0.02)
    assert cs.halfwidth(n, 1.0, 0.10, rho=0.02) <= one_sided <= cs.halfwidth(n, 1.0, 0.05, rho=0.02)


def test_one_sided_vectorised_matches_scalar() -> None:
    n = np.array([3.0, 50.0, 700.0, 12_345.0, 4e6])
    sigma = np.array([0.5, 1.0, 2.0, 3.0, 10.0])
    scalar = [cs.one_sided_halfwidth(m, s, 0.025, rho=0.01) for m, s in zip(n, sigma, strict=True)]
    assert_allclose(cs.one_sided_halfwidths(n, sigma, 0.025, 0.01), scalar, rtol=1e-10)


def test_difference_interval_equals_msprt_interval_for_balanced_arms() -> None:
    control = SufficientStats(4_000, 4_000 * 10.0, 4_000 * (4.0 + 100.0))
    treatment = SufficientStats(4_000, 4_000 * 10.2, 4_000 * (9.0 + 10.2**2))
    result = cs.difference_interval(control, treatment, alpha=0.05, rho=0.03)
    assert_allclose(result.effective_n, 4_000)
    # Same normal mixture: tau2 = rho^2 (sigma_a^2 + sigma_b^2), V = (sigma_a^2 + sigma_b^2) / n.
    mixture = msprt.msprt_look(0.2, 13.0 / 4_000, tau2=0.03**2 * 13.0, alpha=0.05)
    assert_allclose((result.ci_low, result.ci_high), (mixture.ci_low, mixture.ci_high), rtol=1e-9)
    assert result.excludes(0.0) == (mixture.p_value_always_valid <= 0.05)


def test_mean_interval_uses_plug_in_sigma() -> None:
    stats = SufficientStats.from_values(np.arange(100.0))
    result = cs.mean_interval(stats, alpha=0.1, planned_n=100)
    width = cs.halfwidth(100, math.sqrt(stats.variance), 0.1, planned_n=100)
    assert_allclose((result.ci_low, result.ci_high), (49.5 - width, 49.5 + width))


def test_previous_interval_is_intersected() -> None:
    first = cs.interval(1.0, 0.04, 100, rho=0.1)
    second = cs.interval(1.3, 0.02, 200, rho=0.1, previous=first)
    assert second.ci_low >= first.ci_low and second.ci_high <= first.ci_high
    assert second.ci_high == pytest.approx(first.ci_high)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(min_value=10, max_value=10_000),
    st.floats(min_value=-100, max_value=100),
    st.floats(min_value=0.1, max_value=50),
    st.integers(min_value=10, max_value=10_000),
    st.floats(min_value=-100, max_value=100),
    st.floats(min_value=0.1, max_value=50),
)
def test_swapping_arms_mirrors_difference_interval(
    n_a: int, mean_a: float, sd_a: float, n_b: int, mean_b: float, sd_b: float
) -> None:
    control = SufficientStats(n_a, n_a * mean_a, n_a * (sd_a**2 + mean_a**2))
    treatment = SufficientStats(n_b, n_b * mean_b, n_b * (sd_b**2 + mean_b**2))
    forward = cs.difference_interval(control, treatment, planned_n=1_000)
    backward = cs.difference_interval(treatment, control, planned_n=1_000)
    assert_allclose(backward.estimate, -forward.estimate, atol=1e-9)
    assert_allclose((backward.ci_low, backward.ci_high), (-forward.ci_high, -forward.ci_low))


def test_two_sample_scale_unbalanced() -> None:
    variance, effective_n = cs.two_sample_scale(1_000, 4.0, 3_000, 9.0)
    assert_allclose(variance, 4.0 / 1_000 + 9.0 / 3_000)
    assert_allclose(effective_n, 13.0 / variance)


@settings(max_examples=80, deadline=None)
@given(
    st.floats(min_value=1, max_value=1e7),
    st.floats(min_value=1.01, max_value=100),
    st.floats(min_value=1e-3, max_value=0.5),
    st.floats(min_value=1e-4, max_value=10),
)
def test_halfwidth_decreases_in_n(n: float, factor: float, alpha: float, rho: float) -> None:
    assert cs.halfwidth(n * factor, 1.0, alpha, rho=rho) < cs.halfwidth(n, 1.0, alpha, rho=rho)


@settings(max_examples=80, deadline=None)
@given(
    st.floats(min_value=1, max_value=1e7),
    st.floats(min_value=1e-3, max_value=1e3),
    st.floats(min_value=1e-3, max_value=1e3),
)
def test_halfwidth_scales_linearly_in_sigma(n: float, sigma: float, scale: float) -> None:
    base = cs.halfwidth(n, sigma, 0.05, planned_n=1_000)
    assert_allclose(cs.halfwidth(n, scale * sigma, 0.05, planned_n=1_000), scale * base, rtol=1e-12)
    one_sided = cs.one_sided_halfwidth(n, sigma, 0.05, planned_n=1_000)
    scaled = cs.one_sided_halfwidth(n, scale * sigma, 0.05, planned_n=1_000)
    assert_allclose(scaled, scale * one_sided, rtol=1e-9)


def test_error_neither_rho_nor_planned_n() -> None:
    with pytest.raises(ValueError, match="exactly one of rho and planned_n"):
        cs.halfwidth(100, 1.0)


def test_error_both_rho_and_planned_n() -> None:
    with pytest.raises(ValueError, match="exactly one of rho and planned_n"):
        cs.halfwidth(100, 1.0, rho=0.1, planned_n=100)


@pytest.mark.parametrize(("name", "kwargs"), [("n", {"n": 0}), ("sigma", {"sigma": -1.0})])
def test_error_non_positive_inputs(name: str, kwargs: dict[str, float]) -> None:
    arguments = {"n": 100.0, "sigma": 1.0} | kwargs
    with pytest.raises(ValueError, match=f"{name} must be finite and > 0"):
        cs.halfwidth(arguments["n"], arguments["sigma"], rho=0.1)
    with pytest.raises(ValueError, match=f"{name} must be finite and > 0"):
        cs.halfwidths([arguments["n"]], [arguments["sigma"]], 0.05, 0.1)


def test_error_non_positive_rho_and_planned_n() -> None:
    with pytest.raises(ValueError, match="rho must be finite and > 0"):
        cs.halfwidth(100, 1.0, rho=0.0)
    with pytest.raises(ValueError, match="planned_n must be finite and > 0"):
        cs.halfwidth(100, 1.0, planned_n=-5)


@pytest.mark.parametrize("alpha", [0.0, 1.0, 2.0])
def test_error_alpha_outside_unit_interval(alpha: float) -> None:
    with pytest.raises(ValueError, match=r"alpha must lie in \(0, 1\)"):
        cs.halfwidth(100, 1.0, alpha, rho=0.1)
    with pytest.raises(ValueError, match=r"alpha must lie in \(0, 1\)"):
        cs.one_sided_halfwidth(100, 1.0, alpha, rho=0.1)


def test_error_one_sided_planned_n_needs_alpha_below_half() -> None:
    with pytest.raises(ValueError, match=r"needs alpha < 0.5"):
        cs.one_sided_halfwidth(100, 1.0, 0.6, planned_n=100)


def test_error_zero_variance_mean() -> None:
    with pytest.raises(ValueError, match="zero estimated variance"):
        cs.mean_interval(SufficientStats.from_values([3.0, 3.0, 3.0]), rho=0.1)


def test_error_zero_variance_difference() -> None:
    constant = SufficientStats.from_values([1.0, 1.0])
    with pytest.raises(ValueError, match="zero estimated variance"):
        cs.difference_interval(constant, constant, rho=0.1)


def test_error_negative_variance_in_scale() -> None:
    with pytest.raises(ValueError, match="variances must be >= 0"):
        cs.two_sample_scale(10, -1.0, 10, 1.0)


def test_error_tuning_changes_between_looks() -> None:
    first = cs.interval(1.0, 0.04, 100, rho=0.1)
    with pytest.raises(ValueError, match="must not change between looks"):
        cs.interval(1.0, 0.02, 200, rho=0.2, previous=first)


def test_error_non_finite_estimate() -> None:
    with pytest.raises(ValueError, match="estimate must be finite"):
        cs.interval(math.nan, 0.04, 100, rho=0.1)
