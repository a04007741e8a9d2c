"""Synthetic traffic for replayed experiments: each arm's running sums, as the rollup keeps them. Pure.

An arm's new units at each look get an outcome of the scenario's primary metric kind, and,
with guardrails, a refund (binary guardrail) and one ``/v1/predict`` answer each for the
model-health guardrails (a fallback flag and a latency, binned like the ``model_health``
rollup). The arm keeps only running sums, the numbers ``events.sums`` reads from
PostgreSQL, so a look costs the same at any cadence. Kinds of primary metric:

* ``binary``: a 10 % conversion rate;
* ``continuous``: heavy-tailed revenue, log-normal with median 20 and sigma 1 (a
  coefficient of variation of 1.31);
* ``ratio``: revenue per session, each unit with ``1 + Poisson(1)`` sessions, each session
  an order with probability 20 % of log-normal value (median 30, sigma 1.2); the primary is
  the ratio of the two per-unit totals (delta method, ``ratios.py``).

A treatment's ``lift`` multiplies its primary outcome (the revenue, for a ratio); guardrails
and model health are the same in every arm unless ``latency_slowdown`` is set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from analysis.ratio_metric import RatioCrossSums
from analysis.sufficient_stats import SufficientStats
from service.events import latency as latency_histogram
from service.events.sums import ModelHealth, RatioSums

PRIMARY = "primary"
NUMERATOR = "order_value"
DENOMINATOR = "sessions"
REFUNDS = "refund_rate"
BINARY_RATE = 0.10
REVENUE_MEDIAN, REVENUE_SIGMA = 20.0, 1.0
ORDER_RATE, ORDER_MEDIAN, ORDER_SIGMA = 0.20, 30.0, 1.2
REFUND_RATE = 0.02
FALLBACK_RATE = 0.01
LATENCY_MEDIAN_MS, LATENCY_SIGMA = 20.0, 0.5
EDGES = np.asarray(latency_histogram.EDGES)


@dataclass
class Sums:
    """Sum and sum of squares over units."""

    total: float = 0.0
    squares: float = 0.0

    def add(self, values: np.ndarray) -> None:
        self.total += float(values.sum())
        self.squares += float((values * values).sum())


@dataclass
class Arm:
    """One variant's running sums."""

    lift: float = 0.0
    latency_slowdown: float = 0.0
    """Relative increase of every latency (a true model-health harm)."""
    units: int = 0
    primary: Sums = field(default_factory=Sums)
    numerator: Sums = field(default_factory=Sums)
    denominator: Sums = field(default_factory=Sums)
    cross: float = 0.0
    refunds: int = 0
    fallbacks: int = 0
    latency_counts: np.ndarray = field(
        default_factory=lambda: np.zeros(latency_histogram.BIN_COUNT, dtype=np.int64)
    )

    def add(self, rng: np.random.Generator, metric: str, n: int, guardrails: bool) -> None:
        """``n`` new units with their outcomes (and predictions, with ``guardrails``)."""
        self.units += n
        if metric == "binary":
            successes = float(rng.binomial(n, BINARY_RATE * (1.0 + self.lift)))
            self.primary.total += successes
            self.primary.squares += successes
        elif metric == "continuous":
            revenue = rng.lognormal(math.log(REVENUE_MEDIAN), REVENUE_SIGMA, n)
            self.primary.add(revenue * (1.0 + self.lift))
        else:
            self._add_ratio(rng, n)
        if guardrails:
            self.refunds += int(rng.binomial(n, REFUND_RATE))
            self.fallbacks += int(rng.binomial(n, FALLBACK_RATE))
            latency = rng.lognormal(math.log(LATENCY_MEDIAN_MS), LATENCY_SIGMA, n)
            latency *= 1.0 + self.latency_slowdown
            bins = np.searchsorted(EDGES, latency, side="right")  # latency.bin_of, vectorised
            self.latency_counts += np.bincount(bins, minlength=latency_histogram.BIN_COUNT)

    def _add_ratio(self, rng: np.random.Generator, n: int) -> None:
        sessions = 1 + rng.poisson(1.0, n)
        orders = rng.binomial(sessions, ORDER_RATE)
        values = rng.lognormal(math.log(ORDER_MEDIAN), ORDER_SIGMA, int(orders.sum()))
        revenue = np.zeros(n)
        owner = np.repeat(np.arange(n), orders)  # which unit each order belongs to
        np.add.at(revenue, owner, values * (1.0 + self.lift))
        self.numerator.add(revenue)
        self.denominator.add(sessions.astype(np.float64))
        self.cross += float((revenue * sessions).sum())

    def stats(self, metric: str, guardrails: bool) -> dict[str, SufficientStats]:
        """The arm's sufficient statistics by metric name (ratios: see :meth:`ratio_sums`)."""
        found = {}
        if metric == "ratio":
            found[NUMERATOR] = SufficientStats(self.units, self.numerator.total,
                                               self.numerator.squares)  # fmt: skip
            found[DENOMINATOR] = SufficientStats(self.units, self.denominator.total,
                                                 self.denominator.squares)  # fmt: skip
        else:
            found[PRIMARY] = SufficientStats(self.units, self.primary.total, self.primary.squares)
        if guardrails:
            found[REFUNDS] = SufficientStats.from_binary(self.units, self.refunds)
        return found

    def ratio_sums(self) -> RatioSums:
        return RatioSums(
            SufficientStats(self.units, self.numerator.total, self.numerator.squares),
            SufficientStats(self.units, self.denominator.total, self.denominator.squares),
            RatioCrossSums(self.cross),
        )

    def health(self) -> ModelHealth:
        """What ``events.sums.model_health`` reads: one prediction per unit."""
        return ModelHealth(self.units, self.fallbacks, self.latency_counts.tolist())


def relative_sd(metric: str, rng: np.random.Generator, units: int = 1_000_000) -> float:
    """The primary's per-unit standard deviation over its mean (ratios: of the linearisation)."""
    if metric == "binary":
        return math.sqrt((1.0 - BINARY_RATE) / BINARY_RATE)
    if metric == "continuous":
        return math.sqrt(math.expm1(REVENUE_SIGMA**2))
    arm = Arm()
    arm._add_ratio(rng, units)
    ratio = arm.numerator.total / arm.denominator.total
    mean_y = arm.denominator.total / units
    residual = (arm.numerator.squares - 2 * ratio * arm.cross
                + ratio**2 * arm.denominator.squares) / units  # fmt: skip
    return math.sqrt(residual) / mean_y / ratio
