"""Group-sequential boundaries: error spending and classic constant designs.

A group-sequential test looks at accumulating data K times and stops at the first look
whose z-statistic crosses a critical value. The critical values are chosen so that the
probability of *ever* crossing under H0 is alpha. That probability involves the joint
law of (Z_1, ..., Z_K), which for a difference of means or proportions is multivariate
normal with corr(Z_i, Z_j) = sqrt(t_i / t_j) for t_i <= t_j (Jennison & Turnbull 2000,
"Group Sequential Methods with Applications to Clinical Trials", section 3.1, the
canonical joint distribution). It is evaluated here exactly (up to quadrature error below 1e-7) by
the recursive numerical integration of Armitage, McPherson & Rowe (1969) in the grid form
of Jennison & Turnbull (2000), chapter 19.2, not by simulation.

Two families of boundaries are offered:

* spending boundaries (Lan & DeMets 1983): alpha is spent as a function of the
  information fraction, so looks may be unplanned and unequally spaced; see
  :func:`spending_boundaries` and, for monitoring, :func:`boundary_at_look`;
* classic constant designs for K equally spaced looks (Pocock 1977; O'Brien & Fleming
  1979); see :func:`classic_boundaries`.

Two-sided tests are symmetric: alpha/2 is spent on each side, with the spending function
evaluated at alpha/2 (the convention of R's gsDesign ``test.type=2`` and ldbounds), so the
total type I error is alpha.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import optimize, special

SPENDING_FUNCTIONS = ("obf", "pocock", "hsd")
CLASSIC_KINDS = ("obf", "pocock")
Z_MAX = 8.0
"""Largest critical value returned. A look whose alpha increment is below P(Z > 8) ~ 6e-16
gets this cap instead of +inf (ldbounds truncates at 8 in the same way)."""
GRID_SIZE = 32
"""Jennison & Turnbull's grid parameter r (ch. 19.2.1); r = 32 gives errors below 1e-7."""

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class CrossingProbabilities:
    """Probability of stopping at each look by crossing each boundary.

    ``upper_by_look[k]`` is P(no crossing before look k, Z_k >= upper_k); likewise
    ``lower_by_look[k]`` with Z_k <= lower_k.
    """

    upper_by_look: tuple[float, ...]
    lower_by_look: tuple[float, ...]

    @property
    def upper_total(self) -> float:
        """Probability of ever crossing the upper boundary."""
        return math.fsum(self.upper_by_look)

    @property
    def lower_total(self) -> float:
        """Probability of ever crossing the lower boundary."""
        return math.fsum(self.lower_by_look)

    @property
    def total(self) -> float:
        """Probability of stopping at any look through either boundary."""
        return self.upper_total + self.lower_total


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


def alpha_spent(
    information_fraction: float,
    alpha: float,
    spending: str = "obf",
    gamma: float | None = None,
) -> float:
    """Return the cumulative type I error spent by information fraction ``t``.

    Parameters
    ----------
    information_fraction : float
        t >= 0; values above 1 are treated as 1 (the whole alpha is spent).
    alpha : float
        Total error of this spending function, in (0, 1). For one side of a
        two-sided test pass alpha/2.
    spending : {"obf", "pocock", "hsd"}
        * "obf": Lan & DeMets (1983) O'Brien-Fleming type,
          alpha(t) = 2 - 2 Phi(z_{1-alpha/2} / sqrt(t)) (their alpha_1*; gsDesign ``sfLDOF``);
        * "pocock": Lan & DeMets (1983) Pocock type, alpha(t) = alpha ln(1 + (e - 1) t)
          (their alpha_2*);
        * "hsd": Hwang, Shih & DeCani (1990) family,
          alpha(t) = alpha (1 - exp(-gamma t)) / (1 - exp(-gamma)), and alpha t at gamma = 0.
    gamma : float, optional
        The HSD parameter (required for, and only for, "hsd"). gamma = -4 resembles
        O'Brien-Fleming, gamma = 1 resembles Pocock.

    Returns
    -------
    float
        Cumulative alpha spent, in [0, alpha].
    """
    _check_alpha(alpha)
    _check_spending(spending, gamma)
    if not (math.isfinite(information_fraction) and information_fraction >= 0.0):
        raise ValueError(
            f"information fraction must be finite and >= 0, got {information_fraction}"
        )
    t = min(information_fraction, 1.0)
    if t == 0.0:
        return 0.0
    if spending == "obf":
        return float(2.0 * special.ndtr(special.ndtri(alpha / 2.0) / math.sqrt(t)))
    if spending == "pocock":
        return alpha * math.log1p((math.e - 1.0) * t)
    assert gamma is not None
    if gamma == 0.0:
        return alpha * t
    return alpha * math.expm1(-gamma * t) / math.expm1(-gamma)


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
    _check_alpha(alpha)
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
    _check_alpha(alpha)
    if not (math.isfinite(information_max) and information_max > 0.0):
        raise ValueError(f"information_max must be finite and > 0, got {information_max}")
    information = _check_increasing_positive(information_observed, "information_observed")
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


def classic_boundaries(
    k: int, alpha: float = 0.05, kind: str = "obf", two_sided: bool = True
) -> list[float]:
    """Return the critical values of a classic Pocock or O'Brien-Fleming design.

    For K equally spaced looks, Pocock (1977) uses a constant boundary C_P(K, alpha) and
    O'Brien & Fleming (1979) use C_B(K, alpha) sqrt(K / k) at look k (Jennison & Turnbull
    2000, sections 2.4 and 2.5; constants in their Tables 2.1 and 2.3). The constant is
    found by root-finding on the exact crossing probability under H0, computed by
    recursive integration.

    Parameters
    ----------
    k : int
        Number of equally spaced looks, >= 1.
    alpha : float
        Total type I error, in (0, 1).
    kind : {"obf", "pocock"}
        Boundary shape.
    two_sided : bool
        Symmetric two-sided test (reject when |Z_k| >= b_k) or one-sided upper test.

    Returns
    -------
    list of float
        The K critical values.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"number of looks k must be an integer >= 1, got {k!r}")
    _check_alpha(alpha)
    if kind not in CLASSIC_KINDS:
        raise ValueError(f"unknown classic boundary kind {kind!r}; expected one of {CLASSIC_KINDS}")
    side_alpha = alpha / 2.0 if two_sided else alpha
    fractions = [(look + 1) / k for look in range(k)]
    shape = [1.0 if kind == "pocock" else math.sqrt(k / (look + 1)) for look in range(k)]
    z_fixed = float(-special.ndtri(side_alpha))
    if k == 1:
        return [z_fixed]

    def excess_error(constant: float) -> float:
        upper = [constant * s for s in shape]
        lower = [-b for b in upper] if two_sided else None
        crossing = crossing_probabilities(fractions, upper, lower)
        return crossing.total - alpha

    # C lies between the fixed-sample value, which rejects too often, and the Bonferroni
    # value z_{1 - alpha/(2K)}, which rejects too rarely.
    bonferroni = float(-special.ndtri(side_alpha / k))
    constant = optimize.brentq(excess_error, z_fixed, bonferroni, xtol=1e-10)
    return [constant * s for s in shape]


def crossing_probabilities(
    information_fractions: Sequence[float],
    upper: Sequence[float],
    lower: Sequence[float] | None = None,
    drift: float = 0.0,
) -> CrossingProbabilities:
    """Return exit probabilities through each boundary at each look.

    The z-statistics follow the canonical joint distribution (Jennison & Turnbull 2000,
    section 3.1): E[Z_k] = drift sqrt(t_k), corr(Z_i, Z_j) = sqrt(t_i / t_j). ``drift`` is
    theta sqrt(I_max), the expected z at full information (0 under H0). Computed by the
    recursion of Jennison & Turnbull (2000), section 19.2.

    Parameters
    ----------
    information_fractions : sequence of float
        Strictly increasing, positive (may exceed 1 when information overruns the plan).
    upper : sequence of float
        Upper critical values, one per look.
    lower : sequence of float, optional
        Lower critical values (each below the upper one); None means no lower boundary.
    drift : float
        Expected z-statistic at information fraction 1.
    """
    fractions = _check_increasing_positive(information_fractions, "information_fractions")
    uppers = [float(b) for b in upper]
    lowers = [-math.inf] * len(uppers) if lower is None else [float(a) for a in lower]
    if len(uppers) != len(fractions) or len(lowers) != len(fractions):
        raise ValueError("need one boundary per information fraction")
    if any(math.isnan(b) for b in uppers + lowers) or not math.isfinite(drift):
        raise ValueError("boundaries and drift must not be NaN (drift must be finite)")
    if any(a >= b for a, b in zip(lowers, uppers, strict=True)):
        raise ValueError("each lower boundary must be below its upper boundary")
    density: _Density | None = None
    upper_exits: list[float] = []
    lower_exits: list[float] = []
    for t, a, b in zip(fractions, lowers, uppers, strict=True):
        up, down = _exit_probabilities(density, t, a, b, drift)
        upper_exits.append(up)
        lower_exits.append(down)
        density = _next_density(density, t, a, b, drift)
    return CrossingProbabilities(tuple(upper_exits), tuple(lower_exits))


# --- recursive numerical integration (Jennison & Turnbull 2000, ch. 19.2) ---------------


@dataclass(frozen=True)
class _Density:
    """Sub-density of Z_k on the continuation region, times Simpson weights."""

    fraction: float
    points: FloatArray
    weighted_density: FloatArray


def _grid(mean: float, lower: float, upper: float) -> tuple[FloatArray, FloatArray]:
    """Return Simpson nodes and weights on (lower, upper) for a normal centred at ``mean``.

    The 6r - 1 base points are dense near the mean and spread logarithmically into the
    tails (Jennison & Turnbull 2000, section 19.2.1); those outside (lower, upper) are
    dropped, the finite ends added, and interval midpoints inserted for Simpson's rule.
    """
    r = GRID_SIZE
    i = np.arange(1, 6 * r, dtype=np.float64)
    offsets = np.where(
        i < r,
        -3.0 - 4.0 * np.log(r / i),
        np.where(i <= 5 * r, -3.0 + 3.0 * (i - r) / (2 * r), 3.0 + 4.0 * np.log(r / (6 * r - i))),
    )
    base = mean + offsets
    start, stop = max(lower, base[0]), min(upper, base[-1])
    if start >= stop:  # the continuation region holds no probability worth a grid
        return np.array([stop]), np.zeros(1)
    ends = np.concatenate(([start], base[(base > start) & (base < stop)], [stop]))
    widths = np.diff(ends)
    points = np.empty(2 * ends.size - 1)
    points[0::2] = ends
    points[1::2] = ends[:-1] + widths / 2.0
    weights = np.zeros_like(points)
    weights[0:-1:2] += widths / 6.0
    weights[2::2] += widths / 6.0
    weights[1::2] = 4.0 * widths / 6.0
    return points, weights


def _exit_probabilities(
    density: _Density | None, fraction: float, lower: float, upper: float, drift: float
) -> tuple[float, float]:
    """Return P(continue to this look, Z >= upper) and P(continue, Z <= lower)."""
    if density is None:
        mean = drift * math.sqrt(fraction)
        return float(special.ndtr(mean - upper)), float(special.ndtr(lower - mean))
    step = fraction - density.fraction
    scale = math.sqrt(step)
    centre = density.points * math.sqrt(density.fraction) + drift * step
    root = math.sqrt(fraction)
    up = density.weighted_density @ special.ndtr((centre - upper * root) / scale)
    down = density.weighted_density @ special.ndtr((lower * root - centre) / scale)
    return float(up), float(down)


def _next_density(
    density: _Density | None, fraction: float, lower: float, upper: float, drift: float
) -> _Density:
    """Propagate the sub-density of Z to the continuation region of this look (J&T 19.2)."""
    root = math.sqrt(fraction)
    points, weights = _grid(drift * root, lower, upper)
    if density is None:
        values = np.exp(-0.5 * (points - drift * root) ** 2) / math.sqrt(2.0 * math.pi)
        return _Density(fraction, points, weights * values)
    step = fraction - density.fraction
    scale = math.sqrt(step)
    centre = density.points * math.sqrt(density.fraction) + drift * step
    standardized = (points[np.newaxis, :] * root - centre[:, np.newaxis]) / scale
    kernel = np.exp(-0.5 * standardized**2) * (root / (scale * math.sqrt(2.0 * math.pi)))
    return _Density(fraction, points, weights * (density.weighted_density @ kernel))


def _solve_spending_boundaries(
    fractions: Sequence[float], cumulative_per_side: Sequence[float], two_sided: bool
) -> list[float]:
    """Solve each look's boundary so that its crossing probability equals its increment."""
    density: _Density | None = None
    bounds: list[float] = []
    spent_before = 0.0
    for t, spent in zip(fractions, cumulative_per_side, strict=True):
        increment = max(spent - spent_before, 0.0) * (2.0 if two_sided else 1.0)
        spent_before = max(spent, spent_before)
        bound = _solve_look(density, t, increment, two_sided)
        bounds.append(bound)
        density = _next_density(density, t, -bound if two_sided else -math.inf, bound, 0.0)
    return bounds


def _solve_look(density: _Density | None, fraction: float, target: float, two_sided: bool) -> float:
    """Return the critical value whose H0 crossing probability at this look is ``target``."""

    def crossing(bound: float) -> float:
        lower = -bound if two_sided else -math.inf
        up, down = _exit_probabilities(density, fraction, lower, bound, 0.0)
        return up + down

    if crossing(Z_MAX) >= target:
        return Z_MAX
    low = 0.0 if two_sided else -Z_MAX
    if crossing(low) <= target:  # cannot happen for alpha < 1; kept as a guard
        return low
    return float(optimize.brentq(lambda b: crossing(b) - target, low, Z_MAX, xtol=1e-12))


# --- validation -------------------------------------------------------------------------


def _check_alpha(alpha: float) -> None:
    if not (isinstance(alpha, (int, float)) and 0.0 < alpha < 1.0):
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")


def _check_spending(spending: str, gamma: float | None) -> None:
    if spending not in SPENDING_FUNCTIONS:
        raise ValueError(
            f"unknown spending function {spending!r}; expected one of {SPENDING_FUNCTIONS}"
        )
    if spending == "hsd" and gamma is None:
        raise ValueError("gamma is required for the Hwang-Shih-DeCani ('hsd') spending function")
    if spending != "hsd" and gamma is not None:
        raise ValueError(f"gamma applies only to spending='hsd', not {spending!r}")
    if gamma is not None and not math.isfinite(gamma):
        raise ValueError(f"gamma must be finite, got {gamma}")


def _check_increasing_positive(values: Sequence[float], name: str) -> list[float]:
    numbers = [float(v) for v in values]
    if not numbers:
        raise ValueError(f"{name} must not be empty")
    if not all(math.isfinite(v) and v > 0.0 for v in numbers):
        raise ValueError(f"{name} must be finite and > 0, got {numbers}")
    if any(b <= a for a, b in itertools.pairwise(numbers)):
        raise ValueError(f"{name} must be strictly increasing, got {numbers}")
    return numbers


def _check_fractions(information_fractions: Sequence[float]) -> list[float]:
    fractions = _check_increasing_positive(information_fractions, "information fractions")
    if fractions[-1] > 1.0:
        raise ValueError(f"information fractions must lie in (0, 1], got {fractions}")
    return fractions
