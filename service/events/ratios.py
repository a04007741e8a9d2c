"""The rollup's ratio cross products: which pairs it keeps, their first sums, their changes.

A ratio metric's analysis needs, per variant, Σxy, Σx'y', Σxy' and Σx'y over the units'
totals of numerator (x) and denominator (y), ' the pre-period: products of two metrics of one
unit, which the per-metric ``metric_stats`` cannot give. The rollup keeps them in
``ratio_stats`` as differences of products (``attribution.apply_events``), in the transaction
that updates the units' totals, so reading them costs variants times days, never units.

The pairs kept are those in ``ratio_pairs``. When the YAML names a ratio the table does not
hold yet, the rollup's next round (holding the rollup's lock, so no total changes meanwhile)
sums the products of the units' current totals once, into that day's bucket, and records the
pair: from then on every change adds its difference. That first sum is the one read that
grows with units; a pair is never dropped (a ratio removed from the YAML costs a few rows).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

from service.events.attribution import COHORT, WHOLE, CrossDelta, RatioKey, RatioPairs
from service.events.segments import SegmentSpecs, segments_of_units
from service.storage.staging import merge_rows

RatioPair = tuple[str, str, str, str]
"""experiment, seed, numerator, denominator."""
ConfiguredPairs = Callable[[], Collection[RatioPair]]
Windowed = Callable[[str, str], object]
"""(experiment, metric) -> its own outcome window, None without one."""


def configured_pairs_from(experiments: Mapping[str, Any]) -> ConfiguredPairs:
    """Every ratio metric's (experiment, seed, numerator, denominator), as the YAML now says."""

    def pairs() -> list[RatioPair]:
        return sorted(
            {
                (experiment.key, experiment.seed, metric.numerator, metric.denominator)
                for experiment in list(experiments.values())
                for metric in experiment.metrics.ratio_metrics()
            }
        )

    return pairs


_PARTS = (
    " FROM (SELECT unit_id, variant_key, y_total, x_total FROM unit_outcomes"
    "       WHERE experiment_key = %s AND seed = %s AND metric = %s) a"
    " FULL JOIN (SELECT unit_id, variant_key, y_total, x_total FROM unit_outcomes"
    "       WHERE experiment_key = %s AND seed = %s AND metric = %s) b USING (unit_id),"
    " LATERAL (SELECT coalesce(a.variant_key, b.variant_key), coalesce(a.y_total, 0),"
    "          coalesce(a.x_total, 0), coalesce(b.y_total, 0), coalesce(b.x_total, 0))"
    "          AS v(variant, x, xp, y, yp)"
)


def _first_sums(
    conn: Any, pair: RatioPair, counted_through: int, specs: SegmentSpecs | None
) -> dict[tuple[str, str, str], CrossDelta]:
    """The cross products of the units' current totals per (attribute, segment, variant).

    The whole experiment's are summed in PostgreSQL; segments need each unit's segment
    (``segments.py``), so with segments the units' products are summed here.
    """
    key, seed, numerator, denominator = pair
    parameters = (key, seed, numerator, key, seed, denominator)
    sums: dict[tuple[str, str, str], CrossDelta] = defaultdict(CrossDelta)
    if specs is None or not specs(key):
        for variant, *values in conn.execute(
            "SELECT variant, sum(x * y), sum(xp * yp), sum(x * yp), sum(xp * y)" + _PARTS
            + " GROUP BY variant", parameters,
        ):  # fmt: skip
            sums[(*WHOLE, variant)] = CrossDelta(*(float(v) for v in values))
        return sums
    rows = conn.execute("SELECT unit_id, variant, x, xp, y, yp" + _PARTS, parameters).fetchall()
    by_unit = segments_of_units(conn, [(key, seed, row[0]) for row in rows], counted_through,
                                specs)  # fmt: skip
    for unit, variant, x, xp, y, yp in rows:
        for attribute, segment in (WHOLE, *by_unit.get((key, seed, unit), ())):
            target = sums[(attribute, segment, variant)]
            target.sum_xy += x * y
            target.sum_xpyp += xp * yp
            target.sum_xyp += x * yp
            target.sum_xpy += xp * y
    return sums


def _first_cohort_sums(conn: Any, pair: RatioPair) -> dict[RatioKey, CrossDelta]:
    """A windowed ratio's cross products of the units' current totals by exposure cohort."""
    key, seed, numerator, denominator = pair
    found: dict[RatioKey, CrossDelta] = {}
    for variant, cohort, *values in conn.execute(
        "SELECT variant, cohort, sum(x * y), sum(xp * yp), sum(x * yp), sum(xp * y)"
        + _PARTS.replace(
            " USING (unit_id),",
            " USING (unit_id) JOIN (SELECT unit_id, min(first_exposed_at)::date AS cohort"
            " FROM exposures WHERE experiment_key = %s AND seed = %s GROUP BY unit_id) c"
            " USING (unit_id),",
        )
        + " GROUP BY variant, cohort",
        (key, seed, numerator, key, seed, denominator, key, seed),
    ):  # fmt: skip
        found[(*pair, *COHORT, variant, cohort)] = CrossDelta(*(float(v) for v in values))
    return found


def tracked_pairs(
    conn: Any,
    configured: ConfiguredPairs | None,
    counted_through: int,
    specs: SegmentSpecs | None = None,
    windows: Windowed | None = None,
    started: list[RatioPair] | None = None,
) -> RatioPairs:
    """The pairs the rollup keeps, after starting those the YAML names for the first time.

    Call within the rollup's transaction and lock: a first sum and the changes after it must
    see the same unit totals. A ratio of windowed parts (``windows``) also gets its first
    sums by exposure cohort. The pairs started this round are added to ``started``.
    """
    known = {
        tuple(row) for row in conn.execute(
            "SELECT experiment_key, seed, numerator, denominator FROM ratio_pairs"
        )
    }  # fmt: skip
    for pair in configured() if configured is not None else ():
        if pair in known:
            continue
        (today,) = conn.execute("SELECT now()::date").fetchone()
        first = _first_sums(conn, pair, counted_through, specs)
        write_deltas(conn, {
            (*pair, attribute, segment, variant, today): sums
            for (attribute, segment, variant), sums in first.items()
        })  # fmt: skip
        if windows is not None and windows(pair[0], pair[2]) is not None:
            write_deltas(conn, _first_cohort_sums(conn, pair))
        conn.execute(
            "INSERT INTO ratio_pairs (experiment_key, seed, numerator, denominator, since)"
            " VALUES (%s, %s, %s, %s, %s)",
            (*pair, today),
        )
        known.add(pair)
        if started is not None:
            started.append(pair)
    found: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for key, seed, numerator, denominator in sorted(known):
        found.setdefault((key, seed), []).append((numerator, denominator))
    return found


def partner_keys(
    keys: Iterable[tuple[str, str, str, str]], pairs: RatioPairs
) -> set[tuple[str, str, str, str]]:
    """The (experiment, seed, metric, unit) totals of the other part of each ratio touched."""
    found = set()
    for key, seed, metric, unit in keys:
        for numerator, denominator in pairs.get((key, seed), ()):
            if metric == numerator:
                found.add((key, seed, denominator, unit))
            elif metric == denominator:
                found.add((key, seed, numerator, unit))
    return found


def write_deltas(conn: Any, deltas: Mapping[RatioKey, CrossDelta]) -> None:
    """Add changes of the cross products to ``ratio_stats`` (by cohort: ``ratio_cohort_stats``)."""
    by_cohort = [(*k[:4], k[6], k[7], d.sum_xy, d.sum_xpyp, d.sum_xyp, d.sum_xpy)
                 for k, d in deltas.items() if k[4:6] == COHORT]  # fmt: skip
    deltas = {k: d for k, d in deltas.items() if k[4:6] != COHORT}
    sums = ("sum_xy", "sum_xpyp", "sum_xyp", "sum_xpy")
    if by_cohort:
        merge_rows(
            conn, "ratio_cohort_stats",
            ("experiment_key", "seed", "numerator", "denominator", "variant_key", "cohort"),
            sums, by_cohort,
        )  # fmt: skip
    if deltas:
        merge_rows(
            conn, "ratio_stats",
            ("experiment_key", "seed", "numerator", "denominator", "attribute", "segment",
             "variant_key", "bucket"),
            sums, [(*k, d.sum_xy, d.sum_xpyp, d.sum_xyp, d.sum_xpy) for k, d in deltas.items()],
        )  # fmt: skip
