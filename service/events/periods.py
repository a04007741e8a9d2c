"""A bandit's statistics split by allocation period (the weights in force at exposure).

A unit belongs to the period in force at its first exposure: periods start at each
allocation's ``effective_at`` (the first one at the beginning of time) and end where the
next starts. The rollup keeps, for the bandits the YAML names, each period's exposed units
and the sums of its units' totals (``period_exposure_counts``, ``period_metric_stats``,
``period_ratio_stats``; migration 0029) in the transaction that updates ``unit_outcomes``,
filed under the switch times it knew (``bandit_periods.bounds``), so a look reads periods
times variants in one statement (``period_sums``), never units.

Switches are announced ahead of their time (``allocation_settle_seconds``), so a new one
normally starts after every exposure filed so far and the rollup just extends the bounds.
A switch before exposures already filed (settle 0, or history rewritten), or a changed
guard, makes the rollup file the bandit again from the units' totals (``_refile``, one pass
over its exposures, as the first time). A read whose history or guard differ from what
was filed, or of a bandit the rollup does not keep, scans the unit totals instead
(``scan_period_sums``, the rolled-up read's reference), with the same answers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from analysis.sufficient_stats import SufficientStats
from service.events.attribution import (
    PeriodBounds,
    PeriodKey,
    PeriodRatioKey,
    StatsDelta,
    period_of,
)
from service.settings import LIVE_WRITER_SECONDS
from service.storage.staging import merge_rows

ConfiguredBandits = Callable[[], Collection[tuple[str, str]]]
"""The (experiment, seed) of every bandit, as the YAML now says."""


def settle_guard(state_poll_seconds: float) -> timedelta:
    """How long after a switch units may still be assigned under the old weights.

    A process may not have switched yet, or holds back units while it flushes
    (``allocation.py``; heartbeats live 10 s): such units count in the period's statistics
    (hash-random either way) but not in its ``settled_units``.
    """
    return timedelta(seconds=LIVE_WRITER_SECONDS + 2 * state_poll_seconds)


@dataclass(frozen=True)
class BanditPeriods:
    """What the rollup needs to keep periods: which bandits, and the SRM counts' guard."""

    configured: ConfiguredBandits
    guard: timedelta


def configured_bandits_from(experiments: Mapping[str, Any], guard: timedelta) -> BanditPeriods:
    """Every ``method: bandit`` experiment of ``experiments`` (read at each rollup round)."""

    def bandits() -> list[tuple[str, str]]:
        return sorted(
            (experiment.key, experiment.seed)
            for experiment in list(experiments.values())
            if getattr(getattr(experiment, "policy", None), "method", None) == "bandit"
        )

    return BanditPeriods(bandits, guard)


@dataclass(frozen=True)
class PeriodSums:
    """One allocation period: its weights, exposed units and each (variant, metric)'s sums."""

    weights: dict[str, float]
    starts_at: datetime | None
    units: dict[str, int]
    settled_units: dict[str, int]
    """Units exposed after the switch to these weights surely completed (``guard``)."""
    stats: dict[tuple[str, str], SufficientStats] = field(default_factory=dict)
    cross: dict[tuple[str, str, str], float] = field(default_factory=dict)
    """(variant, numerator, denominator) -> Σxy of the units' totals, for the ratios the
    rollup keeps (``ratio_pairs``)."""


def _empty(allocations: Sequence[tuple[dict[str, float], datetime]]) -> list[PeriodSums]:
    bounds = [at for _, at in allocations[1:]]
    return [
        PeriodSums(weights, None if index == 0 else bounds[index - 1], {}, {})
        for index, (weights, _) in enumerate(allocations)
    ]


def period_sums(
    conn: Any,
    experiment_key: str,
    seed: str,
    allocations: Sequence[tuple[dict[str, float], datetime]],
    guard: timedelta,
) -> list[PeriodSums]:
    """Units and metric sums per allocation period, oldest first (empty without allocations).

    One statement over the rolled-up tables when the rollup filed this bandit under these
    switch times and this guard; otherwise the scan (``scan_period_sums``).
    """
    if not allocations:
        return []
    bounds = [at for _, at in allocations[1:]]
    rows = conn.execute(
        "SELECT 'u', c.period, c.variant_key, NULL, NULL, c.units::float8, c.settled_units::float8"
        " FROM bandit_periods b JOIN period_exposure_counts c USING (experiment_key, seed)"
        " WHERE b.experiment_key = %(key)s AND b.seed = %(seed)s"
        " UNION ALL SELECT 's', s.period, s.variant_key, s.metric, NULL, s.sum_y, s.sum_y2"
        " FROM bandit_periods b JOIN period_metric_stats s USING (experiment_key, seed)"
        " WHERE b.experiment_key = %(key)s AND b.seed = %(seed)s"
        " UNION ALL SELECT 'x', r.period, r.variant_key, r.numerator, r.denominator, r.sum_xy,"
        " NULL FROM bandit_periods b JOIN period_ratio_stats r USING (experiment_key, seed)"
        " WHERE b.experiment_key = %(key)s AND b.seed = %(seed)s"
        " UNION ALL SELECT 'b', NULL, NULL, NULL, NULL, NULL, NULL FROM bandit_periods b"
        " WHERE b.experiment_key = %(key)s AND b.seed = %(seed)s"
        " AND b.bounds = %(bounds)s::timestamptz[] AND b.guard_seconds = %(guard)s",
        {"key": experiment_key, "seed": seed, "bounds": bounds,
         "guard": guard.total_seconds()},
    ).fetchall()  # fmt: skip
    if not any(row[0] == "b" for row in rows):
        return scan_period_sums(conn, experiment_key, seed, allocations, guard)
    periods = _empty(allocations)
    for kind, period, variant, _, _, first, second in rows:
        if kind == "u" and period < len(periods):
            periods[period].units[variant] = int(first)
            periods[period].settled_units[variant] = int(second)
    for kind, period, variant, name, other, first, second in rows:
        if period is None or period >= len(periods):
            continue
        n = periods[period].units.get(variant, 0)
        if kind == "s" and n > 0:
            periods[period].stats[(variant, name)] = SufficientStats(n, first, second)
        elif kind == "x" and n > 0:
            periods[period].cross[(variant, name, other)] = first
    return periods


_OF_PERIOD = (
    " FROM exposures x CROSS JOIN LATERAL (SELECT width_bucket(x.first_exposed_at,"
    " %(bounds)s::timestamptz[]) AS period) p"
)
_COUNTED = (
    " WHERE x.experiment_key = %(key)s AND x.seed = %(seed)s"
    " AND x.exposure_pk <= (SELECT value FROM rollup_state WHERE name = 'exposures')"
)
_UNITS = (
    "SELECT p.period, x.variant_key, count(*), count(*) FILTER (WHERE p.period = 0"
    " OR x.first_exposed_at >= (%(bounds)s::timestamptz[])[p.period] + %(guard)s)"
    + _OF_PERIOD + _COUNTED + " GROUP BY 1, 2"
)  # fmt: skip
_SUMS = (
    "SELECT p.period, x.variant_key, u.metric, sum(u.y_total), sum(u.y_total * u.y_total)"
    + _OF_PERIOD
    + " JOIN unit_outcomes u ON u.experiment_key = x.experiment_key AND u.seed = x.seed"
    " AND u.unit_id = x.unit_id AND u.variant_key = x.variant_key"
    + _COUNTED + " GROUP BY 1, 2, 3"
)  # fmt: skip


def scan_period_sums(
    conn: Any,
    experiment_key: str,
    seed: str,
    allocations: Sequence[tuple[dict[str, float], datetime]],
    guard: timedelta,
) -> list[PeriodSums]:
    """The same read from the exposures and unit totals: one pass over the experiment's units.

    Width_bucket's binary search over the sorted switch times gives each exposure's period
    (period p >= 1 starts at bounds[p], 1-based in SQL). Exposures past the rollup's
    watermark are left out, so a period's units include every unit in its sums.
    """
    if not allocations:
        return []
    periods = _empty(allocations)
    parameters = {"bounds": [at for _, at in allocations[1:]], "key": experiment_key,
                  "seed": seed, "guard": guard}  # fmt: skip
    for period, variant, units, settled in conn.execute(_UNITS, parameters):
        periods[period].units[variant] = int(units)
        periods[period].settled_units[variant] = int(settled)
    for period, variant, metric, total, squares in conn.execute(_SUMS, parameters):
        n = periods[period].units.get(variant, 0)
        if n > 0:
            periods[period].stats[(variant, metric)] = SufficientStats(
                n, float(total), float(squares)
            )
    for numerator, denominator, variant, period, product in conn.execute(
        "SELECT r.numerator, r.denominator, a.variant_key,"
        " width_bucket(x.first_exposed_at, %(bounds)s::timestamptz[]), sum(a.y_total * b.y_total)"
        " FROM ratio_pairs r JOIN unit_outcomes a ON a.experiment_key = r.experiment_key"
        " AND a.seed = r.seed AND a.metric = r.numerator"
        " JOIN unit_outcomes b ON b.experiment_key = a.experiment_key AND b.seed = a.seed"
        " AND b.unit_id = a.unit_id AND b.metric = r.denominator"
        " JOIN exposures x ON x.experiment_key = a.experiment_key AND x.seed = a.seed"
        " AND x.unit_id = a.unit_id AND x.variant_key = a.variant_key"
        " WHERE r.experiment_key = %(key)s AND r.seed = %(seed)s GROUP BY 1, 2, 3, 4",
        parameters,
    ):
        if periods[period].units.get(variant, 0) > 0:
            periods[period].cross[(variant, numerator, denominator)] = float(product)
    return periods


def _bounds_now(conn: Any, keys: Collection[tuple[str, str]]) -> dict[tuple[str, str], list[Any]]:
    """Each bandit's switch times after its first allocation, from ``allocations``."""
    found: dict[tuple[str, str], list[Any]] = {key: [] for key in keys}
    for key, seed, times in conn.execute(
        "SELECT a.experiment_key, a.seed, array_agg(a.effective_at ORDER BY a.effective_at,"
        " a.allocation_id) FROM allocations a JOIN unnest(%s::text[], %s::text[]) AS k(e, s)"
        " ON a.experiment_key = k.e AND a.seed = k.s GROUP BY 1, 2",
        ([k for k, _ in keys], [s for _, s in keys]),
    ):
        found[(key, seed)] = list(times[1:])
    return found


def track(conn: Any, bandits: BanditPeriods | None) -> PeriodBounds:
    """The bandits whose periods the rollup keeps, with their switch times, filed up to date.

    Call within the rollup's transaction and lock, before this round's exposures are
    counted: a (re)filing reads the exposures up to the watermark and the units' current
    totals, and the round's changes follow it.
    """
    if bandits is None:
        return {}
    stored = {
        (key, seed): (list(bounds), guard, last)
        for key, seed, bounds, guard, last in conn.execute(
            "SELECT experiment_key, seed, bounds, guard_seconds, last_exposed_at"
            " FROM bandit_periods"
        )
    }  # fmt: skip
    keys = sorted(set(stored) | set(bandits.configured()))
    if not keys:
        return {}
    current = _bounds_now(conn, keys)
    guard = bandits.guard.total_seconds()
    for key in keys:
        bounds = current[key]
        if key not in stored:
            _refile(conn, key, bounds, bandits.guard)
            continue
        old_bounds, old_guard, last = stored[key]
        if old_bounds == bounds and old_guard == guard:
            continue
        extends = bounds[: len(old_bounds)] == old_bounds and all(
            last is None or at > last for at in bounds[len(old_bounds) :]
        )
        if extends and old_guard == guard:
            conn.execute(
                "UPDATE bandit_periods SET bounds = %s::timestamptz[]"
                " WHERE experiment_key = %s AND seed = %s",
                (bounds, *key),
            )
        else:
            _refile(conn, key, bounds, bandits.guard)
    return current


def _refile(conn: Any, key: tuple[str, str], bounds: list[Any], guard: timedelta) -> None:
    """File one bandit's periods from scratch: exposures up to the watermark, units' totals."""
    experiment_key, seed = key
    parameters = {"bounds": bounds, "key": experiment_key, "seed": seed, "guard": guard}
    for table in ("period_exposure_counts", "period_metric_stats", "period_ratio_stats"):
        conn.execute(
            f"DELETE FROM {table} WHERE experiment_key = %s AND seed = %s", (experiment_key, seed)
        )
    conn.execute(
        "INSERT INTO period_exposure_counts (experiment_key, seed, variant_key, period, units,"
        " settled_units) SELECT %(key)s, %(seed)s, variant_key, period, units, settled"
        " FROM (" + _UNITS + ") AS t(period, variant_key, units, settled)",
        parameters,
    )
    conn.execute(
        "INSERT INTO period_metric_stats (experiment_key, seed, variant_key, metric, period,"
        " sum_y, sum_y2) SELECT %(key)s, %(seed)s, variant_key, metric, period, sum_y, sum_y2"
        " FROM (" + _SUMS + ") AS t(period, variant_key, metric, sum_y, sum_y2)",
        parameters,
    )
    pairs = conn.execute(
        "SELECT numerator, denominator FROM ratio_pairs WHERE experiment_key = %s AND seed = %s",
        key,
    ).fetchall()
    for numerator, denominator in pairs:
        first_ratio_sums(conn, (experiment_key, seed, numerator, denominator), bounds)
    (last,) = conn.execute(
        "SELECT max(first_exposed_at) FROM exposures WHERE experiment_key = %s AND seed = %s"
        " AND exposure_pk <= (SELECT value FROM rollup_state WHERE name = 'exposures')",
        key,
    ).fetchone()
    conn.execute(
        "INSERT INTO bandit_periods (experiment_key, seed, bounds, guard_seconds,"
        " last_exposed_at) VALUES (%s, %s, %s::timestamptz[], %s, %s)"
        " ON CONFLICT (experiment_key, seed) DO UPDATE SET bounds = EXCLUDED.bounds,"
        " guard_seconds = EXCLUDED.guard_seconds, last_exposed_at = EXCLUDED.last_exposed_at",
        (experiment_key, seed, bounds, guard.total_seconds(), last),
    )


def first_ratio_sums(conn: Any, pair: tuple[str, str, str, str], bounds: list[Any]) -> None:
    """A ratio's Σxy per period and variant from the units' current totals (its first sum)."""
    key, seed, numerator, denominator = pair
    conn.execute(
        "INSERT INTO period_ratio_stats (experiment_key, seed, numerator, denominator,"
        " variant_key, period, sum_xy)"
        " SELECT %(key)s, %(seed)s, %(numerator)s, %(denominator)s, a.variant_key,"
        " width_bucket(x.first_exposed_at, %(bounds)s::timestamptz[]), sum(a.y_total * b.y_total)"
        " FROM unit_outcomes a JOIN unit_outcomes b ON b.experiment_key = a.experiment_key"
        " AND b.seed = a.seed AND b.unit_id = a.unit_id AND b.metric = %(denominator)s"
        " JOIN exposures x ON x.experiment_key = a.experiment_key AND x.seed = a.seed"
        " AND x.unit_id = a.unit_id AND x.variant_key = a.variant_key"
        " WHERE a.experiment_key = %(key)s AND a.seed = %(seed)s AND a.metric = %(numerator)s"
        " GROUP BY 5, 6"
        " ON CONFLICT (experiment_key, seed, numerator, denominator, variant_key, period)"
        " DO UPDATE SET sum_xy = period_ratio_stats.sum_xy + EXCLUDED.sum_xy",
        {"key": key, "seed": seed, "numerator": numerator, "denominator": denominator,
         "bounds": bounds},
    )  # fmt: skip


def track_ratios(conn: Any, bounds: PeriodBounds, new_pairs: Collection[tuple[str, ...]]) -> None:
    """First per-period sums of ratio pairs the rollup started keeping this round (bandits')."""
    for pair in new_pairs:
        if (pair[0], pair[1]) in bounds:
            first_ratio_sums(conn, (pair[0], pair[1], pair[2], pair[3]),
                             list(bounds[(pair[0], pair[1])]))  # fmt: skip


def count_exposures(
    conn: Any, rows: Sequence[tuple[int, str, str, str, Any, datetime]], bounds: PeriodBounds,
    guard: timedelta,
) -> None:  # fmt: skip
    """Add a round's new exposures of the kept bandits to their periods' counts."""
    counts: Counter[tuple[str, str, str, int]] = Counter()
    settled: Counter[tuple[str, str, str, int]] = Counter()
    last: dict[tuple[str, str], datetime] = {}
    for _, key, seed, variant, _, at in rows:
        switches = bounds.get((key, seed))
        if switches is None:
            continue
        period = period_of(switches, at)
        counts[(key, seed, variant, period)] += 1
        settled[(key, seed, variant, period)] += int(
            period == 0 or at >= switches[period - 1] + guard
        )
        last[(key, seed)] = max(at, last.get((key, seed), at))
    if not counts:
        return
    with conn.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO period_exposure_counts (experiment_key, seed, variant_key, period, units,"
            " settled_units) VALUES (%s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (experiment_key, seed, variant_key, period) DO UPDATE SET"
            " units = period_exposure_counts.units + EXCLUDED.units,"
            " settled_units = period_exposure_counts.settled_units + EXCLUDED.settled_units",
            [(*k, n, settled[k]) for k, n in counts.items()],
        )
        cursor.executemany(
            "UPDATE bandit_periods SET last_exposed_at = greatest(last_exposed_at, %s)"
            " WHERE experiment_key = %s AND seed = %s",
            [(at, *k) for k, at in last.items()],
        )


def write_deltas(
    conn: Any, deltas: Mapping[PeriodKey, StatsDelta], ratio_deltas: Mapping[PeriodRatioKey, float]
) -> None:
    """Add a round's changes of the kept bandits' per-period sums."""
    if deltas:
        merge_rows(
            conn, "period_metric_stats",
            ("experiment_key", "seed", "variant_key", "metric", "period"), ("sum_y", "sum_y2"),
            [(*k, d.sum_y, d.sum_y2) for k, d in deltas.items()],
        )  # fmt: skip
    if ratio_deltas:
        merge_rows(
            conn, "period_ratio_stats",
            ("experiment_key", "seed", "numerator", "denominator", "variant_key", "period"),
            ("sum_xy",), [(*k, d) for k, d in ratio_deltas.items()],
        )  # fmt: skip
