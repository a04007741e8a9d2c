"""Read per-variant sufficient statistics from the rollup tables (cost: buckets, not events)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from analysis.ratio_metric import RatioCrossSums
from analysis.sufficient_stats import SufficientStats


@dataclass(frozen=True)
class ModelHealth:
    """A variant's ``/v1/predict`` answers: requests, fallbacks, latency histogram counts."""

    requests: int
    fallbacks: int
    latency_counts: list[int]


@dataclass(frozen=True)
class MetricStats:
    variant_key: str
    metric: str
    stats: SufficientStats


def exposed_units(
    conn: Any, experiment_key: str, seed: str, through: date | None = None
) -> dict[str, int]:
    rows = conn.execute(
        "SELECT variant_key, sum(units)::bigint FROM exposure_counts"
        " WHERE experiment_key = %s AND seed = %s AND (%s::date IS NULL OR bucket <= %s::date)"
        " GROUP BY variant_key",
        (experiment_key, seed, through, through),
    ).fetchall()
    return {variant: int(units) for variant, units in rows}


def metric_stats(
    conn: Any, experiment_key: str, seed: str, through: date | None = None
) -> list[MetricStats]:
    """Sufficient statistics of every (variant, metric) with exposures; units without outcomes count as 0."""
    units = exposed_units(conn, experiment_key, seed, through)
    sums: dict[tuple[str, str], tuple[float, ...]] = {}
    for variant, metric, *values in conn.execute(
        "SELECT variant_key, metric, sum(sum_y), sum(sum_y2), sum(sum_x), sum(sum_x2), sum(sum_xy)"
        " FROM metric_stats WHERE experiment_key = %s AND seed = %s"
        " AND (%s::date IS NULL OR bucket <= %s::date) GROUP BY variant_key, metric",
        (experiment_key, seed, through, through),
    ):
        sums[(variant, metric)] = tuple(float(v) for v in values)
    result = []
    for (variant, metric), (sum_y, sum_y2, sum_x, sum_x2, sum_xy) in sorted(sums.items()):
        n = units.get(variant, 0)
        if n == 0:
            continue  # outcomes whose exposures are not rolled up yet
        result.append(
            MetricStats(variant, metric, SufficientStats(n, sum_y, sum_y2, sum_x, sum_x2, sum_xy))
        )
    return result


def outcome_status_counts(conn: Any, experiment_key: str) -> dict[str, int]:
    """Events attributed, pre-period, outside the window, unexposed or pending (rolled up so far)."""
    rows = conn.execute(
        "SELECT status, events FROM outcome_counts WHERE experiment_key = %s AND events <> 0",
        (experiment_key,),
    ).fetchall()
    return {status: int(n) for status, n in rows}


def exposed_units_by_day(
    conn: Any, experiment_key: str, seed: str, through: date | None = None
) -> dict[date, dict[str, int]]:
    """New exposed units per day of first exposure and variant (for the daily SRM check)."""
    days: dict[date, dict[str, int]] = {}
    for bucket, variant, units in conn.execute(
        "SELECT bucket, variant_key, units FROM exposure_counts WHERE experiment_key = %s"
        " AND seed = %s AND (%s::date IS NULL OR bucket <= %s::date) ORDER BY bucket",
        (experiment_key, seed, through, through),
    ):
        days.setdefault(bucket, {})[variant] = int(units)
    return days


def model_health(
    conn: Any, experiment_key: str, through: date | None = None
) -> dict[str, ModelHealth]:
    """Served requests, fallbacks and the latency histogram of each variant's model."""
    totals: dict[str, ModelHealth] = {}
    for variant, requests, fallbacks, counts in conn.execute(
        "SELECT variant_key, requests, fallbacks, latency_counts FROM model_health"
        " WHERE experiment_key = %s AND (%s::date IS NULL OR bucket <= %s::date)",
        (experiment_key, through, through),
    ):
        seen = totals.get(variant)
        if seen is None:
            totals[variant] = ModelHealth(int(requests), int(fallbacks), [int(c) for c in counts])
        else:
            merged = [a + int(b) for a, b in zip(seen.latency_counts, counts, strict=True)]
            totals[variant] = ModelHealth(
                seen.requests + requests, seen.fallbacks + fallbacks, merged
            )
    return totals


def exposure_buckets(conn: Any, experiment_key: str, seed: str) -> list[tuple[str, date, int]]:
    """Exposed units per variant and day."""
    rows = conn.execute(
        "SELECT variant_key, bucket, units FROM exposure_counts"
        " WHERE experiment_key = %s AND seed = %s",
        (experiment_key, seed),
    ).fetchall()
    return [(variant, day, int(units)) for variant, day, units in rows]


def metric_buckets(
    conn: Any, experiment_key: str, seed: str, metric: str
) -> list[tuple[str, date, tuple[float, float, float, float, float]]]:
    """One metric's sums per variant and day: (sum y, sum y², sum x, sum x², sum xy)."""
    rows = conn.execute(
        "SELECT variant_key, bucket, sum_y, sum_y2, sum_x, sum_x2, sum_xy"
        " FROM metric_stats WHERE experiment_key = %s AND seed = %s AND metric = %s",
        (experiment_key, seed, metric),
    ).fetchall()
    return [(v, d, (y, y2, x, x2, xy)) for v, d, y, y2, x, x2, xy in rows]


def exposure_days(conn: Any, experiment_key: str, seed: str) -> tuple[int, int]:
    """Days with exposures and the units exposed over them (the observed traffic)."""
    row = conn.execute(
        "SELECT count(DISTINCT bucket), coalesce(sum(units), 0) FROM exposure_counts"
        " WHERE experiment_key = %s AND seed = %s",
        (experiment_key, seed),
    ).fetchone()
    return int(row[0]), int(row[1])


def mature_metric_stats(
    conn: Any,
    experiment_key: str,
    seed: str,
    metric: str,
    maturity_hours: float,
    through: date | None = None,
) -> tuple[date, dict[str, int], dict[str, SufficientStats]]:
    """A windowed metric over mature units only: (cutoff day, mature units, their sums).

    A unit is mature once ``maturity_hours`` have passed since its exposure. Cohorts are
    whole days, so a day's units count once the last of them is mature (before ``cutoff``):
    never an open window, at the cost of waiting up to a day longer. ``through`` looks as of
    the end of that day.
    """
    (cutoff,) = conn.execute(
        "SELECT (least(now(), coalesce((%s::date + 1)::timestamptz, now()))"
        " - %s * interval '1 hour')::date",
        (through, maturity_hours),
    ).fetchone()
    units = {
        variant: int(n)
        for variant, n in conn.execute(
            "SELECT variant_key, sum(units)::bigint FROM exposure_counts WHERE experiment_key = %s"
            " AND seed = %s AND bucket < %s GROUP BY variant_key",
            (experiment_key, seed, cutoff),
        )
    }
    stats = {}
    for variant, *values in conn.execute(
        "SELECT variant_key, sum(sum_y), sum(sum_y2), sum(sum_x), sum(sum_x2), sum(sum_xy)"
        " FROM metric_cohort_stats WHERE experiment_key = %s AND seed = %s AND metric = %s"
        " AND cohort < %s GROUP BY variant_key",
        (experiment_key, seed, metric, cutoff),
    ):
        if units.get(variant, 0) > 0:
            stats[variant] = SufficientStats(units[variant], *(float(v) for v in values))
    for variant, n in units.items():
        if n > 0:
            stats.setdefault(variant, SufficientStats(n, 0.0, 0.0, 0.0, 0.0, 0.0))
    return cutoff, units, stats


@dataclass(frozen=True)
class RatioSums:
    """One variant's sums for a ratio metric, all from one snapshot of the unit totals."""

    numerator: SufficientStats
    denominator: SufficientStats
    cross: RatioCrossSums


def ratio_sums(
    conn: Any, experiment_key: str, seed: str, numerator: str, denominator: str,
    units: Mapping[str, int],
) -> dict[str, RatioSums]:  # fmt: skip
    """Per-unit sums of a ratio's numerator and denominator and their cross products.

    The cross products (x y and, for CUPED, with the pre-period x' y') need both totals of
    each unit, which the bucketed ``metric_stats`` cannot give: they are summed over the
    units' current totals (``unit_outcomes``, one statement so every sum is of one snapshot;
    cost grows with the units that have outcomes of either metric). Units exposed without
    outcomes count as zeros, as in :func:`metric_stats`.
    """
    rows = conn.execute(
        "SELECT coalesce(a.variant_key, b.variant_key), sum(x), sum(x*x), sum(y), sum(y*y),"
        " sum(x*y), sum(xp), sum(xp*xp), sum(yp), sum(yp*yp), sum(xp*yp), sum(x*xp), sum(y*yp),"
        " sum(x*yp), sum(xp*y)"
        " FROM (SELECT unit_id, variant_key, y_total AS post_x, x_total AS pre_x FROM unit_outcomes"
        "       WHERE experiment_key = %s AND seed = %s AND metric = %s) a"
        " FULL JOIN (SELECT unit_id, variant_key, y_total AS post_y, x_total AS pre_y FROM unit_outcomes"
        "       WHERE experiment_key = %s AND seed = %s AND metric = %s) b USING (unit_id),"
        " LATERAL (SELECT coalesce(a.post_x, 0), coalesce(a.pre_x, 0), coalesce(b.post_y, 0),"
        "          coalesce(b.pre_y, 0)) AS v(x, xp, y, yp)"
        " GROUP BY 1",
        (experiment_key, seed, numerator, experiment_key, seed, denominator),
    ).fetchall()
    found = {str(row[0]): [float(value) for value in row[1:]] for row in rows}
    result = {}
    for variant, n in units.items():
        if n <= 0:
            continue
        x, x2, y, y2, xy, xp, xp2, yp, yp2, xpyp, xxp, yyp, xyp, xpy = found.get(
            variant, [0.0] * 14
        )
        result[variant] = RatioSums(
            SufficientStats(n, x, x2, xp, xp2, xxp),
            SufficientStats(n, y, y2, yp, yp2, yyp),
            RatioCrossSums(xy, xpyp, xyp, xpy),
        )
    return result
