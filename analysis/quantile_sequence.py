"""Confidence sequences for a quantile from binned data (histograms), valid at every look.

For a fixed quantile level p and a continuous distribution with p-quantile q_p, the
indicators 1{X_i < q_p} are Bernoulli(p). Howard & Ramdas (2022, "Sequential estimation of
quantiles with applications to A/B-testing and best-arm identification", Bernoulli 28(3),
section 2, fixed-quantile confidence sequence) turn any confidence sequence for that
Bernoulli mean into one for q_p: a value x can lie at or below q_p only if the count below
x is not implausibly high, and above q_p only if it is not implausibly low. Here the
Bernoulli sequence is tested with the beta-binomial mixture (a Dirichlet-multinomial with two
categories, as in :func:`analysis.srm.log_e_value`), a test martingale with mean 1 under p, so by
Ville's inequality the bounds hold simultaneously over all looks with probability 1 - alpha.

Only bin edges are used: the count below an edge is exact in a histogram, so the bounds
account for the bin width (an upper bound is an upper edge, a lower bound a lower edge) and
are never interpolated inside a bin.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special

from analysis.validation import check_probability, is_integer

QUANTILE_CONCENTRATION = 100.0
"""Beta(k p, k (1 - p)) prior of the mixture: k = 100, the default of Lindon & Malek's
reference implementation; its spread at p = 0.99 is about one point of the CDF."""


@dataclass(frozen=True)
class QuantileBounds:
    """Always-valid bounds on a quantile: ``lower <= q_p <= upper`` at every look w.p. 1 - alpha.

    ``lower`` is 0.0 when the data cannot exclude any value below, ``upper`` is infinite
    when they cannot exclude any value above; ``estimate`` is the upper edge of the bin
    that holds the empirical quantile.
    """

    estimate: float | None
    lower: float
    upper: float
    level: float
    alpha: float
    n: int


def quantile_bounds(
    counts: Sequence[int],
    edges: Sequence[float],
    level: float,
    alpha: float,
    concentration: float = QUANTILE_CONCENTRATION,
) -> QuantileBounds:
    """Return the always-valid bounds on the ``level`` quantile of binned observations.

    ``counts[i]`` is the number of observations in bin i: bin 0 below ``edges[0]``, bin i in
    ``[edges[i-1], edges[i])``, the last bin at or above ``edges[-1]`` (``len(counts) ==
    len(edges) + 1``). With C(e) the count below edge e and E(c) the mixture e-value of c
    successes in n Bernoulli(level) trials, the upper bound is the smallest edge with
    C(e) >= n level and E(C(e)) >= 1/alpha, the lower bound the largest edge with
    C(e) <= n level and E(C(e)) >= 1/alpha (Howard & Ramdas 2022, section 2).
    """
    check_probability("level", level)
    check_probability("alpha", alpha)
    if len(counts) != len(edges) + 1:
        raise ValueError(f"need len(edges) + 1 counts, got {len(counts)} for {len(edges)} edges")
    # Plain ints (the rollup's lists) skip the abstract-class check: it cost 80 % of a look
    # with a latency guardrail (700 bins, two arms, every analysis).
    whole = all(type(c) is int for c in counts) or all(is_integer(c) for c in counts)
    if not whole or min(counts, default=0) < 0:
        raise ValueError("counts must be non-negative integers")
    n = int(sum(counts))
    if n == 0:
        return QuantileBounds(None, 0.0, math.inf, level, alpha, 0)
    below = np.cumsum(np.asarray(counts[:-1], dtype=np.float64))
    # log_e_value of [below, n - below] against [level, 1 - level], for every edge at once.
    prior = concentration * np.array([level, 1.0 - level])
    evidence = (
        special.gammaln(concentration) - special.gammaln(concentration + n)
        + special.gammaln(prior[0] + below) - special.gammaln(prior[0])
        + special.gammaln(prior[1] + n - below) - special.gammaln(prior[1])
        - below * math.log(level) - (n - below) * math.log1p(-level)
    )  # fmt: skip
    implausible = evidence >= math.log(1.0 / alpha)
    expected = level * n
    too_few = np.flatnonzero(implausible & (below <= expected))
    too_many = np.flatnonzero(implausible & (below >= expected))
    reached = np.flatnonzero(below >= expected)
    return QuantileBounds(
        estimate=float(edges[reached[0]]) if reached.size else float(edges[-1]),
        lower=float(edges[too_few[-1]]) if too_few.size else 0.0,
        upper=float(edges[too_many[0]]) if too_many.size else math.inf,
        level=level,
        alpha=alpha,
        n=n,
    )
