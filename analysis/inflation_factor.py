"""Inflation factors: how much larger a group-sequential design must be than a fixed one.

Stopping early is paid for with a larger maximum sample size. For a design with
boundaries b_1..b_K at information fractions t_1..t_K, the drift delta = theta sqrt(I_max)
that gives the requested power through the upper boundary is found by root-finding on
the exact crossing probability (:func:`analysis.recursive_integration.crossing_probabilities`);
a fixed design needs drift z_{1-alpha/2} + z_{1-beta} (z_{1-alpha} one-sided), and the
inflation factor is the squared ratio of the two (Jennison & Turnbull 2000, "Group Sequential Methods with
Applications to Clinical Trials", section 2.5 and chapter 7; rpact's ``inflationFactor``).
Multiply a fixed plan by it with :func:`analysis.planning.inflate`.
"""

from __future__ import annotations

from collections.abc import Sequence

from scipy import optimize, special

from analysis import group_sequential
from analysis.mixture_tuning import optimal_variance_ratio
from analysis.normal_mixture import two_sided_boundary_z
from analysis.validation import check_probability


def sequential_inflation_factor(
    information_fractions: Sequence[float],
    *,
    alpha: float = 0.05,
    power: float = 0.8,
    spending: str = "obf",
    two_sided: bool = True,
    gamma: float | None = None,
) -> float:
    """Return I_max / I_fixed for an error-spending design with the given looks.

    The drift delta = theta sqrt(I_max) that gives the requested probability of crossing
    the upper boundary is found by root-finding on the recursive-integration power; the
    factor is (delta / (z_{1-alpha/2} + z_{1-beta}))^2 (Jennison & Turnbull 2000, section
    2.5 and chapter 7; rpact's ``inflationFactor``). Fractions must end at 1.
    """
    fractions = [float(t) for t in information_fractions]
    if not fractions or fractions[-1] != 1.0:
        raise ValueError("information fractions of a plan must end at 1")
    bounds = group_sequential.spending_boundaries(fractions, alpha, spending, two_sided, gamma)
    return _inflation(fractions, bounds, alpha, power, two_sided)


def classic_inflation_factor(
    k: int, *, alpha: float = 0.05, power: float = 0.8, kind: str = "obf", two_sided: bool = True
) -> float:
    """Return R_P(K, alpha, beta) or R_B(K, alpha, beta) of a classic design.

    The ratio of the maximum sample size of a Pocock or O'Brien-Fleming design with K
    equally spaced looks to the fixed sample size (Jennison & Turnbull 2000, Tables 2.2
    and 2.4).
    """
    bounds = group_sequential.classic_boundaries(k, alpha, kind, two_sided)
    fractions = [(look + 1) / k for look in range(k)]
    return _inflation(fractions, bounds, alpha, power, two_sided)


def _inflation(
    fractions: list[float], bounds: list[float], alpha: float, power: float, two_sided: bool
) -> float:
    """Solve the drift giving ``power`` through the upper boundary; return the size ratio."""
    check_probability("power", power)
    side_alpha = alpha / 2.0 if two_sided else alpha
    if power <= side_alpha:
        raise ValueError("power must exceed the one-sided type I error")
    fixed_drift = float(special.ndtri(power) - special.ndtri(side_alpha))
    lower = [-b for b in bounds] if two_sided else None

    def shortfall(drift: float) -> float:
        crossing = group_sequential.crossing_probabilities(fractions, bounds, lower, drift)
        return crossing.upper_total - power

    drift = optimize.brentq(shortfall, 0.0, 3.0 * fixed_drift + 3.0, xtol=1e-10)
    return float((drift / fixed_drift) ** 2)


def mixture_inflation_factor(alpha: float = 0.05, power: float = 0.8) -> float:
    """Return units needed by an always-valid mixture test over the fixed design's, at ``power``.

    The mSPRT and the confidence sequence with ``tau2 / V`` optimal at the planned size
    (x* = :func:`analysis.mixture_tuning.optimal_variance_ratio`) reject at the planned size
    when |Z| exceeds b = :func:`analysis.normal_mixture.two_sided_boundary_z` (x*, alpha)
    (Johari, Pekelis & Walsh 2022; Waudby-Smith et al. 2024). Asking that final look alone
    for the power gives the closed form

        R = ((b + z_{1-beta}) / (z_{1-alpha/2} + z_{1-beta}))^2,

    a slight overestimate, since an experiment may also cross at an earlier look (so the
    plan delivers at least ``power``). About 1.9 at alpha = 0.05 and power 0.8.
    """
    check_probability("alpha", alpha)
    check_probability("power", power)
    boundary = float(two_sided_boundary_z(optimal_variance_ratio(alpha), alpha))
    z_power = float(special.ndtri(power))
    return ((boundary + z_power) / (float(-special.ndtri(alpha / 2.0)) + z_power)) ** 2
