"""The anytime-valid SRM test (Lindon & Malek 2022): closed form, level under looks, power."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from scipy import special, stats

from analysis.srm import (
    DEFAULT_CONCENTRATION,
    daily_threshold,
    log_e_value,
    sequential_srm,
    srm_check,
)


def wilson(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion."""
    rate = successes / trials
    centre = (rate + z * z / (2 * trials)) / (1 + z * z / trials)
    half = (
        z * math.sqrt(rate * (1 - rate) / trials + z * z / (4 * trials**2)) / (1 + z * z / trials)
    )
    return centre - half, centre + half


@pytest.mark.parametrize(
    ("counts", "weights", "k"),
    [([480, 520], [0.5, 0.5], 100.0), ([3_000, 1_100, 900], [0.6, 0.2, 0.2], 4_000.0),
     ([0, 7], [0.3, 0.7], 10.0), ([50_100, 49_900], [0.5, 0.5], DEFAULT_CONCENTRATION)],
)  # fmt: skip
def test_the_e_value_is_the_dirichlet_multinomial_over_the_multinomial(
    counts: list[int], weights: list[float], k: float
) -> None:
    # Independently: scipy's Dirichlet-multinomial and multinomial probabilities.
    prior = [k * w for w in weights]
    expected = stats.dirichlet_multinomial.logpmf(counts, prior, sum(counts)) - (
        stats.multinomial.logpmf(counts, sum(counts), weights)
    )
    assert log_e_value(counts, weights, k) == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_no_units_is_no_evidence_and_a_clear_mismatch_is_flagged() -> None:
    assert log_e_value([0, 0], [0.5, 0.5]) == 0.0
    healthy = sequential_srm([10_020, 9_980], [0.5, 0.5])
    assert not healthy.flagged and healthy.p_value_always_valid == 1.0
    broken = sequential_srm([5_000, 5_600], [0.5, 0.5])
    assert broken.flagged and broken.p_value_always_valid < 0.001


def test_the_p_value_never_goes_up_and_closed_periods_count() -> None:
    first = sequential_srm([5_000, 5_600], [0.5, 0.5])
    later = sequential_srm(
        [10_000, 10_000], [0.5, 0.5], previous_max_log_e_value=first.max_log_e_value
    )
    assert later.p_value_always_valid == first.p_value_always_valid
    carried = sequential_srm([100, 100], [0.5, 0.5], closed_log_e_value=first.log_e_value)
    assert carried.log_e_value == pytest.approx(
        first.log_e_value + log_e_value([100, 100], [0.5, 0.5])
    )


def test_daily_thresholds_spend_at_most_their_budget() -> None:
    assert daily_threshold(0.001, 1) == pytest.approx(0.001 * 6 / math.pi**2)
    assert sum(daily_threshold(0.001, d) for d in range(1, 100_000)) < 0.001
    with pytest.raises(ValueError, match="day_number"):
        daily_threshold(0.001, 0)


def _log_e_paths(rng: Any, shares: list[float], null: list[float], sims: int, looks: int,
                 per_look: int, k: float) -> Any:  # fmt: skip
    counts = rng.multinomial(per_look, shares, size=(sims, looks)).cumsum(axis=1)
    prior = k * np.asarray(null)
    total = counts.sum(axis=-1)
    terms = special.gammaln(prior + counts) - special.gammaln(prior) - counts * np.log(null)
    return special.gammaln(k) - special.gammaln(k + total) + terms.sum(axis=-1)


@pytest.mark.parametrize("null", [[0.5, 0.5], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.25, 0.25]])
def test_healthy_experiments_are_flagged_at_most_at_the_threshold_however_often_one_looks(
    null: list[float],
) -> None:
    """Ville's inequality: P(ever flagged) <= threshold. A chi-square re-run at every look
    is far above it (the issue's 11-34 % at 0.001); here at threshold 0.05 for a visible rate."""
    rng = np.random.default_rng(20221204)
    sims, threshold = 4_000, 0.05
    paths = _log_e_paths(rng, null, null, sims, looks=200, per_look=250, k=DEFAULT_CONCENTRATION)
    flagged = int((paths.max(axis=1) >= math.log(1 / threshold)).sum())
    assert wilson(flagged, sims)[1] <= threshold + 2.6 * math.sqrt(threshold * 0.95 / sims)
    counts = rng.multinomial(250 * 200, null, size=400)
    naive = [srm_check(list(c), null, 0.05).flagged for c in counts]
    assert 0.02 < np.mean(naive) < 0.09  # the single look is a valid test too


def test_a_49_51_split_is_found_within_100000_units() -> None:
    """The target: 99 % detection at p <= 0.001 within 100,000 units, looking every 100 units
    (about a look a minute at 150,000 units a day). With looks every 1,000 units it is about
    98.7 %; the test is consistent with 99 % when its interval's upper end reaches it."""
    rng = np.random.default_rng(7)
    sims = 3_000
    paths = _log_e_paths(rng, [0.49, 0.51], [0.5, 0.5], sims, 1_000, 100, DEFAULT_CONCENTRATION)
    found = int((paths.max(axis=1) >= math.log(1_000)).sum())
    assert wilson(found, sims)[1] >= 0.99
