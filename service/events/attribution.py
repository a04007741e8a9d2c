"""Attribute outcome events to exposures and turn them into sufficient-statistic deltas. Pure.

An outcome counts for the variant the unit was first exposed to, if it
occurred within the experiment's outcome window after that exposure. The
same metric within one window *before* exposure is the unit's CUPED
covariate. Units' metric totals are summed (count, continuous) or maxed
(binary); every change of a unit's totals is recorded in the day bucket of
the event that caused it, so summing buckets up to a day gives exact sums of
per-unit totals as of that day. Metrics with an outcome window also record
each change in the bucket of the unit's *exposure* day (its cohort), so an
analysis can sum the cohorts whose window has closed: mature units only.

A ratio metric's cross products (numerator times denominator, and with their pre-period
totals) are products of two metrics' totals of one unit: each change of either total adds
new product minus old product, with the other metric's current total, to the variant's
(and the unit's segments') ``ratio_deltas`` in the same event-day bucket. Squares and
products are not additive over increments, but these differences telescope: summed over
all changes they give the sum of the products of the units' final totals, exactly.

A bandit's changes are also kept by allocation period (``period_deltas``; a ratio's Σxy in
``period_ratio_deltas``): the period in force at the unit's first exposure, the number of
the experiment's switch times at or before it (``period_bounds``), as ``events.periods``.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from enum import StrEnum
from operator import attrgetter
from typing import NamedTuple


class Status(StrEnum):
    ATTRIBUTED = "attributed"
    PRE_PERIOD = "pre_period"
    OUTSIDE_WINDOW = "outside_window"
    UNEXPOSED = "unexposed"
    PENDING = "pending"


@dataclass(frozen=True)
class Exposure:
    variant_key: str
    first_exposed_at: datetime


class Event(NamedTuple):
    """One outcome event as the rollup reads it (a named tuple: the rollup makes one per row)."""

    event_pk: int
    experiment_key: str
    seed: str
    unit_id: str
    metric: str
    aggregation: str
    value: float
    occurred_at: datetime
    received_at: datetime
    previous_status: str = "new"


def classify(
    event: Event, exposure: Exposure | None, window: timedelta, now: datetime, grace: timedelta
) -> Status:
    """Where one event belongs; PENDING while its exposure may still be on its way."""
    if exposure is None:
        return Status.PENDING if now - event.received_at < grace else Status.UNEXPOSED
    start = exposure.first_exposed_at
    if start <= event.occurred_at <= start + window:
        return Status.ATTRIBUTED
    if start - window <= event.occurred_at < start:
        return Status.PRE_PERIOD
    return Status.OUTSIDE_WINDOW


UnitKey = tuple[str, str, str, str]  # experiment, seed, metric, unit
StatsKey = tuple[str, str, str, str, date]  # experiment, seed, variant, metric, bucket
SegmentKey = tuple[str, str, str, str, str, str, date]
"""experiment, seed, attribute, segment, variant, metric, bucket."""
UnitSegments = Mapping[tuple[str, str, str], tuple[tuple[str, str], ...]]
"""(experiment, seed, unit) -> its (attribute, segment) pairs."""
RatioPairs = Mapping[tuple[str, str], Collection[tuple[str, str]]]
"""(experiment, seed) -> the (numerator, denominator) pairs of its ratio metrics."""
RatioKey = tuple[str, str, str, str, str, str, str, date]
"""experiment, seed, numerator, denominator, attribute, segment, variant, bucket; attribute
and segment are '' for the whole experiment."""
WHOLE = ("", "")
PeriodKey = tuple[str, str, str, str, int]
"""experiment, seed, variant, metric, allocation period (0: before the first switch)."""
PeriodRatioKey = tuple[str, str, str, str, str, int]
"""experiment, seed, numerator, denominator, variant, allocation period."""
PeriodBounds = Mapping[tuple[str, str], Sequence[datetime]]
"""(experiment, seed) -> a bandit's switch times after its first allocation, in order."""
COHORT = ("abx.cohort", "")
"""The (attribute, segment) under which ``ratio_deltas`` holds a windowed ratio's changes by
exposure cohort (the key's date is then the unit's first-exposure day; attributes starting
with ``abx.`` are never segments)."""


@dataclass(slots=True)
class UnitTotals:
    variant_key: str
    y_total: float = 0.0
    x_total: float = 0.0


@dataclass(slots=True)
class StatsDelta:
    sum_y: float = 0.0
    sum_y2: float = 0.0
    sum_x: float = 0.0
    sum_x2: float = 0.0
    sum_xy: float = 0.0


@dataclass(slots=True)
class CrossDelta:
    """Changes of Σxy, Σx'y', Σxy' and Σx'y (x numerator, y denominator, ' pre-period)."""

    sum_xy: float = 0.0
    sum_xpyp: float = 0.0
    sum_xyp: float = 0.0
    sum_xpy: float = 0.0


@dataclass
class Rollup:
    totals: dict[UnitKey, UnitTotals] = field(default_factory=dict)
    deltas: dict[StatsKey, StatsDelta] = field(default_factory=lambda: defaultdict(StatsDelta))
    cohort_deltas: dict[StatsKey, StatsDelta] = field(
        default_factory=lambda: defaultdict(StatsDelta)
    )
    """The same changes keyed by the unit's first-exposure day (windowed metrics only)."""
    segment_deltas: dict[SegmentKey, StatsDelta] = field(
        default_factory=lambda: defaultdict(StatsDelta)
    )
    """The same changes (by event day) in each of the unit's segments."""
    ratio_deltas: dict[RatioKey, CrossDelta] = field(
        default_factory=lambda: defaultdict(CrossDelta)
    )
    """Changes of ratio cross products (by event day), whole experiment and per segment."""
    period_deltas: dict[PeriodKey, StatsDelta] = field(
        default_factory=lambda: defaultdict(StatsDelta)
    )
    """A bandit's changes by the allocation period of the unit's first exposure."""
    period_ratio_deltas: dict[PeriodRatioKey, float] = field(
        default_factory=lambda: defaultdict(float)
    )
    """A bandit's changes of a ratio's Σxy by allocation period."""


_by_time = attrgetter("occurred_at", "event_pk")


def _event_order(pair: tuple[Event, Status]) -> tuple[datetime, int]:
    return _by_time(pair[0])


def period_of(bounds: Sequence[datetime], first_exposed_at: datetime) -> int:
    """The allocation period in force at a first exposure: switches at or before it."""
    return bisect_right(bounds, first_exposed_at)


def _cross_change(
    changed_is_numerator: bool, old: UnitTotals, new: UnitTotals, other: UnitTotals
) -> CrossDelta:
    """The cross products' change when one part of a ratio changes and the other stands."""
    if changed_is_numerator:
        d_post, d_pre = new.y_total - old.y_total, new.x_total - old.x_total
        return CrossDelta(d_post * other.y_total, d_pre * other.x_total,
                          d_post * other.x_total, d_pre * other.y_total)  # fmt: skip
    d_post, d_pre = new.y_total - old.y_total, new.x_total - old.x_total
    return CrossDelta(other.y_total * d_post, other.x_total * d_pre,
                      other.y_total * d_pre, other.x_total * d_post)  # fmt: skip


def _combine(aggregation: str, current: float, value: float) -> float:
    return max(current, value) if aggregation == "max" else current + value


def apply_events(
    events: Iterable[tuple[Event, Status]],
    exposures: Mapping[tuple[str, str, str], Exposure],
    current_totals: Mapping[UnitKey, UnitTotals],
    cohort_metrics: Collection[tuple[str, str]] = (),
    unit_segments: UnitSegments | None = None,
    ratio_pairs: RatioPairs | None = None,
    period_bounds: PeriodBounds | None = None,
) -> Rollup:
    """Fold attributed and pre-period events into unit totals and per-bucket deltas.

    ``cohort_metrics`` names the (experiment, metric) pairs whose changes are also kept by
    exposure cohort; ``unit_segments`` the segments whose sums a unit's changes also go to;
    ``ratio_pairs`` the ratios whose cross products they change (``current_totals`` must then
    hold the unit's total of the other metric of each pair, where it has one);
    ``period_bounds`` the bandits whose changes are also kept by allocation period.
    """
    rollup = Rollup()
    ordered = sorted(
        ((e, s) for e, s in events if s in (Status.ATTRIBUTED, Status.PRE_PERIOD)),
        key=_event_order,
    )
    # One pass, the changes computed once per event and added to each place it counts in;
    # every sum gets the same additions in the same order as one place at a time would.
    windowed_metrics = set(cohort_metrics)
    segments_of = unit_segments or {}
    pairs_of = ratio_pairs or {}
    bounds_of = period_bounds or {}
    all_totals, deltas = rollup.totals, rollup.deltas
    cohort_deltas, segment_deltas = rollup.cohort_deltas, rollup.segment_deltas
    for event, status in ordered:
        experiment, seed, metric = event.experiment_key, event.seed, event.metric
        key = (experiment, seed, metric, event.unit_id)
        exposure = exposures[(experiment, seed, event.unit_id)]
        totals = all_totals.get(key)
        if totals is None:
            known = current_totals.get(key)
            totals = (
                UnitTotals(exposure.variant_key, known.y_total, known.x_total)
                if known
                else UnitTotals(exposure.variant_key)
            )
            all_totals[key] = totals
        variant = totals.variant_key
        old_y, old_x = totals.y_total, totals.x_total
        if status is Status.ATTRIBUTED:
            new_y, new_x = _combine(event.aggregation, old_y, event.value), old_x
            totals.y_total = new_y
        else:
            new_y, new_x = old_y, _combine(event.aggregation, old_x, event.value)
            totals.x_total = new_x
        d_y, d_y2 = new_y - old_y, new_y**2 - old_y**2
        d_x, d_x2, d_xy = new_x - old_x, new_x**2 - old_x**2, new_x * new_y - old_x * old_y
        first_exposed_at = exposure.first_exposed_at
        bucket = max(event.occurred_at, first_exposed_at).date()
        windowed = (experiment, metric) in windowed_metrics
        unit_places = segments_of.get((experiment, seed, event.unit_id), ())
        _add(deltas[(experiment, seed, variant, metric, bucket)], d_y, d_y2, d_x, d_x2, d_xy)
        if windowed:
            _add(cohort_deltas[(experiment, seed, variant, metric, first_exposed_at.date())],
                 d_y, d_y2, d_x, d_x2, d_xy)  # fmt: skip
        for attribute, segment in unit_places:
            _add(segment_deltas[(experiment, seed, attribute, segment, variant, metric, bucket)],
                 d_y, d_y2, d_x, d_x2, d_xy)  # fmt: skip
        bounds = bounds_of.get((experiment, seed))
        period = None if bounds is None else period_of(bounds, first_exposed_at)
        if period is not None:
            target = rollup.period_deltas[(experiment, seed, variant, metric, period)]
            target.sum_y += d_y
            target.sum_y2 += d_y2
        if (experiment, seed) in pairs_of:
            _add_cross(rollup, event, UnitTotals(variant, old_y, old_x), totals, bucket,
                       first_exposed_at.date() if windowed else None, current_totals,
                       unit_segments, ratio_pairs, period)  # fmt: skip
    return rollup


def _add(target: StatsDelta, d_y: float, d_y2: float, d_x: float, d_x2: float, d_xy: float) -> None:
    target.sum_y += d_y
    target.sum_y2 += d_y2
    target.sum_x += d_x
    target.sum_x2 += d_x2
    target.sum_xy += d_xy


def _add_cross(
    rollup: Rollup, event: Event, before: UnitTotals, after: UnitTotals, bucket: date,
    cohort: date | None, current_totals: Mapping[UnitKey, UnitTotals],
    unit_segments: UnitSegments | None, ratio_pairs: RatioPairs | None, period: int | None,
) -> None:  # fmt: skip
    """Add the change of every ratio cross product the event's metric is a part of; with a
    ``cohort`` (a windowed metric), also under :data:`COHORT` on the unit's exposure day;
    with a ``period`` (a bandit's), Σxy's change also under that allocation period."""
    pairs = (ratio_pairs or {}).get((event.experiment_key, event.seed), ())
    for numerator, denominator in pairs:
        if event.metric not in (numerator, denominator):
            continue
        other_metric = denominator if event.metric == numerator else numerator
        other_key = (event.experiment_key, event.seed, other_metric, event.unit_id)
        other = rollup.totals.get(other_key) or current_totals.get(other_key)
        change = _cross_change(event.metric == numerator, before, after,
                               other or UnitTotals(after.variant_key))  # fmt: skip
        if period is not None:
            rollup.period_ratio_deltas[
                (
                    event.experiment_key,
                    event.seed,
                    numerator,
                    denominator,
                    after.variant_key,
                    period,
                )
            ] += change.sum_xy
        places = [(*WHOLE, bucket), *((a, s, bucket) for a, s in (unit_segments or {}).get(
            (event.experiment_key, event.seed, event.unit_id), ()))]  # fmt: skip
        if cohort is not None:
            places.append((*COHORT, cohort))
        for attribute, segment, day in places:
            target = rollup.ratio_deltas[(event.experiment_key, event.seed, numerator,
                                          denominator, attribute, segment,
                                          after.variant_key, day)]  # fmt: skip
            target.sum_xy += change.sum_xy
            target.sum_xpyp += change.sum_xpyp
            target.sum_xyp += change.sum_xyp
            target.sum_xpy += change.sum_xpy
