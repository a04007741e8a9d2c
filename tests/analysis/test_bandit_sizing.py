"""A bandit's sample size: the simulated allocation, its stratified variance, the root."""

from __future__ import annotations

import math

import numpy as np
import pytest
from numpy.testing import assert_allclose
from scipy import integrate, stats

from analysis import bandit, planning
from analysis.bandit_sizing import allocation_paths, bandit_sample_size, normal_probability_best
from analysis.sufficient_stats import SufficientStats

BINARY = {"binary": True, "alpha": 0.05, "power": 0.8}


def binary_arms(rates: list[float]) -> tuple[list[float], list[float]]:
    return rates, [p * (1 - p) for p in rates]


@pytest.mark.parametrize(
    ("weights", "sd_treatment"), [((0.5, 0.5), 1.0), ((0.4, 0.3, 0.3), 1.3), ((0.6, 0.4), 0.8)]
)
def test_floors_that_fix_the_weights_give_the_closed_form(
    weights: tuple[float, ...], sd_treatment: float
) -> None:
    """Floors summing to one leave nothing to move: the fixed design's closed form
    (Chow, Shao & Wang 2008, section 3.2.4, via ``planning.sample_size_means``) times the
    inflation factor, in units in all."""
    arms = len(weights)
    means = [10.0] * arms
    means[-1] = 10.05
    variances = [1.0] * arms
    variances[-1] = sd_treatment**2
    sized = bandit_sample_size(
        means, variances, weights, weights, best=arms - 1, binary=False, alpha=0.05 / (arms - 1),
        power=0.8, inflation_factor=1.66, replicates=1,
    )  # fmt: skip
    closed = planning.sample_size_means(
        1.0, 0.05, alpha=0.05 / (arms - 1), power=0.8, treatment_standard_deviation=sd_treatment,
        allocation_ratio=weights[-1] / weights[0],
    )  # fmt: skip
    expected_total = closed.n_control_exact * 1.66 / weights[0]
    assert sized.total_units == pytest.approx(expected_total, rel=2e-3)
    assert sized.fixed_total_units == math.ceil(expected_total * (1 - 1e-12))
    assert sized.variance_ratio == pytest.approx(1.0, abs=1e-12)
    assert_allclose(sized.share_by_arm, weights, atol=1e-12)
    assert sized.power == pytest.approx(0.8, abs=1e-3)


def test_binary_fixed_weights_use_the_unpooled_variance_of_the_comparison() -> None:
    """Equal fixed weights on a binary metric: n per arm = (z + z)^2 (p_a q_a + p_b q_b) /
    delta^2, the unpooled z-test the confidence sequence runs (not the pooled Fleiss form)."""
    means, variances = binary_arms([0.10, 0.12])
    sized = bandit_sample_size(means, variances, [0.5, 0.5], [0.5, 0.5], best=1, **BINARY,
                               replicates=1)  # fmt: skip
    z = stats.norm.ppf(0.975) + stats.norm.ppf(0.8)
    per_arm = z**2 * (0.1 * 0.9 + 0.12 * 0.88) / 0.02**2
    assert sized.total_units == pytest.approx(2 * per_arm, rel=2e-3)


def test_two_arms_pay_for_the_control_at_its_floor_and_three_arms_gain_little() -> None:
    """Thompson sampling takes traffic from the control with two arms (the comparison gets
    noisier: more units) and from the arm that is no better with three (about even)."""
    means, variances = binary_arms([0.10, 0.113])
    two = bandit_sample_size(means, variances, [0.5, 0.5], [0.2, 0.05], best=1, **BINARY)
    assert two.share_by_arm[0] < 0.35 and two.share_by_arm[1] > 0.65
    assert two.variance_ratio > 1.2 and two.total_units > 1.2 * two.fixed_total_units
    means, variances = binary_arms([0.10, 0.10, 0.113])
    three = bandit_sample_size(
        means, variances, [1 / 3] * 3, [0.2, 0.05, 0.05], best=2, **BINARY | {"alpha": 0.025}
    )
    assert three.share_by_arm[1] < 0.2 < three.share_by_arm[0] < 1 / 3 < three.share_by_arm[2]
    assert three.total_units == pytest.approx(three.fixed_total_units, rel=0.1)


def test_larger_lifts_need_fewer_units() -> None:
    totals = []
    for lift in (0.05, 0.1, 0.2, 0.4):
        means, variances = binary_arms([0.1, 0.1 * (1 + lift)])
        found = bandit_sample_size(means, variances, [0.5, 0.5], [0.2, 0.05], best=1, **BINARY,
                                   replicates=100)  # fmt: skip
        totals.append(found.total_units)
    assert totals == sorted(totals, reverse=True) and len(set(totals)) == 4


def test_a_decrease_metric_plans_for_the_lower_arm() -> None:
    up = bandit_sample_size([1.0, 1.1], [1.0, 1.0], [0.5, 0.5], [0.2, 0.05], best=1, binary=False,
                            alpha=0.05, power=0.8)  # fmt: skip
    down = bandit_sample_size([1.1, 1.0], [1.0, 1.0], [0.5, 0.5], [0.2, 0.05], best=1,
                              binary=False, alpha=0.05, power=0.8, higher_is_better=False)  # fmt: skip
    # The same paths but for the noise's sign: the same plan within the Monte-Carlo error.
    assert down.total_units == pytest.approx(up.total_units, rel=0.02)
    assert_allclose(down.share_by_arm, up.share_by_arm, atol=0.01)


def test_the_same_seed_gives_the_same_plan() -> None:
    means, variances = binary_arms([0.1, 0.115])
    first = bandit_sample_size(means, variances, [0.5, 0.5], [0.2, 0.05], best=1, **BINARY)
    again = bandit_sample_size(means, variances, [0.5, 0.5], [0.2, 0.05], best=1, **BINARY)
    other = bandit_sample_size(means, variances, [0.5, 0.5], [0.2, 0.05], best=1, **BINARY,
                               seed=7)  # fmt: skip
    assert first == again
    assert other.total_units == pytest.approx(first.total_units, rel=0.02)  # Monte-Carlo error


def test_probability_best_matches_the_integral() -> None:
    """P(arm k best) = integral of f_k(x) prod_{j != k} F_j(x) dx, by scipy's quad."""
    location = np.array([[0.10, 0.11, 0.105]])
    scale = np.array([[0.01, 0.004, 0.02]])
    found = normal_probability_best(location, scale)[0]
    expected = []
    for k in range(3):
        others = [j for j in range(3) if j != k]

        def density(x: float, k: int = k, others: list[int] = others) -> float:
            value = stats.norm.pdf(x, location[0, k], scale[0, k])
            return float(value * np.prod([stats.norm.cdf(x, location[0, j], scale[0, j])
                                          for j in others]))  # fmt: skip

        expected.append(integrate.quad(density, 0.0, 0.25, points=[0.1, 0.11])[0])
    assert_allclose(found, expected, atol=2e-3)


def test_weights_keep_their_floors_and_follow_thompson_sampling() -> None:
    """Each period's weights are floor + (1 - sum floors) P(best): at or above the floors,
    summing to one; the paths' shares match the service's own re-weighting (Monte Carlo
    Beta draws, ``analysis.bandit``) replayed on the same kind of data."""
    rates, floors = [0.10, 0.10, 0.12], [0.2, 0.05, 0.05]
    means, variances = binary_arms(rates)
    paths = allocation_paths(means, variances, [1 / 3] * 3, floors, 30_000, best=2,
                             binary=True, periods=12, replicates=200)  # fmt: skip
    assert np.all(paths.weights >= np.array(floors) - 1e-12)
    assert_allclose(paths.weights.sum(axis=2), 1.0, atol=1e-12)
    rng = np.random.default_rng(11)
    shares = []
    for _ in range(100):
        weights, units, successes, served = np.full(3, 1 / 3), np.zeros(3), np.zeros(3), 0.0
        for period in range(12):
            arrived = rng.multinomial(2_500, weights)
            units += arrived
            successes += rng.binomial(arrived, rates)
            served = served + arrived if period else arrived.astype(float)
            draws = bandit.beta_posterior_draws(successes, units, 1_000, rng)
            weights = np.array(bandit.floored_weights(bandit.probability_best(draws), floors))
        shares.append(served / served.sum())
    assert_allclose(paths.share_by_arm, np.mean(shares, axis=0), atol=0.02)


def test_the_variance_is_the_stratified_estimators() -> None:
    """``T Var D`` of the paths equals ``analysis.bandit.stratified_difference``'s variance
    on periods with those units and the arms' variances (large T: rounding is negligible)."""
    means, variances = [0.0, 0.3], [1.0, 2.0]
    total = 10**8
    paths = allocation_paths(means, variances, [0.5, 0.5], [0.2, 0.05], total, best=1,
                             binary=False, periods=6, replicates=3)  # fmt: skip
    for path in range(3):
        pairs = []
        for period in range(6):
            arms = []
            for arm in (0, 1):
                n = round(paths.weights[path, period, arm] * total / 6)
                arms.append(
                    SufficientStats(n, n * means[arm], n * (variances[arm] + means[arm] ** 2))
                )
            pairs.append((arms[0], arms[1]))
        variance = bandit.stratified_difference(pairs).variance
        assert paths.variance_units[path] == pytest.approx(variance * total, rel=1e-6)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"best": 0}, "best must be a treatment's index"),
        ({"floors": [0.7, 0.4]}, "floors must be >= 0 and sum to at most 1"),
        ({"initial_weights": [0.5, 0.6]}, "weights must sum to 1"),
        ({"means": [0.1, 0.1]}, "must differ from the control's"),
        ({"means": [0.1, 0.09]}, "must be an improvement in the metric's direction"),
        ({"unit_variances": [0.09, 0.0]}, "unit_variances finite and > 0"),
        ({"means": [0.1, 0.12, 0.1]}, "one entry per arm"),
        ({"power": 1.0}, "power must be in"),
        ({"alpha": 0.0}, "alpha must be in"),
        ({"inflation_factor": 0.9}, "inflation_factor must be finite and >= 1"),
    ],
)
def test_invalid_input_is_refused(change: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {
        "means": [0.1, 0.12], "unit_variances": [0.09, 0.1056], "initial_weights": [0.5, 0.5],
        "floors": [0.2, 0.05], "best": 1, "binary": True, "alpha": 0.05, "power": 0.8,
    }  # fmt: skip
    with pytest.raises(ValueError, match=message):
        bandit_sample_size(**(arguments | change))  # type: ignore[arg-type]


def test_invalid_paths_are_refused() -> None:
    with pytest.raises(ValueError, match="periods must be an integer"):
        allocation_paths([0.0, 1.0], [1.0, 1.0], [0.5, 0.5], [0.2, 0.05], 1000, best=1,
                         binary=False, periods=0)  # fmt: skip
    with pytest.raises(ValueError, match="total_units"):
        allocation_paths([0.0, 1.0], [1.0, 1.0], [0.5, 0.5], [0.2, 0.05], -5, best=1,
                         binary=False)  # fmt: skip
