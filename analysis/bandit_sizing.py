"""Sample size of a Thompson-sampling bandit's final comparison, for the weights it will run.

A bandit (:mod:`analysis.bandit`) does not keep its configured weights: under the
alternative it is planned for (one treatment better by the minimum detectable effect
delta, the others equal to the control) Thompson sampling moves traffic towards the better
arm, each arm kept at its floor. The comparison of that arm with the control is the
period-stratified difference of :func:`analysis.bandit.stratified_difference`, whose
variance after T units in all is

    Var D = sum_p (N_p / N)^2 (sigma_b^2 / n_b,p + sigma_c^2 / n_c,p),
    N_p = n_c,p + n_b,p,  N = sum_p N_p,                                          (1)

(Miratrix, Sekhon & Yu 2013, eq. 3). With n_k,p = w_k,p T / P (P periods of equal
traffic, w_k,p the weights in force), T Var D depends on the weights alone: a fixed design
at weights w has ``T Var D = sigma_b^2 / w_b + sigma_c^2 / w_c``, and the bandit's
weights are what (1) has to be averaged over.

Those weights are random (they follow the data), so :func:`allocation_paths` simulates
them: ``replicates`` seeded paths of the weights only, each period's sums drawn from the
normal approximation of the arms' outcomes, each re-weighting ``floor_k + (1 - sum
floors) P(arm k best)`` (:func:`analysis.bandit.floored_weights`' rule) with P(best)
computed for normal approximations of the posteriors by Gauss-Hermite quadrature
(Beta(1 + s, 1 + n - s) moments for a binary metric, N(mean, sigma^2 / n) otherwise:
Russo et al. 2018, sections 3 and 7.1) instead of the cycle's Monte Carlo draws, so one
path costs microseconds and the same seed gives the same answer.

:func:`bandit_sample_size` then finds the total T at which the replicates' mean power is
the target. A replicate's drift is ``theta_r = delta / sqrt(Var_r D)``; the always-valid
test reaches power ``beta`` at the drift ``sqrt(R) (z_{1-alpha/2} + z_beta)`` (R the
mixture inflation factor, :func:`analysis.inflation_factor.mixture_inflation_factor`),
and a replicate's power is taken as ``Phi(theta_r - sqrt(R) (z_{1-alpha/2} + z_beta) +
z_beta)``, exact at the target and the fixed test's shape around it. When the floors
leave nothing to move (they sum to one) every replicate has the configured weights and T
is the closed-form fixed design's (:func:`analysis.planning.sample_size_means` with
unequal variances, times R), which the tests check.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import optimize, special

from analysis.validation import check_positive, check_probability, check_weights

FloatArray = npt.NDArray[np.float64]

__all__ = [
    "DEFAULT_PERIODS",
    "DEFAULT_REPLICATES",
    "AllocationPaths",
    "BanditSampleSize",
    "allocation_paths",
    "bandit_sample_size",
    "normal_probability_best",
    "posterior",
]

DEFAULT_REPLICATES = 400
"""Simulated weight paths: the mean power's Monte-Carlo error is well under a point."""

DEFAULT_PERIODS = 24
"""Re-weightings over the planned traffic when the caller cannot say (an hourly move over a
day). The answer moves little with it: see docs/statistics.md, "Planning a bandit"."""

MAX_PERIODS = 500
QUADRATURE_NODES = 32
SEED = 20_260_101


@dataclass(frozen=True)
class AllocationPaths:
    """Simulated weights: ``weights[r, p, k]`` is arm k's weight in period p of path r."""

    weights: FloatArray
    share_by_arm: tuple[float, ...]
    """Each arm's units over all units, averaged over the paths (the units-weighted
    allocation over the horizon)."""
    variance_units: FloatArray
    """Per path, ``T Var D`` of (1) for the control (arm 0) and ``best``: the variance of
    the comparison times the total units (a fixed design's ``sigma_b^2/w_b + sigma_c^2/w_c``)."""


@dataclass(frozen=True)
class BanditSampleSize:
    """Total units a bandit needs for ``power`` in its control-vs-best comparison."""

    total_units: int
    units_by_arm: tuple[int, ...]
    """Expected units of each arm at ``total_units`` (the simulated allocation)."""
    share_by_arm: tuple[float, ...]
    fixed_total_units: int
    """The same comparison's need at the configured weights held fixed (what a plan that
    ignores the re-weighting gives), for contrast."""
    variance_ratio: float
    """Mean ``T Var D`` over the paths at ``total_units`` divided by the fixed design's."""
    power: float
    """Mean power over the paths at ``total_units`` (the target, up to rounding)."""
    periods: int
    replicates: int


def allocation_paths(
    means: Sequence[float],
    unit_variances: Sequence[float],
    initial_weights: Sequence[float],
    floors: Sequence[float],
    total_units: float,
    *,
    best: int,
    binary: bool,
    higher_is_better: bool = True,
    periods: int = DEFAULT_PERIODS,
    min_units: int = 100,
    replicates: int = DEFAULT_REPLICATES,
    seed: int = SEED,
) -> AllocationPaths:
    """Simulate Thompson sampling's weights over ``total_units`` split into equal periods.

    Arm 0 is the control. Period 0 runs at ``initial_weights``; after each period the
    weights become ``floor + (1 - sum floors) P(best)`` once every arm has ``min_units``
    (as ``service.decisions.bandit.reweigh``), else stay. Outcome sums of a period are
    ``n mean + sqrt(n variance) Z`` with ``Z`` standard normal from ``seed``: the same
    ``seed`` gives the same paths at every ``total_units`` (common random numbers, so the
    sample size's root-finding sees a smooth function).
    """
    mean, variance, start, floor = _check_arms(means, unit_variances, initial_weights, floors, best)
    arms = mean.size
    check_positive("total_units", total_units)
    if not (isinstance(periods, int) and 1 <= periods <= MAX_PERIODS):
        raise ValueError(f"periods must be an integer in [1, {MAX_PERIODS}], got {periods!r}")
    if not (isinstance(replicates, int) and replicates >= 1):
        raise ValueError(f"replicates must be an integer >= 1, got {replicates!r}")
    noise = np.random.default_rng(seed).standard_normal((replicates, periods, arms))
    nodes, node_weights = np.polynomial.hermite.hermgauss(QUADRATURE_NODES)
    sign = 1.0 if higher_is_better else -1.0
    per_period = float(total_units) / periods
    weights = np.empty((replicates, periods, arms))
    current = np.broadcast_to(start, (replicates, arms)).copy()
    units = np.zeros((replicates, arms))
    sums = np.zeros((replicates, arms))
    for period in range(periods):
        weights[:, period] = current
        arrived = per_period * current
        units += arrived
        sums += arrived * mean + np.sqrt(arrived * variance) * noise[:, period]
        if period == periods - 1 or units.min() < max(min_units, 2):
            continue
        location, scale = posterior(units, sums, variance, binary)
        best_probability = normal_probability_best(sign * location, scale, nodes, node_weights)
        current = floor + (1.0 - floor.sum()) * best_probability
    units_by_period = weights * per_period
    share = units_by_period.sum(axis=1) / float(total_units)
    control, treatment = units_by_period[:, :, 0], units_by_period[:, :, best]
    # A period where either arm has fewer than two units has no variance: the estimator
    # leaves it out (analysis.bandit.stratified_difference), and so does this sum.
    kept = (control >= 2.0) & (treatment >= 2.0)
    pair = np.where(kept, control + treatment, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        shares = pair / pair.sum(axis=1, keepdims=True)
        terms = shares**2 * (variance[best] / treatment + variance[0] / control)
    variance_of_difference = np.where(kept, terms, 0.0).sum(axis=1)
    variance_of_difference[~kept.any(axis=1)] = np.inf
    return AllocationPaths(
        weights,
        tuple(float(s) for s in share.mean(axis=0)),
        variance_of_difference * float(total_units),
    )


def _check_arms(
    means: Sequence[float],
    unit_variances: Sequence[float],
    initial_weights: Sequence[float],
    floors: Sequence[float],
    best: int,
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """The arms' inputs as arrays, refused with a message naming what is wrong."""
    mean = np.asarray(means, dtype=np.float64)
    variance = np.asarray(unit_variances, dtype=np.float64)
    start = np.asarray(initial_weights, dtype=np.float64)
    floor = np.asarray(floors, dtype=np.float64)
    arms = mean.size
    if arms < 2 or not (variance.size == start.size == floor.size == arms):
        raise ValueError(
            "means, unit_variances, initial_weights and floors need one entry per arm (>= 2)"
        )
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(variance)) and np.all(variance > 0)):
        raise ValueError("means must be finite and unit_variances finite and > 0")
    check_weights([float(w) for w in start])
    if not (np.all(np.isfinite(floor)) and np.all(floor >= 0) and floor.sum() <= 1.0 + 1e-12):
        raise ValueError(f"floors must be >= 0 and sum to at most 1, got {floor.tolist()}")
    if not (isinstance(best, int) and 0 < best < arms):
        raise ValueError(f"best must be a treatment's index (1 to {arms - 1}), got {best!r}")
    return mean, variance, start, floor


def posterior(
    units: FloatArray, sums: FloatArray, variance: FloatArray, binary: bool
) -> tuple[FloatArray, FloatArray]:
    """Location and scale of each arm's (normal-approximated) posterior."""
    if binary:
        successes = np.clip(sums, 0.0, units)
        a, b = 1.0 + successes, 1.0 + units - successes
        total = a + b
        return a / total, np.sqrt(a * b / (total**2 * (total + 1.0)))
    return sums / units, np.sqrt(variance / units)


def normal_probability_best(
    location: FloatArray,
    scale: FloatArray,
    nodes: FloatArray | None = None,
    node_weights: FloatArray | None = None,
) -> FloatArray:
    """P(arm k has the largest draw) for independent normals, per row, by Gauss-Hermite.

    ``P_k = E[prod_{j != k} Phi((X_k - m_j) / s_j)]``, ``X_k ~ N(m_k, s_k^2)``; the rows
    are renormalised to sum to one (the quadrature's error). ``nodes`` and
    ``node_weights``: ``numpy.polynomial.hermite.hermgauss(QUADRATURE_NODES)`` by default.
    """
    if nodes is None or node_weights is None:
        nodes, node_weights = np.polynomial.hermite.hermgauss(QUADRATURE_NODES)
    # x[r, k, q]: arm k's quadrature points; cdf[r, k, j, q] = Phi((x[r,k,q] - m_j) / s_j)
    x = location[:, :, None] + math.sqrt(2.0) * scale[:, :, None] * nodes[None, None, :]
    cdf = special.ndtr((x[:, :, None, :] - location[:, None, :, None]) / scale[:, None, :, None])
    arms = location.shape[1]
    diagonal = np.arange(arms)
    cdf[:, diagonal, diagonal, :] = 1.0
    probability = (cdf.prod(axis=2) * node_weights).sum(axis=2) / math.sqrt(math.pi)
    probability = np.clip(probability, 0.0, None)
    return np.asarray(probability / probability.sum(axis=1, keepdims=True))


def bandit_sample_size(
    means: Sequence[float],
    unit_variances: Sequence[float],
    initial_weights: Sequence[float],
    floors: Sequence[float],
    *,
    best: int,
    binary: bool,
    alpha: float,
    power: float,
    inflation_factor: float = 1.0,
    higher_is_better: bool = True,
    periods: int = DEFAULT_PERIODS,
    min_units: int = 100,
    replicates: int = DEFAULT_REPLICATES,
    seed: int = SEED,
) -> BanditSampleSize:
    """Total units for mean power ``power`` of the control-vs-``best`` comparison.

    ``means[best] - means[0]`` is the effect planned for, ``alpha`` the comparison's
    two-sided level (the Bonferroni share where there are several treatments) and
    ``inflation_factor`` the always-valid test's over the fixed one at that level and power.
    Each candidate T re-simulates the paths (:func:`allocation_paths`, same seed); T is
    found by Brent's method on the mean power, to within 0.1 %.
    """
    check_probability("alpha", alpha)
    check_probability("power", power)
    if not (math.isfinite(inflation_factor) and inflation_factor >= 1.0):
        raise ValueError(f"inflation_factor must be finite and >= 1, got {inflation_factor}")
    arrays = _check_arms(means, unit_variances, initial_weights, floors, best)
    mean, variance, start = (list(map(float, a)) for a in arrays[:3])
    delta = mean[best] - mean[0]
    if not (math.isfinite(delta) and delta != 0.0):
        raise ValueError("the best arm's mean must differ from the control's")
    if (delta > 0) != higher_is_better:
        raise ValueError("the planned effect must be an improvement in the metric's direction")
    z_power = float(special.ndtri(power))
    drift_needed = math.sqrt(inflation_factor) * (float(-special.ndtri(alpha / 2.0)) + z_power)
    offset = drift_needed - z_power
    fixed = variance[best] / start[best] + variance[0] / start[0]
    fixed_total = fixed * (drift_needed / delta) ** 2

    def mean_power(total: float) -> tuple[float, AllocationPaths]:
        paths = allocation_paths(
            mean, variance, initial_weights, floors, total, best=best, binary=binary,
            higher_is_better=higher_is_better, periods=periods, min_units=min_units,
            replicates=replicates, seed=seed,
        )  # fmt: skip
        drift = abs(delta) / np.sqrt(paths.variance_units / total)
        return float(special.ndtr(drift - offset).mean()), paths

    # Start where the mean variance at the fixed design's size says, then bracket the root
    # in steps of 10 %: the variance ratio moves slowly with T, so a step or two suffices.
    ratio = float(mean_power(fixed_total)[1].variance_units.mean()) / fixed
    low = high = fixed_total * ratio
    step = 1.1
    if mean_power(low)[0] > power:
        while mean_power(low / step)[0] > power:
            low /= step
            if low < 1e-9 * fixed_total:
                raise ValueError("no sample size is small enough: check the inputs")
        low, high = low / step, low
    else:
        for _ in range(200):
            if mean_power(high * step)[0] >= power:
                break
            high *= step
        else:
            raise ValueError("no sample size reaches the power: the floors starve the comparison")
        low, high = high, high * step
    total = optimize.brentq(lambda t: mean_power(t)[0] - power, low, high, xtol=1e-3 * low)
    reached, paths = mean_power(total)
    total_units = math.ceil(total * (1.0 - 1e-12))
    return BanditSampleSize(
        total_units,
        tuple(math.ceil(total_units * s * (1.0 - 1e-12)) for s in paths.share_by_arm),
        paths.share_by_arm,
        math.ceil(fixed_total * (1.0 - 1e-12)),
        float(paths.variance_units.mean()) / fixed,
        reached,
        periods,
        replicates,
    )
