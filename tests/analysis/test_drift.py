"""Drift measures on histograms, against their definitions computed independently."""

from __future__ import annotations

import math

import numpy as np
import pytest
from numpy.testing import assert_allclose
from scipy import stats

from analysis.drift import (
    bin_positions,
    distance,
    distance_rows,
    distances,
    ks_distance,
    psi,
    wasserstein,
)


def test_psi_matches_a_worked_example() -> None:
    # Two 4-bin distributions: PSI = sum (q - p) ln(q / p), term by term.
    p, q = [0.25, 0.25, 0.25, 0.25], [0.10, 0.20, 0.30, 0.40]
    expected = sum((b - a) * math.log(b / a) for a, b in zip(p, q, strict=True))
    assert_allclose(psi(p, q), expected, rtol=1e-12)
    assert_allclose(expected, 0.22822, rtol=1e-4)  # by hand: 0.1375 + 0.0112 + 0.0091 + 0.0705
    assert psi(p, p) == 0.0
    assert_allclose(psi(p, q), psi(q, p))  # symmetric
    assert psi([100, 0], [0, 100]) > 10  # empty bins: finite, and large


def test_ks_and_wasserstein_equal_scipy_on_samples_at_the_bin_positions() -> None:
    rng = np.random.default_rng(3)
    edges = np.linspace(0.0, 1.0, 11)
    positions = bin_positions(edges)
    a = rng.integers(0, 50, size=12).astype(float)
    b = rng.integers(0, 50, size=12).astype(float)
    sample_a = np.repeat(positions, a.astype(int))
    sample_b = np.repeat(positions, b.astype(int))
    assert_allclose(ks_distance(a, b), stats.ks_2samp(sample_a, sample_b).statistic, rtol=1e-12)
    assert_allclose(
        wasserstein(a, b, positions), stats.wasserstein_distance(sample_a, sample_b), rtol=1e-12
    )
    found = distances(edges, a, b)
    assert found.ks == ks_distance(a, b) and found.psi == psi(a, b)
    for measure in ("psi", "ks", "wasserstein"):
        assert distance(measure, edges, a, b) == getattr(found, measure)
        rows = distance_rows(measure, [edges, edges], [a, b], [b, a])
        assert_allclose(rows, [getattr(found, measure), distance(measure, edges, b, a)], rtol=1e-12)


@pytest.mark.parametrize(
    ("reference", "current"),
    [([1.0], [1.0]), ([0, 0], [1, 1]), ([1, -1], [1, 1]), ([1, 2], [1, 2, 3])],
)
def test_refuses_what_is_not_a_pair_of_histograms(
    reference: list[float], current: list[float]
) -> None:
    with pytest.raises(ValueError):
        psi(reference, current)
