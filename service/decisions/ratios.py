"""Ratio metrics as the sufficient statistics every method reads. Pure.

A ratio metric (``type: ratio``: revenue per session) divides two per-unit totals. Each
variant's sums of numerator, denominator and their cross products become the sums of the
ratio's per-unit linearisation (the delta method, :func:`analysis.ratio_metric.linearized_stats`),
so the mSPRT, the confidence sequences, the group-sequential boundaries, CUPED and the
guardrails analyse a ratio exactly as they analyse a mean: docs/statistics.md.
"""

from __future__ import annotations

from collections.abc import Mapping

from analysis.ratio_metric import RatioCrossSums, linearized_stats
from analysis.sufficient_stats import SufficientStats
from service.events.sums import RatioSums
from service.experiments.schema import Experiment

StatsKey = tuple[str, str]  # variant, metric


def ratio_stats(
    experiment: Experiment, sums: Mapping[StatsKey, RatioSums]
) -> tuple[dict[StatsKey, SufficientStats], list[str], list[str]]:
    """Each (variant, ratio metric) with a denominator as linearised statistics; the rest waits.

    Returns the statistics; for each variant and ratio whose denominator is still zero (no
    sessions yet: the ratio is undefined), a line for the analysis's ``skipped``; and for sums
    no real units can have, a line for its ``errors``.
    """
    stats: dict[StatsKey, SufficientStats] = {}
    waiting: list[str] = []
    errors: list[str] = []
    for metric in experiment.metrics.ratio_metrics():
        for (variant, name), found in sorted(sums.items()):
            if name != metric.name:
                continue
            if found.denominator.total == 0:
                waiting.append(f"{name}/{variant}: no {metric.denominator} yet (the ratio's "
                               "denominator is zero)")  # fmt: skip
                continue
            try:
                stats[(variant, name)] = linearized_stats(
                    found.numerator, found.denominator, found.cross
                )
            except ValueError as error:  # sums that real units cannot have: report, go on
                errors.append(f"{name}/{variant}: {error}")
    return stats, waiting, errors


def period_ratio(
    numerator: SufficientStats, denominator: SufficientStats, sum_xy: float
) -> SufficientStats:
    """One allocation period's ratio in one arm, linearised (a bandit's stratum); no pre-period.

    The delta method within the period (its own ``R_p`` and ``ybar_p``), so the stratified
    estimator of ``analysis.bandit`` combines the periods' ratios as it combines means. A
    period whose arm has no denominator yet (or fewer than two units) has no ratio: it gets
    zero units, which the stratified estimator leaves out, as it leaves out a period with
    fewer than two units in an arm.
    """
    if numerator.n < 2 or denominator.total <= 0:
        return SufficientStats(0, 0.0, 0.0)
    plain = (
        SufficientStats(numerator.n, numerator.total, numerator.total_squares),
        SufficientStats(denominator.n, denominator.total, denominator.total_squares),
    )
    return linearized_stats(*plain, RatioCrossSums(sum_xy))
