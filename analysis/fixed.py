"""Fixed-horizon tests and confidence intervals for treatment (b) versus control (a).

These are the single-look tests: valid when the data are analysed once, at the planned
sample size. Under repeated looks use :mod:`analysis.group_sequential` boundaries on the
same z-statistic. Differences, z and t are always treatment minus control (b - a), so a
positive value means the treatment has the higher rate or mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

from scipy import special, stats
from statsmodels.stats.proportion import confint_proportions_2indep, proportions_ztest

from analysis.validation import check_finite, check_integer, check_probability, is_integer


class ZTest(NamedTuple):
    """A z-statistic (b - a) with its two-sided p-value."""

    z: float
    p_value: float


class WelchTTest(NamedTuple):
    """A Welch t-statistic (b - a), its Welch-Satterthwaite degrees of freedom and p-value."""

    t: float
    degrees_of_freedom: float
    p_value: float


@dataclass(frozen=True)
class DifferenceEstimate:
    """Difference treatment minus control with its standard error and confidence interval."""

    difference: float
    standard_error: float
    ci_low: float
    ci_high: float
    confidence_level: float


def two_proportion_z(successes_a: int, n_a: int, successes_b: int, n_b: int) -> ZTest:
    """Test equal proportions with the pooled two-sample z-test.

    z = (p_b - p_a) / sqrt(p (1 - p) (1/n_a + 1/n_b)) with the pooled rate
    p = (x_a + x_b) / (n_a + n_b) (Fleiss, Levin & Paik 2003, "Statistical Methods for
    Rates and Proportions", 3rd ed., chapter 2, without continuity correction); two-sided
    p = 2 Phi(-|z|). Equals ``statsmodels.stats.proportion.proportions_ztest``.

    Raises
    ------
    ValueError
        For invalid counts, or when every unit in both arms has the same outcome (the
        pooled variance is zero and z is undefined).
    """
    _check_counts(successes_a, n_a, "a")
    _check_counts(successes_b, n_b, "b")
    if successes_a + successes_b in (0, n_a + n_b):
        raise ValueError("z-test undefined: all units in both arms have the same outcome")
    z, p_value = proportions_ztest([successes_b, successes_a], [n_b, n_a], value=0.0)
    return ZTest(float(z), float(p_value))


def proportion_difference_ci(
    successes_a: int, n_a: int, successes_b: int, n_b: int, confidence_level: float = 0.95
) -> DifferenceEstimate:
    """Return the unpooled Wald interval for the difference of proportions p_b - p_a.

    (p_b - p_a) +- z_{1-(1-c)/2} sqrt(p_a (1 - p_a) / n_a + p_b (1 - p_b) / n_b)
    (Newcombe 1998, Stat. Med. 17:873, method 1), computed by
    ``statsmodels.stats.proportion.confint_proportions_2indep(method="wald")``.

    Raises
    ------
    ValueError
        For invalid counts or confidence level, or when both observed rates are 0 or 1
        (the Wald standard error is zero).
    """
    _check_counts(successes_a, n_a, "a")
    _check_counts(successes_b, n_b, "b")
    rate_a, rate_b = successes_a / n_a, successes_b / n_b
    variance = rate_a * (1.0 - rate_a) / n_a + rate_b * (1.0 - rate_b) / n_b
    if variance <= 0.0:
        raise ValueError("Wald interval undefined: both observed rates are 0 or 1")
    check_probability("confidence_level", confidence_level)
    low, high = confint_proportions_2indep(
        successes_b, n_b, successes_a, n_a, method="wald", compare="diff",
        alpha=1.0 - confidence_level,
    )  # fmt: skip
    return DifferenceEstimate(
        difference=float(rate_b - rate_a),
        standard_error=math.sqrt(variance),
        ci_low=float(low),
        ci_high=float(high),
        confidence_level=confidence_level,
    )


def welch_t(
    mean_a: float, var_a: float, n_a: int, mean_b: float, var_b: float, n_b: int
) -> WelchTTest:
    """Test equal means without assuming equal variances (Welch 1947).

    t = (mean_b - mean_a) / sqrt(var_a / n_a + var_b / n_b), with Welch-Satterthwaite
    degrees of freedom (Welch 1947, Biometrika 34:28, eq. 9; Satterthwaite 1946) and
    two-sided p from Student's t. Variances are unbiased sample variances (ddof = 1).
    Computed by ``scipy.stats.ttest_ind_from_stats(..., equal_var=False)``: statsmodels'
    Welch test (``CompareMeans``) needs the raw observations, which the service never has.

    Raises
    ------
    ValueError
        For n < 2, negative or non-finite inputs, or both variances zero.
    """
    _, df = _welch_parts(mean_a, var_a, n_a, mean_b, var_b, n_b)
    t, p_value = stats.ttest_ind_from_stats(
        mean_b, math.sqrt(var_b), n_b, mean_a, math.sqrt(var_a), n_a, equal_var=False
    )
    return WelchTTest(float(t), df, float(p_value))


def mean_difference_ci(
    mean_a: float,
    var_a: float,
    n_a: int,
    mean_b: float,
    var_b: float,
    n_b: int,
    confidence_level: float = 0.95,
) -> DifferenceEstimate:
    """Return the Welch interval for mean_b - mean_a.

    (mean_b - mean_a) +- t_{df, 1-(1-c)/2} sqrt(var_a / n_a + var_b / n_b) with Welch-
    Satterthwaite df (Welch 1947, eq. 9). Equals statsmodels'
    ``CompareMeans.tconfint_diff(usevar="unequal")``.
    """
    standard_error, df = _welch_parts(mean_a, var_a, n_a, mean_b, var_b, n_b)
    check_probability("confidence_level", confidence_level)
    critical = float(special.stdtrit(df, 0.5 + confidence_level / 2.0))
    return _interval(mean_b - mean_a, standard_error, critical, confidence_level)


def _welch_parts(
    mean_a: float, var_a: float, n_a: int, mean_b: float, var_b: float, n_b: int
) -> tuple[float, float]:
    """Return the standard error of the difference and the Welch-Satterthwaite df."""
    check_finite("mean_a", mean_a)
    check_finite("mean_b", mean_b)
    for name, value in (("var_a", var_a), ("var_b", var_b)):
        if not (math.isfinite(value) and value >= 0.0):
            raise ValueError(f"{name} must be finite and >= 0, got {value}")
    check_integer("n_a", n_a, 2)
    check_integer("n_b", n_b, 2)
    share_a, share_b = var_a / n_a, var_b / n_b
    if share_a + share_b <= 0.0:
        raise ValueError("t-test undefined: both variances are zero")
    df = (share_a + share_b) ** 2 / (share_a**2 / (n_a - 1) + share_b**2 / (n_b - 1))
    return math.sqrt(share_a + share_b), float(df)


def _interval(
    difference: float, standard_error: float, critical: float, confidence_level: float
) -> DifferenceEstimate:
    half_width = critical * standard_error
    return DifferenceEstimate(
        difference=float(difference),
        standard_error=float(standard_error),
        ci_low=float(difference - half_width),
        ci_high=float(difference + half_width),
        confidence_level=confidence_level,
    )


def _check_counts(successes: int, n: int, arm: str) -> None:
    check_integer(f"n_{arm}", n, 1)
    if not is_integer(successes) or not 0 <= successes <= n:
        raise ValueError(f"successes_{arm} must be an integer in [0, n_{arm}], got {successes!r}")
