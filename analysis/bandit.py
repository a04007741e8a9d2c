"""Thompson-sampling weights with floors, and a difference in means that adaptive weights keep unbiased.

Thompson sampling (Thompson 1933; Russo, Van Roy, Kazerouni, Osband & Wen, "A Tutorial on
Thompson Sampling", Foundations and Trends in ML 11(1), 2018, Sections 3 and 7.1) gives each
arm the posterior probability that it is the best one. abx re-weights traffic with those
probabilities at each analysis (batched Thompson sampling, never per request), after
reserving a floor for every arm: ``weight_i = floor_i + (1 - sum floors) * p_i``, so each
weight is at least its floor exactly and the weights sum to one.

Under weights that change over time, pooling every unit of an arm biases the difference in
means whenever outcomes drift (the arm that got more traffic late is compared on later
units: Simpson's paradox). Within one allocation period the weights were fixed and units
randomized by hash, so that period's difference in means is unbiased for the period's
effect. :func:`stratified_difference` combines the periods with weights proportional to
their units (a post-stratified estimator, Miratrix, Sekhon & Yu, JRSS-B 75(2), 2013,
eq. 3), unbiased for the traffic-weighted average effect and, since each period's weights
are fixed before its units arrive, a sum of martingale differences: the asymptotic
confidence sequences of :mod:`analysis.confidence_sequence` (Waudby-Smith et al. 2024,
which cover martingale-dependent data) apply to it. No randomness is drawn here: the
caller passes a seeded generator, so a re-weighting is reproducible from stored data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from analysis.sufficient_stats import SufficientStats

FloatArray = npt.NDArray[np.float64]

__all__ = [
    "StratifiedDifference",
    "StratifiedMeans",
    "beta_posterior_draws",
    "floored_weights",
    "normal_posterior_draws",
    "probability_best",
    "stratified_difference",
    "stratified_means",
]


def beta_posterior_draws(
    successes: Sequence[float],
    trials: Sequence[float],
    draws: int,
    rng: np.random.Generator,
    prior: tuple[float, float] = (1.0, 1.0),
) -> FloatArray:
    """Draw each arm's success rate from its Beta posterior: an array (draws, arms).

    Beta–Bernoulli conjugacy (Russo et al. 2018, Section 3, eq. 3.1): with a
    Beta(a, b) prior and s successes in n trials the posterior is Beta(a + s, b + n - s).
    """
    s = np.asarray(successes, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    if s.shape != n.shape or np.any(s < 0) or np.any(n < s):
        raise ValueError("successes must be >= 0 and at most the trials, arm by arm")
    a, b = prior
    return rng.beta(a + s, b + n - s, size=(draws, s.size))


def normal_posterior_draws(
    means: Sequence[float], variances_of_mean: Sequence[float], draws: int, rng: np.random.Generator
) -> FloatArray:
    """Draw each arm's mean from a normal posterior N(mean, variance of the mean): (draws, arms).

    The flat-prior posterior of a mean with plug-in variance (Russo et al. 2018,
    Section 7.1's Gaussian case), right for the sums abx keeps of continuous metrics.
    """
    mean = np.asarray(means, dtype=np.float64)
    variance = np.asarray(variances_of_mean, dtype=np.float64)
    if mean.shape != variance.shape or np.any(~np.isfinite(variance)) or np.any(variance < 0):
        raise ValueError("variances of the means must be finite and >= 0, one per arm")
    return mean + np.sqrt(variance) * rng.standard_normal(size=(draws, mean.size))


def probability_best(draws: FloatArray, higher_is_better: bool = True) -> FloatArray:
    """Each arm's share of the draws in which it is the best (ties split evenly)."""
    values = draws if higher_is_better else -draws
    best = values.max(axis=1, keepdims=True)
    winners = values == best
    return np.asarray((winners / winners.sum(axis=1, keepdims=True)).mean(axis=0))


def floored_weights(probabilities: Sequence[float], floors: Sequence[float]) -> tuple[float, ...]:
    """``floor_i + (1 - sum floors) * p_i``: every weight at least its floor, summing to one."""
    p = np.asarray(probabilities, dtype=np.float64)
    f = np.asarray(floors, dtype=np.float64)
    if p.shape != f.shape or np.any(p < 0) or np.any(f < 0):
        raise ValueError("one probability and one floor per arm, none negative")
    if not np.isclose(p.sum(), 1.0):
        raise ValueError(f"probabilities must sum to 1, they sum to {p.sum():.12g}")
    if f.sum() > 1.0 + 1e-12:
        raise ValueError(f"floors sum to {f.sum():.12g}, over 1")
    weights = f + (1.0 - f.sum()) * p / p.sum()
    return tuple(float(w) for w in weights)


@dataclass(frozen=True)
class StratifiedDifference:
    """Treatment minus control, combined over allocation periods by their units."""

    difference: float
    variance: float
    """Variance of ``difference``: sum over periods of (period share)^2 times its variance."""
    information_units: float
    """Sum over periods of ``2 / (1/n_control + 1/n_treatment)``: the balanced per-arm count
    with the same information, only growing as units arrive (the confidence sequence's time)."""
    periods_used: int
    units_left_out: int
    """Units of periods where an arm had fewer than two units (no variance yet)."""


def stratified_difference(
    periods: Sequence[tuple[SufficientStats, SufficientStats]],
) -> StratifiedDifference:
    """Combine per-period (control, treatment) statistics into one unbiased difference.

    ``D = sum_p (N_p / N) (mean_t,p - mean_c,p)`` and ``Var D = sum_p (N_p / N)^2
    (s2_t,p / n_t,p + s2_c,p / n_c,p)`` (Miratrix et al. 2013, eq. 3 and its plug-in
    variance), with ``N_p`` the period's units in the two arms. A period where either arm
    has fewer than two units has no variance and is left out; which periods those are
    depends on the hash split only, never on outcomes, so leaving them out biases nothing.
    """
    used = [(c, t) for c, t in periods if c.n >= 2 and t.n >= 2]
    left_out = sum(int(c.n + t.n) for c, t in periods if not (c.n >= 2 and t.n >= 2))
    if not used:
        raise ValueError("no allocation period has two units in both arms yet")
    total = sum(c.n + t.n for c, t in used)
    difference = variance = information_units = 0.0
    for control, treatment in used:
        share = (control.n + treatment.n) / total
        difference += share * (treatment.mean - control.mean)
        variance += share**2 * (treatment.variance_of_mean + control.variance_of_mean)
        information_units += 2.0 / (1.0 / control.n + 1.0 / treatment.n)
    return StratifiedDifference(difference, variance, information_units, len(used), left_out)


@dataclass(frozen=True)
class StratifiedMeans:
    """Each arm's mean weighted by the periods' units, with its variance (arms independent)."""

    control_mean: float
    control_variance_of_mean: float
    treatment_mean: float
    treatment_variance_of_mean: float
    information_units: float


def stratified_means(
    periods: Sequence[tuple[SufficientStats, SufficientStats]],
) -> StratifiedMeans:
    """``sum_p (N_p / N) mean_p`` for each arm (the two terms of :func:`stratified_difference`).

    A guardrail's relative harm is a ratio of these, with its delta-method variance
    (Deng, Knoblich & Lu 2018), as ``analysis.guardrails`` does for pooled sums.
    """
    used = [(c, t) for c, t in periods if c.n >= 2 and t.n >= 2]
    if not used:
        raise ValueError("no allocation period has two units in both arms yet")
    total = sum(c.n + t.n for c, t in used)
    means = [0.0, 0.0, 0.0, 0.0]
    information_units = 0.0
    for control, treatment in used:
        share = (control.n + treatment.n) / total
        means[0] += share * control.mean
        means[1] += share**2 * control.variance_of_mean
        means[2] += share * treatment.mean
        means[3] += share**2 * treatment.variance_of_mean
        information_units += 2.0 / (1.0 / control.n + 1.0 / treatment.n)
    return StratifiedMeans(means[0], means[1], means[2], means[3], information_units)
