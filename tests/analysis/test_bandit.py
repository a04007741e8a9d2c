"""Thompson sampling's probabilities, the floors, and the period-stratified difference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numpy.testing import assert_allclose
from scipy import integrate, stats

from analysis import bandit
from analysis.sufficient_stats import SufficientStats

DRAWS = 200_000


def test_probability_best_of_two_beta_arms_matches_the_integral() -> None:
    # P(X > Y) = integral of f_X(x) F_Y(x) dx, for X ~ Beta(1+12, 1+88), Y ~ Beta(1+20, 1+80).
    a, b = stats.beta(13, 89), stats.beta(21, 81)
    exact, _ = integrate.quad(lambda x: a.pdf(x) * b.cdf(x), 0, 1)
    draws = bandit.beta_posterior_draws([12, 20], [100, 100], DRAWS, np.random.default_rng(1))
    found = bandit.probability_best(draws)
    tolerance = 4 * math.sqrt(exact * (1 - exact) / DRAWS)
    assert_allclose(found, [exact, 1 - exact], atol=tolerance)


def test_probability_best_of_two_normal_arms_is_a_normal_cdf() -> None:
    means, variances = [1.0, 1.2], [0.01, 0.03]
    exact = stats.norm.cdf((means[1] - means[0]) / math.sqrt(sum(variances)))
    draws = bandit.normal_posterior_draws(means, variances, DRAWS, np.random.default_rng(2))
    tolerance = 4 * math.sqrt(exact * (1 - exact) / DRAWS)
    assert_allclose(bandit.probability_best(draws)[1], exact, atol=tolerance)
    lower = bandit.probability_best(draws, higher_is_better=False)
    assert_allclose(lower[0], exact, atol=tolerance)


def test_the_same_generator_seed_gives_the_same_draws() -> None:
    first = bandit.beta_posterior_draws([3, 5], [10, 10], 100, np.random.default_rng(7))
    again = bandit.beta_posterior_draws([3, 5], [10, 10], 100, np.random.default_rng(7))
    assert np.array_equal(first, again)


@given(
    st.lists(st.floats(0.0, 1.0), min_size=2, max_size=6).filter(lambda p: sum(p) > 0),
    st.floats(0.0, 0.15),
)
def test_floored_weights_keep_every_floor_and_sum_to_one(raw: list[float], floor: float) -> None:
    probabilities = [p / sum(raw) for p in raw]
    floors = [max(floor, 0.2)] + [floor] * (len(raw) - 1)
    if sum(floors) > 1:
        return
    weights = bandit.floored_weights(probabilities, floors)
    assert math.isclose(sum(weights), 1.0)
    assert all(w >= f - 1e-12 for w, f in zip(weights, floors, strict=True))
    # Probability order is kept among arms with the same floor.
    rest = list(zip(probabilities[1:], weights[1:], strict=True))
    assert all(wi <= wj for pi, wi in rest for pj, wj in rest if pi < pj)


def test_floors_that_leave_no_room_are_refused() -> None:
    with pytest.raises(ValueError, match="over 1"):
        bandit.floored_weights([0.5, 0.5], [0.6, 0.6])


def _drifting_periods(
    rng: np.random.Generator, effect: float
) -> tuple[list[tuple[SufficientStats, SufficientStats]], float]:
    """Two periods: the base rate doubles, the treatment's share goes from 20 % to 80 %."""
    pairs = []
    for base, share in ((0.1, 0.2), (0.2, 0.8)):
        n_t = int(rng.binomial(2000, share))
        n_c = 2000 - n_t
        c = SufficientStats.from_binary(n_c, int(rng.binomial(n_c, base)))
        t = SufficientStats.from_binary(n_t, int(rng.binomial(n_t, base + effect)))
        pairs.append((c, t))
    return pairs, effect


def test_the_stratified_difference_is_unbiased_where_pooling_is_not() -> None:
    rng = np.random.default_rng(3)
    stratified, pooled, variances = [], [], []
    for _ in range(2000):
        pairs, _ = _drifting_periods(rng, effect=0.0)
        found = bandit.stratified_difference(pairs)
        stratified.append(found.difference)
        variances.append(found.variance)
        c = SufficientStats.combine(p[0] for p in pairs)
        t = SufficientStats.combine(p[1] for p in pairs)
        pooled.append(t.mean - c.mean)
    standard_error = np.std(stratified) / math.sqrt(len(stratified))
    assert abs(np.mean(stratified)) < 4 * standard_error
    assert np.mean(pooled) > 0.05  # Simpson: the treatment got the late, better-converting units
    # The plug-in variance matches the spread across replications (within 10 %).
    assert_allclose(np.mean(variances), np.var(stratified), rtol=0.1)


def test_periods_without_two_units_per_arm_are_left_out() -> None:
    one = SufficientStats.from_binary(1, 1)
    ok = SufficientStats.from_binary(50, 10)
    found = bandit.stratified_difference([(one, ok), (ok, SufficientStats.from_binary(50, 20))])
    assert found.periods_used == 1 and found.units_left_out == 51
    assert_allclose(found.difference, 0.2)
    with pytest.raises(ValueError, match="no allocation period"):
        bandit.stratified_difference([(one, ok)])
