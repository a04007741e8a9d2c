"""Read a bandit's statistics split by allocation period (the weights in force at exposure).

A unit belongs to the period in force at its first exposure: periods start at each
allocation's ``effective_at`` (the first one at the beginning of time) and end where the
next starts. The per-unit totals of ``unit_outcomes`` are summed per period and variant,
over the exposures the rollup has counted (its watermark), so a period's units always
include every unit whose outcomes are in its sums, as in ``sums.py``. Cost: one pass over
the experiment's exposures and unit totals, done by the decision worker for bandits only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from analysis.sufficient_stats import SufficientStats


@dataclass(frozen=True)
class PeriodSums:
    """One allocation period: its weights, exposed units and each (variant, metric)'s sums."""

    weights: dict[str, float]
    starts_at: datetime | None
    units: dict[str, int]
    settled_units: dict[str, int]
    """Units exposed after the switch to these weights surely completed (``guard``)."""
    stats: dict[tuple[str, str], SufficientStats] = field(default_factory=dict)


def period_sums(
    conn: Any,
    experiment_key: str,
    seed: str,
    allocations: Sequence[tuple[dict[str, float], datetime]],
    guard: timedelta,
) -> list[PeriodSums]:
    """Units and metric sums per allocation period, oldest first (empty without allocations).

    ``guard`` after a switch, units may still be assigned under the old weights by a
    process that has not heard of the new ones, or held back while it flushes: they count
    in the period's statistics (hash-random either way) but not in its ``settled_units``,
    the counts the sample-ratio test compares with the period's weights.
    """
    if not allocations:
        return []
    # Period p (0-based) starts at bounds[p] (1-based in SQL) for p >= 1: width_bucket's
    # binary search over the sorted switch times gives each exposure's period.
    bounds = [at for _, at in allocations[1:]]
    periods = [
        PeriodSums(weights, None if index == 0 else bounds[index - 1], {}, {})
        for index, (weights, _) in enumerate(allocations)
    ]
    of_period = (
        " FROM exposures x CROSS JOIN LATERAL (SELECT width_bucket(x.first_exposed_at,"
        " %(bounds)s::timestamptz[]) AS period) p"
    )
    where = (
        " WHERE x.experiment_key = %(key)s AND x.seed = %(seed)s"
        " AND x.exposure_pk <= (SELECT value FROM rollup_state WHERE name = 'exposures')"
    )
    parameters = {"bounds": bounds, "key": experiment_key, "seed": seed, "guard": guard}
    for period, variant, units, settled in conn.execute(
        "SELECT p.period, x.variant_key, count(*), count(*) FILTER (WHERE p.period = 0"
        " OR x.first_exposed_at >= (%(bounds)s::timestamptz[])[p.period] + %(guard)s)"
        + of_period
        + where
        + " GROUP BY 1, 2",
        parameters,
    ):
        periods[period].units[variant] = int(units)
        periods[period].settled_units[variant] = int(settled)
    for period, variant, metric, total, squares in conn.execute(
        "SELECT p.period, x.variant_key, u.metric, sum(u.y_total), sum(u.y_total * u.y_total)"
        + of_period
        + " JOIN unit_outcomes u ON u.experiment_key = x.experiment_key AND u.seed = x.seed"
        " AND u.unit_id = x.unit_id AND u.variant_key = x.variant_key"
        + where
        + " GROUP BY 1, 2, 3",
        parameters,
    ):
        n = periods[period].units.get(variant, 0)
        if n > 0:
            periods[period].stats[(variant, metric)] = SufficientStats(
                n, float(total), float(squares)
            )
    return periods
