"""The rollup per segment: exposures and sufficient statistics by attribute value, and their reads.

The rollup (``rollup.py``) calls in here in its own transaction: while counting exposures,
each one that recorded segment attributes (``exposure_attributes``) is counted in its
segment of every attribute the experiment analyses by, and values get a bucket of their
own by the rule of ``experiments/segments.py``; while folding outcomes, every change of a
unit's totals is also added to its segments' sums. The cost is that of the rows the rollup
reads anyway (one join per chunk), and reading the sums costs segments times days, never
events. An attribute missing from a unit's recorded attributes (added to the YAML after the
unit was counted) is left out of both, so a segment's sums are over its counted units.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping
from datetime import date
from typing import Any

from analysis.sufficient_stats import SufficientStats
from service.events.attribution import Event, SegmentKey, StatsDelta, UnitSegments
from service.experiments.schema import SegmentAttribute
from service.experiments.segments import OTHER, admits, counted_attributes, segment_of
from service.observability import metrics
from service.storage.staging import merge_rows

SegmentSpecs = Callable[[str], tuple[SegmentAttribute, ...]]
Admitted = dict[
    tuple[str, str, str], dict[str, int]
]  # (experiment, seed, attribute) -> value -> pk


def segment_specs_from(experiments: Mapping[str, Any]) -> SegmentSpecs:
    """Each experiment's counted attributes as the YAML now says (none for an unknown key)."""

    def specs(key: str) -> tuple[SegmentAttribute, ...]:
        experiment = experiments.get(key)
        return counted_attributes(experiment) if experiment is not None else ()

    return specs


def _admitted(conn: Any, pairs: Collection[tuple[str, str]]) -> Admitted:
    rows = conn.execute(
        "SELECT v.experiment_key, v.seed, v.attribute, v.value, v.since_exposure_pk"
        " FROM segment_values v JOIN unnest(%s::text[], %s::text[]) AS k(e, s)"
        " ON v.experiment_key = k.e AND v.seed = k.s",
        ([p[0] for p in pairs], [p[1] for p in pairs]),
    ).fetchall()
    found: Admitted = {}
    for key, seed, attribute, value, since in rows:
        found.setdefault((key, seed, attribute), {})[value] = int(since)
    return found


def count_exposures(conn: Any, after_pk: int, through_pk: int, specs: SegmentSpecs) -> int:
    """Count the exposures ``after_pk < pk <= through_pk`` in their segments; return how many."""
    rows = conn.execute(
        "SELECT x.exposure_pk, x.experiment_key, x.seed, x.variant_key,"
        " x.first_exposed_at::date, a.attributes FROM exposures x JOIN exposure_attributes a"
        " ON a.experiment_key = x.experiment_key AND a.seed = x.seed AND a.unit_id = x.unit_id"
        " WHERE x.exposure_pk > %s AND x.exposure_pk <= %s ORDER BY x.exposure_pk",
        (after_pk, through_pk),
    ).fetchall()
    if not rows:
        return 0
    admitted = _admitted(conn, {(row[1], row[2]) for row in rows})
    new_values: list[tuple[str, str, str, str, int]] = []
    counts: Counter[tuple[str, str, str, str, str, date]] = Counter()
    buckets: Counter[tuple[str, str]] = Counter()
    for pk, key, seed, variant, day, attributes in rows:
        for spec in specs(key):
            if spec.attribute not in attributes:
                continue
            value = attributes[spec.attribute]
            known = admitted.setdefault((key, seed, spec.attribute), {})
            if admits(spec, known, value):
                known[value] = pk
                new_values.append((key, seed, spec.attribute, value, pk))
            segment = segment_of(spec, known, value, pk)
            counts[(key, seed, spec.attribute, segment, variant, day)] += 1
            buckets[(key, "other" if segment == OTHER else "own")] += 1
    with conn.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO segment_values (experiment_key, seed, attribute, value,"
            " since_exposure_pk) VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            new_values,
        )
        cursor.executemany(
            "INSERT INTO segment_exposure_counts (experiment_key, seed, attribute, segment,"
            " variant_key, bucket, units) VALUES (%s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (experiment_key, seed, attribute, segment, variant_key, bucket)"
            " DO UPDATE SET units = segment_exposure_counts.units + EXCLUDED.units",
            [(*k, n) for k, n in counts.items()],
        )
    for (key, bucket), n in buckets.items():
        metrics.SEGMENT_EXPOSURES.labels(key, bucket).inc(n)
    return len(rows)


def unit_segments(
    conn: Any, events: Iterable[Event], counted_through: int, specs: SegmentSpecs
) -> UnitSegments:
    """The segments of the events' units, as their exposures were counted."""
    analysed = {key: bool(specs(key)) for key in {e.experiment_key for e in events}}
    keys = sorted(
        {(e.experiment_key, e.seed, e.unit_id) for e in events if analysed[e.experiment_key]}
    )
    return segments_of_units(conn, keys, counted_through, specs)


def segments_of_units(
    conn: Any, keys: list[tuple[str, str, str]], counted_through: int, specs: SegmentSpecs
) -> UnitSegments:
    """The segments of these (experiment, seed, unit)s, as their exposures were counted."""
    if not keys:
        return {}
    rows = conn.execute(
        "SELECT x.experiment_key, x.seed, x.unit_id, x.exposure_pk, a.attributes"
        " FROM exposures x JOIN unnest(%s::text[], %s::text[], %s::text[]) AS k(e, s, u)"
        " ON x.experiment_key = k.e AND x.seed = k.s AND x.unit_id = k.u"
        " JOIN exposure_attributes a ON a.experiment_key = x.experiment_key"
        " AND a.seed = x.seed AND a.unit_id = x.unit_id"
        " WHERE x.exposure_pk <= %s ORDER BY x.first_exposed_at DESC",
        ([k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys], counted_through),
    ).fetchall()
    admitted = _admitted(conn, {(k[0], k[1]) for k in keys})
    found: dict[tuple[str, str, str], tuple[tuple[str, str], ...]] = {}
    # Descending order: the earliest exposure (the one attribution uses) is written last.
    specs_of = {key: specs(key) for key in {k[0] for k in keys}}
    for key, seed, unit, pk, attributes in rows:
        found[(key, seed, unit)] = tuple(
            (spec.attribute, segment_of(spec, admitted.get((key, seed, spec.attribute), {}),
                                        attributes[spec.attribute], pk))
            for spec in specs_of[key]
            if spec.attribute in attributes
        )  # fmt: skip
    return found


def write_stats(conn: Any, deltas: Mapping[SegmentKey, StatsDelta]) -> None:
    """Add the rollup's per-segment changes to ``segment_metric_stats``."""
    if not deltas:
        return
    merge_rows(
        conn, "segment_metric_stats",
        ("experiment_key", "seed", "attribute", "segment", "variant_key", "metric", "bucket"),
        ("sum_y", "sum_y2", "sum_x", "sum_x2", "sum_xy"),
        ((*k, d.sum_y, d.sum_y2, d.sum_x, d.sum_x2, d.sum_xy) for k, d in deltas.items()),
    )  # fmt: skip


SegmentDays = dict[tuple[str, str], dict[date, dict[str, int]]]
"""(attribute, segment) -> day of first exposure -> variant -> units."""
SegmentUnits = dict[tuple[str, str], dict[str, int]]
"""(attribute, segment) -> variant -> units."""
SegmentStats = dict[tuple[str, str], dict[tuple[str, str], SufficientStats]]
"""(attribute, segment) -> (variant, metric) -> sufficient statistics."""


def segment_units(
    conn: Any, experiment_key: str, seed: str, through: date | None = None
) -> SegmentUnits:
    """Exposed units per segment and variant (the segments' ``n``)."""
    found: SegmentUnits = {}
    for attribute, segment, variant, units in conn.execute(
        "SELECT attribute, segment, variant_key, sum(units)::bigint FROM segment_exposure_counts"
        " WHERE experiment_key = %s AND seed = %s AND (%s::date IS NULL OR bucket <= %s::date)"
        " GROUP BY attribute, segment, variant_key",
        (experiment_key, seed, through, through),
    ):
        found.setdefault((attribute, segment), {})[variant] = int(units)
    return found


def segment_units_by_day(
    conn: Any, experiment_key: str, seed: str, through: date | None = None
) -> SegmentDays:
    """Exposed units per segment, day and variant (the SRM drill-down's counts)."""
    found: SegmentDays = {}
    for attribute, segment, bucket, variant, units in conn.execute(
        "SELECT attribute, segment, bucket, variant_key, units FROM segment_exposure_counts"
        " WHERE experiment_key = %s AND seed = %s AND (%s::date IS NULL OR bucket <= %s::date)",
        (experiment_key, seed, through, through),
    ):
        days = found.setdefault((attribute, segment), {})
        days.setdefault(bucket, {})[variant] = int(units)
    return found


def segment_stats(
    conn: Any, experiment_key: str, seed: str, units: SegmentUnits, metrics: list[str],
    through: date | None = None,
) -> SegmentStats:  # fmt: skip
    """Each segment's sums per (variant, metric) of ``metrics``; counted units without outcomes
    are zeros."""
    found: SegmentStats = {}
    for attribute, segment, variant, metric, *values in conn.execute(
        "SELECT attribute, segment, variant_key, metric, sum(sum_y), sum(sum_y2), sum(sum_x),"
        " sum(sum_x2), sum(sum_xy) FROM segment_metric_stats WHERE experiment_key = %s"
        " AND seed = %s AND metric = ANY(%s) AND (%s::date IS NULL OR bucket <= %s::date)"
        " GROUP BY attribute, segment, variant_key, metric",
        (experiment_key, seed, metrics, through, through),
    ):
        n = units.get((attribute, segment), {}).get(variant, 0)
        if n > 0:
            found.setdefault((attribute, segment), {})[(variant, metric)] = SufficientStats(
                n, *(float(v) for v in values)
            )
    return found
