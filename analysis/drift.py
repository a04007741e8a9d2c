"""Distribution drift between two fixed-bin histograms: PSI, Kolmogorov-Smirnov, Wasserstein.

Both histograms share the same bin edges (set once per model from its reference), plus one
bin below the first edge and one above the last, so values that leave the reference range
count as drift too. Every measure is an *effect size* computed on the sketches, never a
p-value: with millions of rows per hour a test of "identical distributions" rejects for
shifts nobody cares about, and checking it every hour inflates false alarms without bound.
A drift alarm is a threshold on the effect size held for several consecutive windows
(``service/decisions/drift.py``; ``docs/statistics.md`` explains the choice).

References
----------
Siddiqi, N. (2006). *Credit Risk Scorecards*, Wiley, ch. 8: the population stability index
    :math:`\\sum_i (p_i - q_i) \\ln(p_i / q_i)`, read as < 0.1 stable, 0.1-0.25 some shift,
    > 0.25 a major shift.
Yurdakul, B. (2018). *Statistical properties of population stability index*, PhD thesis,
    Western Michigan University: PSI is the symmetrised Kullback-Leibler divergence
    :math:`KL(p \\| q) + KL(q \\| p)` (eq. 2.2).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special, stats

__all__ = [
    "DriftDistance", "distance", "distance_rows", "distances", "ks_distance", "psi", "rebin",
    "wasserstein",
]  # fmt: skip

PSI_FLOOR = 1e-4
"""Share given to an empty bin (as in Siddiqi's worked tables), so PSI stays finite."""


def _shares(counts: Sequence[float]) -> np.ndarray:
    values = np.asarray(counts, dtype=float)
    if values.ndim != 1 or values.size < 2:
        raise ValueError("a histogram needs at least two bins")
    if np.any(values < 0) or not np.all(np.isfinite(values)):
        raise ValueError("bin counts must be finite and non-negative")
    total = values.sum()
    if total <= 0:
        raise ValueError("an empty histogram has no distribution")
    shares: np.ndarray = values / total
    return shares


def psi(reference: Sequence[float], current: Sequence[float]) -> float:
    """Population stability index of ``current`` against ``reference`` (same bins).

    Empty bins get the share ``PSI_FLOOR`` (both histograms are renormalised after).
    """
    p, q = _shares(reference), _shares(current)
    if p.size != q.size:
        raise ValueError("both histograms need the same bins")
    p = np.maximum(p, PSI_FLOOR)
    q = np.maximum(q, PSI_FLOOR)
    p, q = p / p.sum(), q / q.sum()
    return float(np.sum(special.rel_entr(q, p) + special.rel_entr(p, q)))


def ks_distance(reference: Sequence[float], current: Sequence[float]) -> float:
    """Largest gap between the two cumulative distributions at the bin edges (0 to 1)."""
    p, q = _shares(reference), _shares(current)
    if p.size != q.size:
        raise ValueError("both histograms need the same bins")
    return float(np.max(np.abs(np.cumsum(p) - np.cumsum(q))))


def wasserstein(
    reference: Sequence[float], current: Sequence[float], positions: Sequence[float] | np.ndarray
) -> float:
    """Earth mover's distance with each bin's mass at ``positions`` (in the feature's units)."""
    p, q = _shares(reference), _shares(current)
    where = np.asarray(positions, dtype=float)
    if not p.size == q.size == where.size:
        raise ValueError("both histograms and the positions need the same bins")
    return float(stats.wasserstein_distance(where, where, p, q))


def bin_positions(edges: Sequence[float]) -> np.ndarray:
    """Where each bin's mass sits: the outer bins at the outer edges, the others at midpoints."""
    e = np.asarray(edges, dtype=float)
    return np.concatenate([[e[0]], (e[:-1] + e[1:]) / 2, [e[-1]]])


def rebin(
    edges: Sequence[float], histogram: Sequence[float], target_edges: Sequence[float]
) -> np.ndarray:
    """A (below, bins..., above) histogram over ``edges`` moved onto ``target_edges``.

    Two models binned on different edges (each its own reference profile's quantiles) are
    compared on one of them. Mass is taken as uniform within each bin (the usual linear
    interpolation of a histogram's CDF), and what fell below the first edge or above the last
    as sitting at that edge, since nothing is known of how far out it lies. Equal edges give
    the histogram back unchanged; the total is kept.
    """
    e = np.asarray(edges, dtype=float)
    h = np.asarray(histogram, dtype=float)
    t = np.asarray(target_edges, dtype=float)
    if h.shape != (e.size + 1,) or e.size < 2 or t.size < 2:
        raise ValueError("a histogram over n edges has n + 1 counts (below, bins, above)")
    if np.array_equal(e, t):
        return h
    total = h.sum()
    at_edges = np.concatenate([[h[0]], h[0] + np.cumsum(h[1:-1])])  # mass below each edge
    cdf = np.interp(t, e, at_edges, left=0.0, right=total - h[-1])
    cdf[t > e[-1]] = total  # the mass above the last source edge sits at that edge
    return np.diff(np.concatenate([[0.0], cdf, [total]]))


@dataclass(frozen=True)
class DriftDistance:
    """How far ``current`` is from ``reference`` on one feature, by every measure."""

    psi: float
    ks: float
    wasserstein: float


def distances(
    edges: Sequence[float], reference: Sequence[float], current: Sequence[float]
) -> DriftDistance:
    """All three measures for histograms laid out as (below, bins..., above) over ``edges``."""
    return DriftDistance(
        psi(reference, current),
        ks_distance(reference, current),
        wasserstein(reference, current, bin_positions(edges)),
    )


def distance(
    measure: str, edges: Sequence[float], reference: Sequence[float], current: Sequence[float]
) -> float:
    """One measure (``psi``, ``ks`` or ``wasserstein``) of ``distances``, computing only it."""
    if measure == "psi":
        return psi(reference, current)
    if measure == "ks":
        return ks_distance(reference, current)
    if measure == "wasserstein":
        return wasserstein(reference, current, bin_positions(edges))
    raise ValueError(f"unknown drift measure {measure!r}")


def distance_rows(
    measure: str,
    edges: Sequence[Sequence[float]],
    reference: Sequence[Sequence[float]],
    current: Sequence[Sequence[float]],
) -> np.ndarray:
    """``distance`` for many histograms at once (one per row, all with the same bin count).

    PSI and KS are computed for all rows in a few array operations (a drift check compares
    dozens of columns per window); Wasserstein goes row by row through scipy.
    """
    p = np.asarray(reference, dtype=float)
    q = np.asarray(current, dtype=float)
    if p.shape != q.shape or p.ndim != 2 or p.shape[1] < 2:
        raise ValueError("both need one histogram of at least two bins per row, alike")
    if np.any(p < 0) or np.any(q < 0) or not (np.all(np.isfinite(p)) and np.all(np.isfinite(q))):
        raise ValueError("bin counts must be finite and non-negative")
    p_total, q_total = p.sum(axis=1, keepdims=True), q.sum(axis=1, keepdims=True)
    if np.any(p_total <= 0) or np.any(q_total <= 0):
        raise ValueError("an empty histogram has no distribution")
    p, q = p / p_total, q / q_total
    if measure == "psi":
        p, q = np.maximum(p, PSI_FLOOR), np.maximum(q, PSI_FLOOR)
        p, q = p / p.sum(axis=1, keepdims=True), q / q.sum(axis=1, keepdims=True)
        found: np.ndarray = np.sum(special.rel_entr(q, p) + special.rel_entr(p, q), axis=1)
        return found
    if measure == "ks":
        gaps: np.ndarray = np.max(np.abs(np.cumsum(p, axis=1) - np.cumsum(q, axis=1)), axis=1)
        return gaps
    if measure == "wasserstein":
        return np.array(
            [wasserstein(a, b, bin_positions(e)) for a, b, e in zip(p, q, edges, strict=True)]
        )
    raise ValueError(f"unknown drift measure {measure!r}")
