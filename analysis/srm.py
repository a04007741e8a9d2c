"""Sample ratio mismatch (SRM): do the observed variant counts fit the configured split?

An SRM means assignment, logging or filtering is broken, and every other result of the
experiment is suspect (Fabijan et al. 2019, "Diagnosing Sample Ratio Mismatch in Online
Controlled Experiments", KDD). The test is Pearson's chi-square goodness of fit against
the configured weights, which need not be equal. Because the check runs on every
analysis and a false alarm is cheap to investigate but a missed SRM invalidates a
decision, the default threshold is strict: p < 0.001.

Expected weights must be the weights in force when the counted units were assigned; after
a ramp, sticky units keep their variant, so counts over the whole experiment follow a mix
of old and new weights. Count units assigned under one weight configuration at a time.

The chi-square test is a single-look test: re-run at every analysis it flags healthy
experiments far more often than its threshold. Under continuous monitoring use
:func:`sequential_srm`, the Dirichlet-multinomial mixture test of Lindon & Malek (2022),
whose anytime-valid p-value may be checked after every unit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import special

from analysis.validation import WEIGHT_SUM_TOLERANCE, check_probability, check_weights, is_integer

__all__ = [
    "DEFAULT_CONCENTRATION",
    "DEFAULT_THRESHOLD",
    "WEIGHT_SUM_TOLERANCE",
    "DailySrmResult",
    "SequentialSrmResult",
    "SrmResult",
    "daily_threshold",
    "log_e_value",
    "sequential_srm",
    "srm_check",
    "srm_check_daily",
    "srm_p_value",
]

DEFAULT_THRESHOLD = 0.001
DEFAULT_CONCENTRATION = 4000.0
"""Prior concentration k of the sequential test's Dirichlet(k w) mixture (see
:func:`log_e_value`). The prior's spread, about sqrt(w (1 - w) / k), is a 0.8-point shift
of a 50/50 split: chosen by simulation so that a 49/51 split is flagged at p <= 0.001
within 100,000 units in 99 % of experiments (looks every 100 units); Lindon & Malek's
reference implementation uses k = 100, which finds it in 97 %. Any k keeps the level."""


@dataclass(frozen=True)
class SrmResult:
    """Chi-square goodness-of-fit of observed variant counts to the configured weights."""

    chi2: float
    degrees_of_freedom: int
    p_value: float
    flagged: bool
    threshold: float
    total_units: int
    observed_counts: tuple[int, ...]
    expected_counts: tuple[float, ...]


@dataclass(frozen=True)
class DailySrmResult:
    """SRM checks per day and on the running total, so a late imbalance is seen.

    Day indices are 0-based positions in the input. A day without units has ``None`` in
    ``by_day`` (nothing to test); ``cumulative[d]`` covers days 0..d.
    """

    by_day: tuple[SrmResult | None, ...]
    cumulative: tuple[SrmResult | None, ...]
    flagged_days: tuple[int, ...]
    flagged_cumulative_days: tuple[int, ...]

    @property
    def flagged(self) -> bool:
        """True when any single day or any running total is flagged."""
        return bool(self.flagged_days or self.flagged_cumulative_days)


def srm_p_value(observed_counts: Sequence[int], expected_weights: Sequence[float]) -> float:
    """Return the chi-square goodness-of-fit p-value of counts against weights.

    X^2 = sum_i (O_i - N w_i)^2 / (N w_i) with N = sum_i O_i, referred to chi-square with
    m - 1 degrees of freedom (Pearson 1900; Agresti 2013, "Categorical Data Analysis",
    3rd ed., section 1.5.2). Equals ``scipy.stats.chisquare(counts, N * weights)``.

    Parameters
    ----------
    observed_counts : sequence of int
        Units per variant, non-negative, at least two variants, total > 0.
    expected_weights : sequence of float
        Configured share of each variant, positive, summing to 1 within 1e-9.
    """
    return srm_check(observed_counts, expected_weights).p_value


def srm_check(
    observed_counts: Sequence[int],
    expected_weights: Sequence[float],
    threshold: float = DEFAULT_THRESHOLD,
) -> SrmResult:
    """Test for sample ratio mismatch and flag it when p < ``threshold``.

    See :func:`srm_p_value` for the statistic. ``threshold`` defaults to 0.001.
    """
    counts = _check_counts(observed_counts)
    weights = _check_weights(expected_weights, len(counts))
    check_probability("threshold", threshold)
    total = sum(counts)
    if total == 0:
        raise ValueError("cannot test sample ratio: no units observed")
    return _chi_square(counts, weights, threshold)


def srm_check_daily(
    daily_counts: Sequence[Sequence[int]],
    expected_weights: Sequence[float],
    threshold: float = DEFAULT_THRESHOLD,
) -> DailySrmResult:
    """Test each day's counts and each running total for sample ratio mismatch.

    A bug that starts late (a new deployment, a broken logger on one platform) is diluted
    in the cumulative counts but shows on the days it happens. Each test uses
    ``threshold``; with many days consider a smaller one, since at 0.001 about one
    healthy experiment in 1000 per day checked is flagged by chance.

    Parameters
    ----------
    daily_counts : sequence of sequences of int
        ``daily_counts[d][i]`` is the number of units of variant i first assigned on day d.
    expected_weights : sequence of float
        Configured weights, as in :func:`srm_p_value`.
    threshold : float
        Flag when p < threshold.
    """
    if len(daily_counts) == 0:
        raise ValueError("daily_counts must contain at least one day")
    days = [_check_counts(day) for day in daily_counts]
    weights = _check_weights(expected_weights, len(days[0]))
    check_probability("threshold", threshold)
    if any(len(day) != len(weights) for day in days):
        raise ValueError("every day must have one count per variant")
    running = [0] * len(weights)
    by_day: list[SrmResult | None] = []
    cumulative: list[SrmResult | None] = []
    for day in days:
        running = [a + b for a, b in zip(running, day, strict=True)]
        by_day.append(_chi_square(day, weights, threshold) if sum(day) else None)
        cumulative.append(_chi_square(running, weights, threshold) if sum(running) else None)
    return DailySrmResult(
        by_day=tuple(by_day),
        cumulative=tuple(cumulative),
        flagged_days=tuple(d for d, r in enumerate(by_day) if r is not None and r.flagged),
        flagged_cumulative_days=tuple(
            d for d, r in enumerate(cumulative) if r is not None and r.flagged
        ),
    )


def _chi_square(counts: list[int], weights: list[float], threshold: float) -> SrmResult:
    total = sum(counts)
    expected = [total * w for w in weights]
    chi2 = math.fsum((o - e) ** 2 / e for o, e in zip(counts, expected, strict=True))
    degrees_of_freedom = len(counts) - 1
    p_value = float(special.chdtrc(degrees_of_freedom, chi2))
    return SrmResult(
        chi2=chi2,
        degrees_of_freedom=degrees_of_freedom,
        p_value=p_value,
        flagged=p_value < threshold,
        threshold=threshold,
        total_units=total,
        observed_counts=tuple(counts),
        expected_counts=tuple(expected),
    )


def _check_counts(observed_counts: Sequence[int]) -> list[int]:
    counts = list(observed_counts)
    if len(counts) < 2:
        raise ValueError("need counts for at least two variants")
    for count in counts:
        if not is_integer(count) or count < 0:
            raise ValueError(f"counts must be non-negative integers, got {count!r}")
    return [int(count) for count in counts]


def _check_weights(expected_weights: Sequence[float], variants: int) -> list[float]:
    if len(expected_weights) != variants:
        raise ValueError(f"got {len(expected_weights)} weights for {variants} variants")
    return check_weights(expected_weights)


@dataclass(frozen=True)
class SequentialSrmResult:
    """The anytime-valid SRM test after the latest look.

    ``log_e_value`` is the log of the mixture likelihood ratio (an e-value: its expectation
    is at most 1 under the configured weights at every time); ``p_value_always_valid`` is
    ``min(1, exp(-max log e-value so far))``, so ``P(ever <= threshold) <= threshold``
    under the null (Ville 1939).
    """

    log_e_value: float
    max_log_e_value: float
    p_value_always_valid: float
    flagged: bool
    threshold: float
    total_units: int


def log_e_value(
    observed_counts: Sequence[int],
    expected_weights: Sequence[float],
    concentration: float = DEFAULT_CONCENTRATION,
) -> float:
    """Return the log Bayes factor of a Dirichlet-multinomial mixture against the weights.

    With null weights w, prior Dirichlet(a) with a = k w and counts x (total n),

        log E_n = log Gamma(sum a) - log Gamma(sum a + n)
                  + sum_i [log Gamma(a_i + x_i) - log Gamma(a_i)] - sum_i x_i log w_i

    (Lindon & Malek 2022, "Anytime-valid inference for multinomial count data", NeurIPS:
    their Dirichlet-multinomial Bayes factor, with the prior centred on the null, as in
    their reference implementation). Under the null it is a
    non-negative martingale with mean 1 in the number of units, whatever the batching of
    the counts, so it may be evaluated at any look. Multinomial coefficients cancel.
    """
    counts = _check_counts(observed_counts)
    weights = _check_weights(expected_weights, len(counts))
    if not (math.isfinite(concentration) and concentration > 0.0):
        raise ValueError(f"concentration must be finite and > 0, got {concentration}")
    prior = [concentration * w for w in weights]
    total = sum(counts)
    value = math.lgamma(concentration) - math.lgamma(concentration + total)
    value += math.fsum(
        math.lgamma(a + x) - math.lgamma(a) - x * math.log(w)
        for a, x, w in zip(prior, counts, weights, strict=True)
    )
    return value


def sequential_srm(
    observed_counts: Sequence[int],
    expected_weights: Sequence[float],
    threshold: float = DEFAULT_THRESHOLD,
    *,
    concentration: float = DEFAULT_CONCENTRATION,
    closed_log_e_value: float = 0.0,
    previous_max_log_e_value: float = 0.0,
) -> SequentialSrmResult:
    """Fold one look into the anytime-valid SRM test (Lindon & Malek 2022).

    ``observed_counts`` are the units assigned since the current allocation period began
    (the weights in force: ``expected_weights``). Periods that ended earlier contribute
    their final log e-value through ``closed_log_e_value``: the product of one test
    martingale per period, each started at 1 when its period starts, is again a test
    martingale, so the weights may change between periods. ``previous_max_log_e_value``
    carries the running maximum, so the p-value never goes up.
    """
    check_probability("threshold", threshold)
    current = closed_log_e_value + log_e_value(observed_counts, expected_weights, concentration)
    running = max(previous_max_log_e_value, current, 0.0)
    p_value = math.exp(-running)
    return SequentialSrmResult(
        log_e_value=current,
        max_log_e_value=running,
        p_value_always_valid=p_value,
        flagged=p_value <= threshold,
        threshold=threshold,
        total_units=sum(int(c) for c in observed_counts),
    )


def daily_threshold(budget: float, day_number: int) -> float:
    """Return the threshold of the ``day_number``-th (1-based) completed day's own test.

    ``budget * 6 / (pi^2 d^2)`` sums to ``budget`` over all days (sum 1/d^2 = pi^2/6),
    so per-day chi-square tests on completed days, kept to catch a late imbalance that
    the cumulative counts dilute, add at most ``budget`` to the false-alarm rate however
    long the experiment runs (Bonferroni over an infinite sequence).
    """
    check_probability("budget", budget)
    if not is_integer(day_number) or day_number < 1:
        raise ValueError(f"day_number must be an integer >= 1, got {day_number!r}")
    return budget * 6.0 / (math.pi**2 * day_number**2)
