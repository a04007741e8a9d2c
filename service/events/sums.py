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


RatioParts = dict[tuple[str, str, str], RatioSums]
"""(attribute, segment, variant) -> the ratio's sums; attribute = segment = '' for the whole
experiment."""


def ratio_since(conn: Any, experiment_key: str, seed: str, numerator: str,
                denominator: str) -> date | None:  # fmt: skip
    """The day the rollup began keeping this ratio's cross products; None: not yet."""
    row = conn.execute(
        "SELECT since FROM ratio_pairs WHERE experiment_key = %s AND seed = %s"
        " AND numerator = %s AND denominator = %s",
        (experiment_key, seed, numerator, denominator),
    ).fetchone()
    return None if row is None else row[0]


def ratio_parts(
    conn: Any, experiment_key: str, seed: str, numerator: str, denominator: str,
    units: Mapping[tuple[str, str], Mapping[str, int]], through: date | None = None,
    per_segment: bool = False,
) -> RatioParts:  # fmt: skip
    """A ratio's sums from the rollup: each part's (``metric_stats``) and their cross products
    (``ratio_stats``, kept by the rollup: ``events/ratios.py``), in buckets up to ``through``.

    One statement, so every sum is of one snapshot; its cost grows with variants (times
    segments) times days, not with units. ``units`` holds the exposed units per (attribute,
    segment) and variant, ``('', '')`` for the whole experiment (``per_segment`` False) or
    the segments' (from ``segment_exposure_counts``); units without outcomes count as zeros.
    """
    table, where = (
        ("segment_metric_stats", "attribute <> ''")
        if per_segment
        else ("metric_stats", "attribute = ''")
    )
    groups = "attribute, segment" if per_segment else "''::text, ''::text"
    by = "attribute, segment, variant_key" if per_segment else "variant_key"
    cut = "AND (%(through)s::date IS NULL OR bucket <= %(through)s::date)"
    part = (
        f"SELECT %(part{{0}})s::text, {groups}, variant_key, sum(sum_y), sum(sum_y2),"
        f" sum(sum_x), sum(sum_x2), sum(sum_xy) FROM {table} WHERE experiment_key = %(key)s"
        f" AND seed = %(seed)s AND metric = %(part{{0}})s {cut} GROUP BY {by}"
    )
    rows = conn.execute(
        f"{part.format('x')} UNION ALL {part.format('y')} UNION ALL"
        f" SELECT ''::text, attribute, segment, variant_key, sum(sum_xy), sum(sum_xpyp),"
        f" sum(sum_xyp), sum(sum_xpy), 0 FROM ratio_stats WHERE experiment_key = %(key)s"
        f" AND seed = %(seed)s AND numerator = %(partx)s AND denominator = %(party)s"
        f" AND {where} {cut} GROUP BY attribute, segment, variant_key",
        {"key": experiment_key, "seed": seed, "partx": numerator, "party": denominator,
         "through": through},
    ).fetchall()  # fmt: skip
    found: dict[tuple[str, str, str, str], list[float]] = {}
    for metric, attribute, segment, variant, *values in rows:
        name = "cross" if metric == "" else ("x" if metric == numerator else "y")
        found[(name, attribute, segment, variant)] = [float(v) for v in values]
    result: RatioParts = {}
    zeros = [0.0] * 5
    for (attribute, segment), by_variant in units.items():
        for variant, n in by_variant.items():
            if n <= 0:
                continue
            x = found.get(("x", attribute, segment, variant), zeros)
            y = found.get(("y", attribute, segment, variant), zeros)
            xy, xpyp, xyp, xpy, _ = found.get(("cross", attribute, segment, variant), zeros)
            result[(attribute, segment, variant)] = RatioSums(
                SufficientStats(n, *x), SufficientStats(n, *y), RatioCrossSums(xy, xpyp, xyp, xpy)
            )
    return result


def ratio_sums(
    conn: Any, experiment_key: str, seed: str, numerator: str, denominator: str,
    units: Mapping[str, int], through: date | None = None,
) -> dict[str, RatioSums]:  # fmt: skip
    """Each variant's sums of a ratio's parts and their cross products (:func:`ratio_parts`)."""
    parts = ratio_parts(conn, experiment_key, seed, numerator, denominator, {("", ""): units},
                        through)  # fmt: skip
    return {variant: sums for (_, _, variant), sums in parts.items()}


def mature_ratio_sums(
    conn: Any, experiment_key: str, seed: str, numerator: str, denominator: str,
    maturity_hours: float, through: date | None = None,
) -> dict[str, RatioSums]:  # fmt: skip
    """A windowed ratio over mature units only, as :func:`mature_metric_stats` for a metric.

    The cohorts (days of first exposure) whose last unit is mature: their units from
    ``exposure_counts``, the parts' sums from ``metric_cohort_stats`` and the cross products
    from ``ratio_cohort_stats``, in one statement.
    """
    cohorts = "FROM {0}, cut WHERE experiment_key = %(key)s AND seed = %(seed)s AND {1} < cut.day"
    parts = (
        " UNION ALL SELECT %(part{0})s::text, variant_key, sum(sum_y), sum(sum_y2), sum(sum_x),"
        " sum(sum_x2), sum(sum_xy) " + cohorts.format("metric_cohort_stats", "cohort")
        + " AND metric = %(part{0})s GROUP BY variant_key"
    )  # fmt: skip
    rows = conn.execute(
        "WITH cut AS (SELECT (least(now(), coalesce((%(through)s::date + 1)::timestamptz, now()))"
        " - %(hours)s * interval '1 hour')::date AS day)"
        " SELECT ''::text, variant_key, sum(units)::float8, 0, 0, 0, 0 "
        + cohorts.format("exposure_counts", "bucket") + " GROUP BY variant_key"
        + parts.format("x") + parts.format("y")
        + " UNION ALL SELECT 'cross', variant_key, sum(sum_xy), sum(sum_xpyp), sum(sum_xyp),"
        " sum(sum_xpy), 0 " + cohorts.format("ratio_cohort_stats", "cohort")
        + " AND numerator = %(partx)s AND denominator = %(party)s GROUP BY variant_key",
        {"key": experiment_key, "seed": seed, "partx": numerator, "party": denominator,
         "through": through, "hours": maturity_hours},
    ).fetchall()  # fmt: skip
    found: dict[tuple[str, str], list[float]] = {}
    for part, variant, *values in rows:
        name = {"": "n", "cross": "cross", numerator: "x", denominator: "y"}[part]
        found[(name, variant)] = [float(v) for v in values]
    zeros = [0.0] * 5
    result = {}
    for (name, variant), (units, *_) in found.items():
        n = int(units)
        if name != "n" or n <= 0:
            continue
        xy, xpyp, xyp, xpy, _ = found.get(("cross", variant), zeros)
        result[variant] = RatioSums(
            SufficientStats(n, *found.get(("x", variant), zeros)),
            SufficientStats(n, *found.get(("y", variant), zeros)),
            RatioCrossSums(xy, xpyp, xyp, xpy),
        )
    return result
