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

import functools
from collections.abc import Sequence

from scipy import optimize, special

from analysis import group_sequential
from analysis.mixture_tuning import optimal_variance_ratio
from analysis.normal_mixture import two_sided_boundary_z
from analysis.validation import check_positive, check_probability


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


MIXTURE_LOOKS = 200
"""Equally spaced looks up to the planned size in :func:`mixture_inflation_factor`: a dense
grid standing in for the decisions' frequent looks (hourly in ``decisions_e2e.py``, which
reaches its planned sizes in some 200 looks; every minute in production, where the factor is
a little smaller still). Two-sided alpha = 0.05, power 0.8: 1.779 at 10 looks, 1.698 at 50,
1.675 at 100, 1.657 at 200; the step shrinks as 1/sqrt(K), towards about 1.62 for continuous
monitoring. Beyond some 200 looks the increments are too fine for the recursion's grid
(:data:`analysis.recursive_integration.GRID_SIZE`): far from the centre the kernel is
narrower than the grid's spacing, the error grows look by look (at alpha = 0.05 the lower
side's crossing probability passed 1 by drift 3.6 with 400 looks, and the root-finding met
NaN at 800), so the grid stops here and :func:`mixture_inflation_factor` answers more looks
with this one's factor (the bound is in its docstring)."""

MIXTURE_BOUNDARY_CAP = 8.0
"""Looks whose mixture boundary on |Z| exceeds this are left out of the recursion: early,
where ``x = x* t`` is small, the boundary is far out (|Z| > 11 at t = 0.05 for alpha = 0.05),
no path crosses there with probability worth counting (< 1e-14), and the recursion's grid
overflows on such boundaries."""


def mixture_inflation_factor(
    alpha: float = 0.05,
    power: float = 0.8,
    *,
    looks: int = MIXTURE_LOOKS,
    variance_ratio: float | None = None,
) -> float:
    """Return units needed by an always-valid mixture test over the fixed design's, at ``power``.

    The mSPRT and the confidence sequence with ``tau2 / V = x`` at the planned size (by
    default ``x* =`` :func:`analysis.mixture_tuning.optimal_variance_ratio` (alpha), what the
    decisions run; ``variance_ratio`` gives another ``x``) have at information fraction t the
    ratio ``x t`` (``tau2`` fixed, ``V`` shrinking as 1/t) and reject once |Z_t| reaches
    :func:`analysis.normal_mixture.two_sided_boundary_z` (x t, alpha), where the mixture
    likelihood ratio reaches 1/alpha (Johari, Pekelis & Walsh 2022; Waudby-Smith et al.
    2024). Under an effect of drift theta (the expected z at the planned size),
    ``Z_t = (B(t) + theta t) / sqrt(t)``, the canonical joint distribution of
    :mod:`analysis.recursive_integration`. The theta whose probability of crossing at ANY of
    ``looks`` equally spaced looks up to t = 1 is ``power`` is found by root-finding on the
    exact crossing probabilities (through the upper boundary, the effect's side; the lower
    one is kept in the recursion, as the two-sided test stops there too), and

        R = (theta / (z_{1-alpha/2} + z_{1-beta}))^2.

    About 1.66 at alpha = 0.05, power 0.8 and 200 looks (see :data:`MIXTURE_LOOKS`).
    ``looks=1`` asks the final look alone: :func:`final_look_mixture_inflation_factor`.

    More than :data:`MIXTURE_LOOKS` looks get the factor of :data:`MIXTURE_LOOKS`, where the
    recursion is still exact: a bound on the safe side, as more looks only add chances to
    cross (exactly so when the looks include the 200, at multiples of 200), and a close one,
    as no number of looks crosses more than continuous monitoring. At alpha = 0.05 and power
    0.8 the 200-look factor gives power 0.805 with 1,000 looks and 0.812 with 5,000 (seeded
    Monte Carlo of Brownian motion, 20,000 paths, +- 0.006), about a point of power more
    than asked; with 400 looks, where the recursion still holds at this level, the factor is
    1.645 against 1.657.
    """
    check_probability("alpha", alpha)
    check_probability("power", power)
    if not (isinstance(looks, int) and looks >= 1):
        raise ValueError(f"looks must be an integer >= 1, got {looks!r}")
    ratio = optimal_variance_ratio(alpha) if variance_ratio is None else variance_ratio
    check_positive("variance_ratio", ratio)
    return _mixture_inflation(float(alpha), float(power), min(looks, MIXTURE_LOOKS), float(ratio))


@functools.lru_cache(maxsize=64)
def _mixture_inflation(alpha: float, power: float, looks: int, ratio: float) -> float:
    """The root-finding of :func:`mixture_inflation_factor` (about a second at 200 looks),
    kept per process: ``abx validate`` and the replays plan the same few levels many times."""
    fractions, bounds = [], []
    for look in range(1, looks + 1):
        fraction = look / looks
        boundary = float(two_sided_boundary_z(ratio * fraction, alpha))
        if boundary <= MIXTURE_BOUNDARY_CAP or look == looks:
            fractions.append(fraction)
            bounds.append(boundary)
    return _inflation(fractions, bounds, alpha, power, two_sided=True)


def final_look_mixture_inflation_factor(
    alpha: float = 0.05, power: float = 0.8, *, variance_ratio: float | None = None
) -> float:
    """Return the mixture's inflation factor asking the final look alone for the power.

    With the boundary b = :func:`analysis.normal_mixture.two_sided_boundary_z` (x, alpha) at
    the planned size (``x = x*`` unless ``variance_ratio`` says otherwise), the closed form

        R = ((b + z_{1-beta}) / (z_{1-alpha/2} + z_{1-beta}))^2

    overstates the size: an experiment may cross at an earlier look. About 1.91 at alpha =
    0.05 and power 0.8 (against 1.66 for 200 looks, :func:`mixture_inflation_factor`); what
    ``abx plan`` used before, when the replays measured 0.85-0.88 power for a planned 0.80.
    """
    check_probability("alpha", alpha)
    check_probability("power", power)
    ratio = optimal_variance_ratio(alpha) if variance_ratio is None else variance_ratio
    check_positive("variance_ratio", ratio)
    boundary = float(two_sided_boundary_z(ratio, alpha))
    z_power = float(special.ndtri(power))
    return ((boundary + z_power) / (float(-special.ndtri(alpha / 2.0)) + z_power)) ** 2
