"""Always-valid quantile bounds from histograms (Howard & Ramdas 2022): coverage at every look."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from analysis.quantile_sequence import quantile_bounds

EDGES = tuple(0.01 * 10 ** (i / 20) for i in range(141))  # the service's latency bins


def binned(values: np.ndarray) -> list[int]:
    return list(np.bincount(np.searchsorted(EDGES, values, side="right"), minlength=len(EDGES) + 1))


def test_bounds_are_bin_edges_around_the_empirical_quantile() -> None:
    rng = np.random.default_rng(0)
    values = rng.lognormal(math.log(5.0), 0.5, 20_000)
    bounds = quantile_bounds(binned(values), EDGES, 0.99, 0.05)
    assert bounds.lower in EDGES and bounds.upper in EDGES and bounds.estimate in EDGES
    assert bounds.lower < np.quantile(values, 0.99) <= bounds.upper
    assert bounds.lower <= bounds.estimate <= bounds.upper


def test_no_data_bounds_nothing_and_bad_input_is_refused() -> None:
    empty = quantile_bounds([0] * (len(EDGES) + 1), EDGES, 0.99, 0.05)
    assert empty.estimate is None and empty.lower == 0.0 and math.isinf(empty.upper)
    with pytest.raises(ValueError, match="len\\(edges\\) \\+ 1"):
        quantile_bounds([1, 2], EDGES, 0.99, 0.05)
    with pytest.raises(ValueError, match="non-negative integers"):
        quantile_bounds([-1] + [0] * len(EDGES), EDGES, 0.99, 0.05)


def test_the_true_quantile_is_covered_at_every_look_with_probability_1_minus_alpha() -> None:
    """150 histories of 40 looks (125 to 5,000 observations): the bounds must hold at all
    looks at once; by simulation the miss rate stays under alpha plus its Monte-Carlo error."""
    rng = np.random.default_rng(22)
    alpha, sims, looks, per_look = 0.1, 150, 40, 125
    true_p99 = float(stats.lognorm(0.5, scale=5.0).ppf(0.99))
    bins = np.diff(stats.lognorm(0.5, scale=5.0).cdf(np.array([0.0, *EDGES, np.inf])))
    missed = 0
    for _ in range(sims):
        counts = rng.multinomial(per_look, bins, size=looks).cumsum(axis=0)
        for row in counts:
            bounds = quantile_bounds(list(row), EDGES, 0.99, alpha)
            if not bounds.lower <= true_p99 <= bounds.upper:
                missed += 1
                break
    assert missed / sims <= alpha + 2.6 * math.sqrt(alpha * (1 - alpha) / sims)
