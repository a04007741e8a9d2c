"""Tests for analysis.sufficient_stats: sums, moments, merging, validation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose

from analysis.sufficient_stats import SufficientStats

values_strategy = st.lists(
    st.floats(min_value=-1e3, max_value=1e3, allow_nan=False), min_size=1, max_size=40
)


def test_mean_and_variance_match_numpy() -> None:
    rng = np.random.default_rng(1)
    values = rng.gamma(2.0, 3.0, size=500)
    stats = SufficientStats.from_values(values)
    assert stats.n == 500
    assert_allclose(stats.mean, values.mean(), rtol=1e-12)
    assert_allclose(stats.variance, values.var(), rtol=1e-10)
    assert_allclose(stats.sample_variance, values.var(ddof=1), rtol=1e-10)
    assert_allclose(stats.variance_of_mean, values.var() / 500, rtol=1e-10)


def test_binary_variance_is_p_times_one_minus_p() -> None:
    stats = SufficientStats.from_binary(n=1000, successes=123)
    assert stats.total == stats.total_squares == 123
    assert_allclose(stats.mean, 0.123)
    assert_allclose(stats.variance, 0.123 * 0.877, rtol=1e-12)
    as_values = SufficientStats.from_values(np.r_[np.ones(123), np.zeros(877)])
    assert as_values == stats


def test_count_metric_from_values() -> None:
    counts = np.array([0, 3, 1, 0, 7, 2, 2, 5])
    stats = SufficientStats.from_values(counts)
    assert_allclose((stats.mean, stats.variance), (counts.mean(), counts.var()))


def test_merge_of_time_buckets_equals_whole_period() -> None:
    rng = np.random.default_rng(2)
    metric, covariate = rng.normal(5, 2, size=300), rng.normal(4, 1, size=300)
    buckets = [
        SufficientStats.from_values(metric[i : i + 100], covariate[i : i + 100])
        for i in (0, 100, 200)
    ]
    whole = SufficientStats.from_values(metric, covariate)
    merged = SufficientStats.combine(buckets)
    assert merged.n == whole.n
    for field in (
        "total",
        "total_squares",
        "covariate_total",
        "covariate_total_squares",
        "covariate_cross_total",
    ):
        assert_allclose(getattr(merged, field), getattr(whole, field), rtol=1e-12)
    assert_allclose((buckets[0] + buckets[1] + buckets[2]).mean, whole.mean, rtol=1e-12)


def test_merge_with_empty_bucket_is_identity() -> None:
    stats = SufficientStats.from_values([1.0, 2.0, 4.0])
    assert stats.merge(SufficientStats(0, 0.0, 0.0)) == stats


def test_constant_values_have_zero_variance_not_negative() -> None:
    stats = SufficientStats.from_values([0.1] * 7)
    assert stats.variance == 0.0


@settings(max_examples=60, deadline=None)
@given(values_strategy, values_strategy)
def test_merge_is_commutative_and_matches_concatenation(
    left: list[float], right: list[float]
) -> None:
    a, b = SufficientStats.from_values(left), SufficientStats.from_values(right)
    both = SufficientStats.from_values(left + right)
    assert a.merge(b).n == both.n
    assert_allclose(a.merge(b).total, b.merge(a).total, rtol=1e-12, atol=1e-9)
    assert_allclose(a.merge(b).mean, both.mean, rtol=1e-9, atol=1e-9)
    assert a.merge(b).variance >= 0


def test_error_negative_n() -> None:
    with pytest.raises(ValueError, match="n must be >= 0"):
        SufficientStats(-1, 0.0, 0.0)


def test_error_non_integer_n() -> None:
    with pytest.raises(ValueError, match="n must be an integer"):
        SufficientStats(2.5, 1.0, 1.0)  # type: ignore[arg-type]


def test_error_non_finite_sum() -> None:
    with pytest.raises(ValueError, match="must be finite"):
        SufficientStats(3, float("nan"), 1.0)


def test_error_negative_sum_of_squares() -> None:
    with pytest.raises(ValueError, match="total of squares must be >= 0"):
        SufficientStats(3, 0.0, -1.0)


def test_error_impossible_sums() -> None:
    with pytest.raises(ValueError, match="Cauchy-Schwarz"):
        SufficientStats(2, 10.0, 1.0)


def test_error_nonzero_sums_with_no_units() -> None:
    with pytest.raises(ValueError, match="must be 0 when n == 0"):
        SufficientStats(0, 1.0, 1.0)


def test_error_partial_covariate_sums() -> None:
    with pytest.raises(ValueError, match="covariate sums must be given together"):
        SufficientStats(3, 3.0, 5.0, covariate_total=1.0)


def test_error_impossible_cross_total() -> None:
    with pytest.raises(ValueError, match="covariate_cross_total exceeds"):
        SufficientStats(2, 2.0, 2.0, 2.0, 2.0, 10.0)


def test_error_successes_out_of_range() -> None:
    with pytest.raises(ValueError, match=r"successes must lie in \[0, n\]"):
        SufficientStats.from_binary(10, 11)


def test_error_mean_of_empty_variant() -> None:
    with pytest.raises(ValueError, match="empty variant"):
        _ = SufficientStats(0, 0.0, 0.0).mean


def test_error_sample_variance_needs_two_units() -> None:
    with pytest.raises(ValueError, match="n >= 2"):
        _ = SufficientStats.from_values([1.0]).sample_variance


def test_error_merge_with_and_without_covariate() -> None:
    with pytest.raises(ValueError, match="with and without covariate"):
        SufficientStats.from_values([1.0], [2.0]).merge(SufficientStats.from_values([1.0]))


def test_error_combine_nothing() -> None:
    with pytest.raises(ValueError, match="at least one bucket"):
        SufficientStats.combine([])


def test_error_values_shape() -> None:
    with pytest.raises(ValueError, match="one-dimensional"):
        SufficientStats.from_values([[1.0, 2.0]])
    with pytest.raises(ValueError, match="same length"):
        SufficientStats.from_values([1.0, 2.0], [1.0])
