"""Group-sequential boundaries: error spending and classic constant designs.

A group-sequential test looks at accumulating data K times and stops at the first look
whose z-statistic crosses a critical value. The critical values are chosen so that the
probability of *ever* crossing under H0 is alpha. That probability involves the joint
law of (Z_1, ..., Z_K), which for a difference of means or proportions is multivariate
normal with corr(Z_i, Z_j) = sqrt(t_i / t_j) for t_i <= t_j (Jennison & Turnbull 2000,
"Group Sequential Methods with Applications to Clinical Trials", section 3.1, the
canonical joint distribution). It is evaluated exactly (up to quadrature error below 1e-7)
by the recursive numerical integration of :mod:`analysis.recursive_integration`, not by
simulation.

Two families of boundaries are offered:

* spending boundaries (Lan & DeMets 1983): alpha is spent as a function of the
  information fraction (:mod:`analysis.alpha_spending`), so looks may be unplanned and
  unequally spaced; see :func:`spending_boundaries` and, for monitoring,
  :func:`boundary_at_look`;
* classic constant designs for K equally spaced looks (Pocock 1977; O'Brien & Fleming
  1979); see :func:`classic_boundaries` in :mod:`analysis.classic_designs`.

Two-sided tests are symmetric: alpha/2 is spent on each side, with the spending function
evaluated at alpha/2 (the convention of R's gsDesign ``test.type=2`` and ldbounds), so the
total type I error is alpha.

This module is the public face of group-sequential testing: it also re-exports
:func:`alpha_spent`, :func:`classic_boundaries`, :func:`crossing_probabilities` and their
constants and result type, so callers need only ``analysis.group_sequential``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import optimize, special

from analysis.alpha_spending import SPENDING_FUNCTIONS, alpha_spent
from analysis.classic_designs import CLASSIC_KINDS, classic_boundaries
from analysis.recursive_integration import (
    GRID_SIZE,
    CrossingProbabilities,
    FloatArray,
    SubDensity,
    crossing_probabilities,
    exit_probabilities,
    next_density,
)
from analysis.validation import check_increasing_positive, check_probability

__all__ = [
    "CLASSIC_KINDS",
    "GRID_SIZE",
    "SPENDING_FUNCTIONS",
    "Z_MAX",
    "CrossingProbabilities",
    "FloatArray",
    "LookBoundary",
    "alpha_spent",
    "boundary_at_look",
    "classic_boundaries",
    "crossing_probabilities",
    "spending_boundaries",
]

Z_MAX = 8.0
"""Largest critical value returned. A look whose alpha increment is below P(Z > 8) ~ 6e-16
gets this cap instead of +inf (ldbounds truncates at 8 in the same way)."""


@dataclass(frozen=True)
class LookBoundary:
    """The critical value for the current look of a spending-function design."""

    look_number: int
    information_fraction: float
    z_critical: float
    nominal_p_threshold: float
    alpha_spent_cumulative: float
    alpha_spent_this_look: float
    z_critical_by_look: tuple[float, ...]
    is_final: bool


def spending_boundaries(
    information_fractions: Sequence[float],
    alpha: float = 0.05,
    spending: str = "obf",
    two_sided: bool = True,
    gamma: float | None = None,
) -> list[float]:
    """Return z-scale critical values of a Lan-DeMets error-spending design.

    At look k the boundary b_k solves P(continue to k, cross at k | H0) =
    alpha(t_k) - alpha(t_{k-1}) (Lan & DeMets 1983; Jennison & Turnbull 2000, section
    7.2), the left side computed by recursive integration. Two-sided designs
    reject when |Z_k| >= b_k and spend alpha(t; alpha/2) on each side.

    Parameters
    ----------
    information_fractions : sequence of float
        Strictly increasing fractions in (0, 1], equally spaced or not. A last fraction
        below 1 gives the boundaries of the looks so far of a design planned up to 1.
    alpha : float
        Total type I error, in (0, 1).
    spending : {"obf", "pocock", "hsd"}
        Spending function, see :func:`alpha_spent`.
    two_sided : bool
        Symmetric two-sided test (default) or one-sided upper test with no lower boundary.
    gamma : float, optional
        Hwang-Shih-DeCani parameter, required for ``spending="hsd"``.

    Returns
    -------
    list of float
        One critical value per look, each at most :data:`Z_MAX`.
    """
    check_probability("alpha", alpha)
    fractions = _check_fractions(information_fractions)
    side_alpha = alpha / 2.0 if two_sided else alpha
    cumulative = [alpha_spent(t, side_alpha, spending, gamma) for t in fractions]
    return _solve_spending_boundaries(fractions, cumulative, two_sided)


def boundary_at_look(
    information_observed: Sequence[float],
    information_max: float,
    alpha: float = 0.05,
    spending: str = "obf",
    two_sided: bool = True,
    gamma: float | None = None,
    final: bool = False,
) -> LookBoundary:
    """Return the critical value for the latest look, re-spending at the actual fractions.

    Monitoring rarely happens at the planned fractions. Because a spending-function
    boundary at look k depends only on t_1..t_k (Lan & DeMets 1983), the boundary for the
    current look is found by recomputing all boundaries at the fractions actually observed
    (information, e.g. sample size, at every look so far divided by the planned maximum),
    which reproduces the boundaries used at the earlier looks.

    Parameters
    ----------
    information_observed : sequence of float
        Information (e.g. units analysed) at every look so far, strictly increasing and
        positive; the last entry is the current look.
    information_max : float
        Planned maximum information (e.g. the design's maximum sample size).
    alpha, spending, two_sided, gamma
        As in :func:`spending_boundaries`.
    final : bool
        Declare this look the last one: all remaining alpha is spent even if the
        information fraction is below 1. A fraction >= 1 is always final; looks after
        a fraction >= 1 get :data:`Z_MAX`, since no alpha is left.

    Returns
    -------
    LookBoundary
        The current critical value, its nominal p-value threshold, alpha spent, and the
        critical values of all looks so far (for the audit log).
    """
    check_probability("alpha", alpha)
    if not (math.isfinite(information_max) and information_max > 0.0):
        raise ValueError(f"information_max must be finite and > 0, got {information_max}")
    information = check_increasing_positive("information_observed", information_observed)
    fractions = [value / information_max for value in information]
    side_alpha = alpha / 2.0 if two_sided else alpha
    spending_times = list(fractions)
    if final:
        spending_times[-1] = 1.0
    cumulative = [alpha_spent(t, side_alpha, spending, gamma) for t in spending_times]
    bounds = _solve_spending_boundaries(fractions, cumulative, two_sided)
    sides = 2.0 if two_sided else 1.0
    previous = cumulative[-2] if len(cumulative) > 1 else 0.0
    z_critical = bounds[-1]
    return LookBoundary(
        look_number=len(bounds),
        information_fraction=fractions[-1],
        z_critical=z_critical,
        nominal_p_threshold=float(sides * special.ndtr(-z_critical)),
        alpha_spent_cumulative=sides * cumulative[-1],
        alpha_spent_this_look=sides * max(cumulative[-1] - previous, 0.0),
        z_critical_by_look=tuple(bounds),
        is_final=final or fractions[-1] >= 1.0,
    )


def _solve_spending_boundaries(
    fractions: Sequence[float], cumulative_per_side: Sequence[float], two_sided: bool
) -> list[float]:
    """Solve each look's boundary so that its crossing probability equals its increment."""
    density: SubDensity | None = None
    bounds: list[float] = []
    spent_before = 0.0
    for t, spent in zip(fractions, cumulative_per_side, strict=True):
        increment = max(spent - spent_before, 0.0) * (2.0 if two_sided else 1.0)
        spent_before = max(spent, spent_before)
        bound = _solve_look(density, t, increment, two_sided)
        bounds.append(bound)
        density = next_density(density, t, -bound if two_sided else -math.inf, bound, 0.0)
    return bounds


def _solve_look(
    density: SubDensity | None, fraction: float, target: float, two_sided: bool
) -> float:
    """Return the critical value whose H0 crossing probability at this look is ``target``."""

    def crossing(bound: float) -> float:
        lower = -bound if two_sided else -math.inf
        up, down = exit_probabilities(density, fraction, lower, bound, 0.0)
        return up + down

    if crossing(Z_MAX) >= target:
        return Z_MAX
    low = 0.0 if two_sided else -Z_MAX
    if crossing(low) <= target:  # cannot happen for alpha < 1; kept as a guard
        return low
    return float(optimize.brentq(lambda b: crossing(b) - target, low, Z_MAX, xtol=1e-12))


def _check_fractions(information_fractions: Sequence[float]) -> list[float]:
    fractions = check_increasing_positive("information fractions", information_fractions)
    if fractions[-1] > 1.0:
        raise ValueError(f"information fractions must lie in (0, 1], got {fractions}")
    return fractions
