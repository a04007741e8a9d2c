"""How a shadow compares with the served model, hour by hour, with intervals. Pure.

Per hour: the agreement rate over rows (Wilson score interval), the mean absolute output
difference (each run's mean over its values, averaged over runs, so a request is one
observation) with a normal interval, the largest difference, and the shadow's mean latency (normal interval) and
p99 beside the served model's p99. The bounds for a shadow-to-treatment promotion read these.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from statsmodels.stats.proportion import proportion_confint


@dataclass(frozen=True)
class ShadowHour:
    """One hour of a shadow's runs (sums for the intervals) and of the models that answered."""

    hour: datetime
    runs: int
    rows: int
    """Rows of the runs with an agreement (one decision per row)."""
    agreeing_rows: float
    diff_runs: int
    """Runs with a difference: each contributes its mean absolute output difference (rows
    written before that was recorded: their largest)."""
    diff_sum: float
    diff_square_sum: float
    diff_max: float | None
    latency_sum_ms: float
    latency_square_sum_ms: float
    latency_p99_ms: float | None
    served_latency_p99_ms: float | None


Z_95 = 1.959963984540054


@dataclass(frozen=True)
class ShadowWindow:
    hour: str
    runs: int
    rows: int
    agreement: float | None
    agreement_ci_low: float | None
    agreement_ci_high: float | None
    mean_abs_diff: float | None
    mean_abs_diff_ci_low: float | None
    mean_abs_diff_ci_high: float | None
    max_abs_diff: float | None
    latency_mean_ms: float
    latency_mean_ci_low_ms: float
    latency_mean_ci_high_ms: float
    latency_p99_ms: float | None
    served_latency_p99_ms: float | None


@dataclass(frozen=True)
class ShadowReport:
    variant: str
    served_by: str
    sample_rate: float
    hours: list[ShadowWindow]
    overall: ShadowWindow | None
    """Every hour of the report together (p99s: the worst hour's)."""


def _mean_interval(total: float, square: float, n: int) -> tuple[float, float, float]:
    mean = total / n
    variance = max(0.0, square / n - mean * mean) * n / (n - 1) if n > 1 else 0.0
    half = Z_95 * math.sqrt(variance / n)
    return mean, mean - half, mean + half


def summarize(hour: ShadowHour, label: str) -> ShadowWindow:
    agreement = low = high = None
    if hour.rows > 0:
        agreeing = min(max(round(hour.agreeing_rows), 0), hour.rows)
        agreement = hour.agreeing_rows / hour.rows
        low, high = (float(x) for x in proportion_confint(agreeing, hour.rows, 0.05, "wilson"))
    diff = diff_low = diff_high = None
    if hour.diff_runs > 0:
        diff, diff_low, diff_high = _mean_interval(
            hour.diff_sum, hour.diff_square_sum, hour.diff_runs
        )
    latency, latency_low, latency_high = _mean_interval(
        hour.latency_sum_ms, hour.latency_square_sum_ms, hour.runs
    )
    return ShadowWindow(
        label, hour.runs, hour.rows, agreement, low, high, diff, diff_low, diff_high,
        hour.diff_max, latency, latency_low, latency_high, hour.latency_p99_ms,
        hour.served_latency_p99_ms,
    )  # fmt: skip


def _worst(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return max(known) if known else None


def report(
    variant: str, served_by: str, sample_rate: float, hours: list[ShadowHour]
) -> ShadowReport:
    """Each hour's window and all of them together."""
    windows = [summarize(h, h.hour.isoformat()) for h in hours]
    if not hours:
        return ShadowReport(variant, served_by, sample_rate, windows, None)
    total = ShadowHour(
        hours[0].hour, sum(h.runs for h in hours), sum(h.rows for h in hours),
        sum(h.agreeing_rows for h in hours), sum(h.diff_runs for h in hours),
        sum(h.diff_sum for h in hours), sum(h.diff_square_sum for h in hours),
        _worst([h.diff_max for h in hours]), sum(h.latency_sum_ms for h in hours),
        sum(h.latency_square_sum_ms for h in hours), _worst([h.latency_p99_ms for h in hours]),
        _worst([h.served_latency_p99_ms for h in hours]),
    )  # fmt: skip
    return ShadowReport(variant, served_by, sample_rate, windows, summarize(total, "all"))
