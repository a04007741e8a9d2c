"""Sample ratio mismatch checks against scipy, a published example and a late imbalance."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from analysis.srm import srm_check, srm_check_daily, srm_p_value

CASES = json.loads((Path(__file__).parents[1] / "cases" / "srm.json").read_text())


@pytest.mark.parametrize("case", CASES["cases"], ids=lambda c: str(c["observed_counts"]))
def test_srm_matches_reference(case: dict[str, Any]) -> None:
    result = srm_check(case["observed_counts"], case["expected_weights"])
    assert result.chi2 == pytest.approx(case["chi2"], rel=1e-10)
    assert result.p_value == pytest.approx(case["p_value"], rel=case["rtol"])
    assert result.flagged is case["flagged"]
    assert result.degrees_of_freedom == len(case["observed_counts"]) - 1
    assert srm_p_value(case["observed_counts"], case["expected_weights"]) == result.p_value


@settings(max_examples=100, deadline=None)
@given(
    counts=st.lists(st.integers(0, 100_000), min_size=2, max_size=5).filter(lambda c: sum(c) > 0),
    raw_weights=st.lists(st.integers(1, 100), min_size=5, max_size=5),
)
def test_srm_equals_scipy_chisquare(counts: list[int], raw_weights: list[int]) -> None:
    weights = np.asarray(raw_weights[: len(counts)], dtype=float)
    weights /= weights.sum()
    result = srm_check(counts, list(weights))
    reference = stats.chisquare(counts, sum(counts) * weights)
    assert result.chi2 == pytest.approx(float(reference.statistic), rel=1e-9, abs=1e-12)
    assert result.p_value == pytest.approx(float(reference.pvalue), rel=1e-9, abs=1e-300)
    assert 0.0 <= result.p_value <= 1.0


def test_threshold_is_strict_and_configurable() -> None:
    counts, weights = [50_000, 51_000], [0.5, 0.5]  # p = 0.00165
    assert not srm_check(counts, weights).flagged
    assert srm_check(counts, weights, threshold=0.01).flagged
    assert srm_check(counts, weights).threshold == 0.001


def test_daily_check_sees_a_late_imbalance_the_total_hides() -> None:
    rng = np.random.default_rng(11)
    healthy = [list(rng.multinomial(10_000, [0.5, 0.5])) for _ in range(13)]
    broken = [4_780, 5_220]  # a logging bug on the last day loses 4 % of control
    result = srm_check_daily([*healthy, broken], [0.5, 0.5])
    assert result.flagged_days == (13,)
    assert result.by_day[13] is not None and result.by_day[13].p_value < 1e-4
    final_total = result.cumulative[-1]
    assert final_total is not None and final_total.total_units == 140_000
    assert final_total.p_value > 0.1  # diluted in the running total
    assert result.flagged_cumulative_days == ()
    assert result.flagged


def test_daily_check_skips_days_without_units() -> None:
    result = srm_check_daily([[0, 0], [510, 490], [0, 0]], [0.5, 0.5])
    assert result.by_day[0] is None and result.by_day[2] is None
    assert result.cumulative[0] is None
    assert result.cumulative[2] == result.cumulative[1]
    assert result.flagged_days == () and not result.flagged


def test_daily_check_uses_configured_non_uniform_weights() -> None:
    days = [[1_000, 1_010, 7_990], [1_020, 985, 7_995]]
    weights = [0.1, 0.1, 0.8]
    result = srm_check_daily(days, weights)
    assert result.flagged_days == ()
    last = result.cumulative[-1]
    assert last is not None and last.expected_counts == pytest.approx((2_000.0, 2_000.0, 16_000.0))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: srm_p_value([10, 12], [0.5, 0.6]), "sum to 1 within 1e-9"),
        (lambda: srm_p_value([10, 12], [0.5, 0.5 + 1e-8]), "sum to 1 within 1e-9"),
        (lambda: srm_p_value([10, 12], [1.0, 0.0]), "weights must be positive"),
        (lambda: srm_p_value([10, -1], [0.5, 0.5]), "non-negative integers"),
        (lambda: srm_p_value([10, 2.5], [0.5, 0.5]), "non-negative integers"),
        (lambda: srm_p_value([10, True], [0.5, 0.5]), "non-negative integers"),
        (lambda: srm_p_value([10], [1.0]), "at least two variants"),
        (lambda: srm_p_value([10, 12, 3], [0.5, 0.5]), "2 weights for 3 variants"),
        (lambda: srm_p_value([0, 0], [0.5, 0.5]), "no units observed"),
        (lambda: srm_p_value([5, 5], [0.5, float("nan")]), "weights must be positive"),
        (lambda: srm_check([10, 12], [0.5, 0.5], threshold=0.0), "threshold must be in"),
        (lambda: srm_check_daily([], [0.5, 0.5]), "at least one day"),
        (lambda: srm_check_daily([[1, 2], [1, 2, 3]], [0.5, 0.5]), "one count per variant"),
        (lambda: srm_check_daily([[1, 2]], [0.5, 0.4]), "sum to 1 within 1e-9"),
    ],
)
def test_invalid_input_raises_value_error(call: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()
