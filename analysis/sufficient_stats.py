"""Per-variant sufficient statistics of one metric, summable across time buckets.

Every estimator in ``analysis/`` needs only a handful of sums per variant:
the unit count, the sum of the metric and the sum of its squares, plus, for
CUPED, the sums of a pre-period covariate, of its square and of the product
covariate x metric. The service aggregates these in SQL per time bucket;
buckets (and shards) add up with :meth:`SufficientStats.merge`.

Binary, count and continuous metrics share one representation: for a 0/1
metric ``total_squares == total`` and the plug-in variance
``total_squares / n - mean**2`` is exactly ``p (1 - p)``.

Variances here are plug-in (maximum-likelihood, denominator ``n``): that is
what makes the binary case exact, and every sequential method in this
package is a large-sample method where ``n`` versus ``n - 1`` is immaterial.
:attr:`SufficientStats.sample_variance` gives the ``n - 1`` version.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from analysis.validation import check_finite, is_integer

# Relative slack for the Cauchy-Schwarz checks: sums computed in floating
# point (or by a database) can violate sum(x)^2 <= n sum(x^2) by rounding.
_ROUNDING_SLACK = 1e-9
# A variance below this fraction of the mean square is cancellation noise.
_CANCELLATION = 1e-12


@dataclass(frozen=True)
class SufficientStats:
    """Sums for one metric in one variant (optionally with a pre-period covariate).

    Attributes
    ----------
    n : int
        Number of units (exposed users), >= 0.
    total : float
        Sum of the metric over units.
    total_squares : float
        Sum of the squared metric over units.
    covariate_total, covariate_total_squares, covariate_cross_total : float or None
        Sum of the pre-period covariate x, of x**2 and of x * metric, for
        CUPED (Deng et al. 2013). All three are given or none is.
    """

    n: int
    total: float
    total_squares: float
    covariate_total: float | None = None
    covariate_total_squares: float | None = None
    covariate_cross_total: float | None = None

    def __post_init__(self) -> None:
        _check_count(self.n)
        _check_moments("metric", self.n, self.total, self.total_squares)
        covariate = (
            self.covariate_total,
            self.covariate_total_squares,
            self.covariate_cross_total,
        )
        if all(value is None for value in covariate):
            return
        if any(value is None for value in covariate):
            raise ValueError(
                "covariate sums must be given together: covariate_total, "
                "covariate_total_squares and covariate_cross_total"
            )
        assert self.covariate_total is not None
        assert self.covariate_total_squares is not None
        assert self.covariate_cross_total is not None
        _check_moments("covariate", self.n, self.covariate_total, self.covariate_total_squares)
        check_finite("covariate_cross_total", self.covariate_cross_total)
        bound = math.sqrt(self.total_squares * self.covariate_total_squares)
        if abs(self.covariate_cross_total) > bound * (1 + _ROUNDING_SLACK) + 1e-300:
            raise ValueError(
                "covariate_cross_total exceeds sqrt(total_squares * covariate_total_squares), "
                "which is impossible for real data (Cauchy-Schwarz)"
            )

    @classmethod
    def from_values(
        cls, values: npt.ArrayLike, covariates: npt.ArrayLike | None = None
    ) -> SufficientStats:
        """Build the sums from raw per-unit values (tests, demos, small samples)."""
        metric = np.asarray(values, dtype=np.float64)
        if metric.ndim != 1:
            raise ValueError("values must be one-dimensional")
        if covariates is None:
            return cls(len(metric), float(metric.sum()), float(metric @ metric))
        covariate = np.asarray(covariates, dtype=np.float64)
        if covariate.shape != metric.shape:
            raise ValueError("covariates must have the same length as values")
        return cls(
            len(metric),
            float(metric.sum()),
            float(metric @ metric),
            float(covariate.sum()),
            float(covariate @ covariate),
            float(covariate @ metric),
        )

    @classmethod
    def from_binary(cls, n: int, successes: int) -> SufficientStats:
        """Build the sums of a 0/1 metric from its unit and success counts."""
        _check_count(n)
        if not 0 <= successes <= n:
            raise ValueError(f"successes must lie in [0, n]; got {successes} with n={n}")
        return cls(n, float(successes), float(successes))

    @classmethod
    def combine(cls, buckets: Iterable[SufficientStats]) -> SufficientStats:
        """Sum any number of buckets (time buckets, shards) of one variant."""
        combined: SufficientStats | None = None
        for bucket in buckets:
            combined = bucket if combined is None else combined.merge(bucket)
        if combined is None:
            raise ValueError("combine needs at least one bucket")
        return combined

    def merge(self, other: SufficientStats) -> SufficientStats:
        """Return the statistics of the union of two disjoint sets of units."""
        if self.has_covariate != other.has_covariate:
            raise ValueError("cannot merge statistics with and without covariate sums")
        if not self.has_covariate:
            return SufficientStats(
                self.n + other.n,
                self.total + other.total,
                self.total_squares + other.total_squares,
            )
        return SufficientStats(
            self.n + other.n,
            self.total + other.total,
            self.total_squares + other.total_squares,
            _add(self.covariate_total, other.covariate_total),
            _add(self.covariate_total_squares, other.covariate_total_squares),
            _add(self.covariate_cross_total, other.covariate_cross_total),
        )

    def __add__(self, other: SufficientStats) -> SufficientStats:
        return self.merge(other)

    @property
    def has_covariate(self) -> bool:
        """Whether the pre-period covariate sums are present."""
        return self.covariate_total is not None

    @property
    def mean(self) -> float:
        """Sample mean of the metric (the conversion rate for a 0/1 metric)."""
        self._require_units()
        return self.total / self.n

    @property
    def variance(self) -> float:
        """Plug-in variance ``total_squares / n - mean**2``; ``p (1 - p)`` when binary."""
        self._require_units()
        mean_square = self.total_squares / self.n
        variance = mean_square - self.mean**2
        # For constant data cancellation leaves rounding noise of either sign;
        # report an exact zero so callers can detect a degenerate variant.
        return variance if variance > _CANCELLATION * mean_square else 0.0

    @property
    def sample_variance(self) -> float:
        """Unbiased variance (denominator ``n - 1``)."""
        if self.n < 2:
            raise ValueError("sample_variance needs n >= 2")
        return self.variance * self.n / (self.n - 1)

    @property
    def variance_of_mean(self) -> float:
        """Sampling variance of :attr:`mean`, ``variance / n``."""
        return self.variance / self.n

    def _require_units(self) -> None:
        if self.n == 0:
            raise ValueError("statistics of an empty variant (n == 0) are undefined")


def _check_count(n: int) -> None:
    if not is_integer(n):
        raise ValueError(f"n must be an integer; got {n!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0; got {n}")


def _check_moments(name: str, n: int, total: float, total_squares: float) -> None:
    check_finite(f"{name} total", total)
    check_finite(f"{name} total of squares", total_squares)
    if total_squares < 0:
        raise ValueError(f"{name} total of squares must be >= 0; got {total_squares}")
    if n == 0 and (total != 0 or total_squares != 0):
        raise ValueError(f"{name} sums must be 0 when n == 0")
    if total * total > n * total_squares * (1 + _ROUNDING_SLACK) + 1e-300:
        raise ValueError(
            f"{name} total**2 exceeds n * total of squares, which is impossible "
            "for real data (Cauchy-Schwarz)"
        )


def _add(left: float | None, right: float | None) -> float:
    assert left is not None and right is not None
    return left + right
