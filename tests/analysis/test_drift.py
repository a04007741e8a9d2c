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


def test_rebin_keeps_equal_edges_and_the_total_and_moves_outer_mass_to_the_edge() -> None:
    from analysis.drift import rebin

    edges, histogram = [0.0, 1.0, 2.0], [3.0, 4.0, 6.0, 2.0]
    assert_allclose(rebin(edges, histogram, edges), histogram)
    # Uniform within [0, 1) and [1, 2): half of each bin on either side of 0.5 and 1.5; the
    # 3 below 0 and 2 above 2 sit at 0 and 2, so inside the target's outer bins.
    assert_allclose(rebin(edges, histogram, [-1.0, 0.5, 1.5, 3.0]), [0.0, 5.0, 5.0, 5.0, 0.0])
    assert_allclose(rebin(edges, histogram, [0.5, 1.0]), [5.0, 2.0, 8.0])
    with pytest.raises(ValueError, match="n \\+ 1 counts"):
        rebin(edges, [1.0, 2.0], edges)


def test_rebinned_histograms_of_one_distribution_agree_and_of_shifted_ones_do_not() -> None:
    from analysis.drift import psi, rebin

    rng = np.random.default_rng(3)
    reference = rng.normal(size=20_000)
    fine = np.unique(np.quantile(reference, np.linspace(0, 1, 33)))  # a profile's quantile bins
    coarse = np.concatenate([[-10.0], np.linspace(-1.0, 1.0, 25), [10.0]])  # like the default's

    def histogram(values: np.ndarray, edges: np.ndarray) -> list[float]:
        inside, _ = np.histogram(values, bins=edges)
        below, above = (values < edges[0]).sum(), (values > edges[-1]).sum()
        return [float(below), *inside.astype(float), float(above)]

    same, shifted = rng.normal(size=20_000), rng.normal(loc=0.5, size=20_000)
    exact = histogram(same, coarse)
    moved = rebin(fine, histogram(same, fine), coarse)  # the finer one onto the coarser
    assert moved.sum() == pytest.approx(20_000)
    # The interpolated CDF errs by at most one source bin's mass (plus its outer mass) per edge.
    source = histogram(same, fine)
    bound = (max(source[1:-1]) + max(source[0], source[-1])) / 20_000
    gap = np.abs(np.cumsum(moved) - np.cumsum(exact)).max() / 20_000
    assert gap <= bound, (gap, bound)
    assert psi(exact, moved) < 0.05
    # A shift measures as it would on the common bins directly (a 0.5 sd shift: PSI about 0.24).
    moved_shift = psi(exact, rebin(fine, histogram(shifted, fine), coarse))
    assert moved_shift == pytest.approx(psi(exact, histogram(shifted, coarse)), rel=0.1)
    assert moved_shift > 10 * psi(exact, moved)
