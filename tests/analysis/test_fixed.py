"""Fixed-horizon tests against hand calculations, a textbook example, statsmodels and scipy."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from statsmodels.stats.proportion import confint_proportions_2indep, proportions_ztest
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

from analysis.fixed import (
    mean_difference_ci,
    proportion_difference_ci,
    two_proportion_z,
    welch_t,
)

CASES = json.loads((Path(__file__).parents[1] / "cases" / "fixed.json").read_text())

PROPORTION_CASES = [
    (100, 1000, 130, 1000),
    (48, 500, 41, 520),
    (3, 40, 9, 35),
    (12_345, 250_000, 12_790, 249_100),
    (0, 50, 4, 60),
]
MEAN_CASES = [
    (1.0, 4.0, 30, 2.0, 9.0, 40),
    (10.2, 2.5, 12, 9.1, 0.4, 7),
    (-3.0, 100.0, 1_000, -2.4, 81.0, 1_200),
    (0.5, 0.0, 5, 0.7, 0.3, 9),
]


@pytest.mark.parametrize("case", CASES["two_proportion_z"], ids=lambda c: c["source"][:40])
def test_two_proportion_z_matches_reference(case: dict[str, Any]) -> None:
    z, p = two_proportion_z(case["successes_a"], case["n_a"], case["successes_b"], case["n_b"])
    assert z == pytest.approx(case["z"], rel=case["rtol"])
    assert p == pytest.approx(case["p_value"], rel=case["rtol"])


@pytest.mark.parametrize("case", CASES["proportion_difference_ci"], ids=lambda c: c["source"][:40])
def test_proportion_interval_matches_reference(case: dict[str, Any]) -> None:
    estimate = proportion_difference_ci(
        case["successes_a"], case["n_a"], case["successes_b"], case["n_b"], case["confidence_level"]
    )
    for field in ("difference", "standard_error", "ci_low", "ci_high"):
        assert getattr(estimate, field) == pytest.approx(case[field], abs=case["atol"]), field


@pytest.mark.parametrize("case", CASES["welch_t"], ids=lambda c: c["source"][:40])
def test_welch_matches_reference(case: dict[str, Any]) -> None:
    arms = (case["mean_a"], case["var_a"], case["n_a"], case["mean_b"], case["var_b"], case["n_b"])
    result = welch_t(*arms)
    interval = mean_difference_ci(*arms)
    assert result.t == pytest.approx(case["t"], rel=case["rtol"])
    assert result.degrees_of_freedom == pytest.approx(case["degrees_of_freedom"], rel=case["rtol"])
    assert result.p_value == pytest.approx(case["p_value"], rel=case["rtol"])
    assert interval.ci_low == pytest.approx(case["ci_low"], rel=case["rtol"])
    assert interval.ci_high == pytest.approx(case["ci_high"], rel=case["rtol"])


@pytest.mark.parametrize(("xa", "na", "xb", "nb"), PROPORTION_CASES)
def test_two_proportion_z_equals_statsmodels(xa: int, na: int, xb: int, nb: int) -> None:
    z, p = two_proportion_z(xa, na, xb, nb)
    z_sm, p_sm = proportions_ztest([xb, xa], [nb, na])
    assert z == pytest.approx(float(z_sm), rel=1e-12)
    assert p == pytest.approx(float(p_sm), rel=1e-12)


@pytest.mark.parametrize(("xa", "na", "xb", "nb"), PROPORTION_CASES)
@pytest.mark.parametrize("confidence_level", [0.9, 0.95, 0.99])
def test_wald_interval_equals_statsmodels(
    xa: int, na: int, xb: int, nb: int, confidence_level: float
) -> None:
    estimate = proportion_difference_ci(xa, na, xb, nb, confidence_level)
    low, high = confint_proportions_2indep(
        xb, nb, xa, na, method="wald", compare="diff", alpha=1 - confidence_level
    )
    assert (estimate.ci_low, estimate.ci_high) == pytest.approx((low, high), rel=1e-10, abs=1e-14)
    assert estimate.difference == pytest.approx(xb / nb - xa / na)


@pytest.mark.parametrize("arms", MEAN_CASES)
def test_welch_equals_scipy(arms: tuple[float, float, int, float, float, int]) -> None:
    mean_a, var_a, n_a, mean_b, var_b, n_b = arms
    result = welch_t(*arms)
    reference = stats.ttest_ind_from_stats(
        mean_b, math.sqrt(var_b), n_b, mean_a, math.sqrt(var_a), n_a, equal_var=False
    )
    assert result.t == pytest.approx(float(reference.statistic), rel=1e-12)
    assert result.p_value == pytest.approx(float(reference.pvalue), rel=1e-10)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_welch_interval_equals_statsmodels(seed: int) -> None:
    rng = np.random.default_rng(seed)
    control, treatment = rng.normal(0.0, 1.0, 25), rng.normal(0.4, 2.5, 41)
    estimate = mean_difference_ci(
        control.mean(), control.var(ddof=1), 25, treatment.mean(), treatment.var(ddof=1), 41, 0.9
    )
    compare = CompareMeans(DescrStatsW(treatment), DescrStatsW(control))
    low, high = compare.tconfint_diff(alpha=0.1, usevar="unequal")
    assert (estimate.ci_low, estimate.ci_high) == pytest.approx((low, high), rel=1e-10)


counts = st.integers(min_value=2, max_value=5_000).flatmap(
    lambda n: st.tuples(st.integers(0, n), st.just(n))
)


@settings(max_examples=200, deadline=None)
@given(arm_a=counts, arm_b=counts)
def test_swapping_arms_flips_z_and_keeps_p(arm_a: tuple[int, int], arm_b: tuple[int, int]) -> None:
    (xa, na), (xb, nb) = arm_a, arm_b
    if xa + xb in (0, na + nb):
        return  # no variance: covered by the error-path test
    forward, backward = two_proportion_z(xa, na, xb, nb), two_proportion_z(xb, nb, xa, na)
    assert forward.z == -backward.z
    assert forward.p_value == backward.p_value
    assert 0.0 <= forward.p_value <= 1.0


positive = st.floats(min_value=1e-3, max_value=1e3)


@settings(max_examples=200, deadline=None)
@given(
    means=st.tuples(st.floats(-1e3, 1e3), st.floats(-1e3, 1e3)),
    variances=st.tuples(positive, positive),
    sizes=st.tuples(st.integers(2, 10_000), st.integers(2, 10_000)),
)
def test_welch_symmetric_and_p_in_unit_interval(
    means: tuple[float, float], variances: tuple[float, float], sizes: tuple[int, int]
) -> None:
    forward = welch_t(means[0], variances[0], sizes[0], means[1], variances[1], sizes[1])
    backward = welch_t(means[1], variances[1], sizes[1], means[0], variances[0], sizes[0])
    assert forward.t == pytest.approx(-backward.t)
    assert forward.p_value == pytest.approx(backward.p_value)
    assert forward.degrees_of_freedom == pytest.approx(backward.degrees_of_freedom)
    assert 0.0 <= forward.p_value <= 1.0
    interval = mean_difference_ci(
        means[0], variances[0], sizes[0], means[1], variances[1], sizes[1]
    )
    assert interval.ci_low <= interval.difference <= interval.ci_high


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: two_proportion_z(-1, 10, 3, 10), "successes_a must be"),
        (lambda: two_proportion_z(11, 10, 3, 10), "successes_a must be"),
        (lambda: two_proportion_z(1, 10, 3, 0), "n_b must be"),
        (lambda: two_proportion_z(1.5, 10, 3, 10), "successes_a must be"),
        (lambda: two_proportion_z(True, 10, 3, 10), "successes_a must be"),
        (lambda: two_proportion_z(0, 10, 0, 10), "same outcome"),
        (lambda: two_proportion_z(10, 10, 20, 20), "same outcome"),
        (lambda: proportion_difference_ci(0, 10, 20, 20), "both observed rates are 0 or 1"),
        (lambda: proportion_difference_ci(1, 10, 2, 20, 1.0), "confidence_level"),
        (lambda: proportion_difference_ci(1, 10, 2, 20, 0.0), "confidence_level"),
        (lambda: welch_t(0.0, 1.0, 1, 1.0, 1.0, 10), "n_a must be an integer >= 2"),
        (lambda: welch_t(0.0, 1.0, 10, 1.0, 1.0, 2.5), "n_b must be an integer >= 2"),
        (lambda: welch_t(0.0, -1.0, 10, 1.0, 1.0, 10), "var_a must be"),
        (lambda: welch_t(0.0, 1.0, 10, 1.0, math.nan, 10), "var_b must be"),
        (lambda: welch_t(math.inf, 1.0, 10, 1.0, 1.0, 10), "mean_a must be finite"),
        (lambda: welch_t(0.0, 0.0, 10, 1.0, 0.0, 10), "both variances are zero"),
        (lambda: mean_difference_ci(0.0, 1.0, 10, 1.0, 1.0, 10, 1.5), "confidence_level"),
    ],
)
def test_invalid_input_raises_value_error(call: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()
