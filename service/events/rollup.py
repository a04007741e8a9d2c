"""Fold new exposures and outcome events into the sufficient-statistics tables.

One process at a time (a transaction-level advisory lock) reads a chunk of
unprocessed events, attributes them (``attribution``), and in the same
transaction updates unit totals, per-bucket sums and the events' status.
Exposures and predictions are read past a watermark, never beyond the rows
known to be committed (``write_fence``); outcomes are attributed only to
exposures already counted, so a variant's ``units`` always include every unit
whose outcomes are in its statistics. Cost grows with new events, and
reading the statistics afterwards grows with buckets, not with events.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from service.background import PeriodicThread
from service.events import periods, ratios, segments
from service.events.attribution import (
    Event,
    Exposure,
    PeriodBounds,
    RatioPairs,
    Status,
    UnitKey,
    UnitSegments,
    UnitTotals,
    apply_events,
    classify,
)
from service.events.latency import BIN_COUNT, bin_of
from service.events.periods import BanditPeriods
from service.events.ratios import ConfiguredPairs
from service.events.segments import SegmentSpecs
from service.experiments.schema import duration_hours
from service.observability import metrics
from service.storage.database import Database
from service.storage.fence import committed_through
from service.storage.staging import copy_binary, merge_rows

log = logging.getLogger(__name__)
ROLLUP_LOCK_KEY = 0x616278_03
EVENT_CHUNK = 50_000
PENDING_CHUNK = 10_000
EXPOSURE_CHUNK = 200_000
PARTITION_CHECK_SECONDS = 3600.0


def _roll_exposures(
    conn: Any,
    through: int,
    segment_specs: SegmentSpecs | None = None,
    bandits: BanditPeriods | None = None,
    bounds: PeriodBounds | None = None,
) -> tuple[int, int]:
    """Count new exposures per variant and day; return how many, and the pk counted through.

    Short of a full chunk, every exposure up to ``through`` has been read (the fence says
    none below it is still in flight), so the watermark moves to ``through`` itself.
    """
    (watermark,) = conn.execute(
        "SELECT value FROM rollup_state WHERE name = 'exposures'"
    ).fetchone()
    rows = conn.execute(
        "SELECT exposure_pk, experiment_key, seed, variant_key, first_exposed_at::date,"
        " first_exposed_at FROM exposures WHERE exposure_pk > %s AND exposure_pk <= %s"
        " ORDER BY exposure_pk LIMIT %s",
        (watermark, through, EXPOSURE_CHUNK),
    ).fetchall()
    counted_through = rows[-1][0] if len(rows) == EXPOSURE_CHUNK else max(watermark, through)
    if counted_through != watermark:
        conn.execute(
            "UPDATE rollup_state SET value = %s WHERE name = 'exposures'", (counted_through,)
        )
    if not rows:
        return 0, counted_through
    if segment_specs is not None:
        segments.count_exposures(conn, watermark, counted_through, segment_specs)
    if bandits is not None and bounds:
        periods.count_exposures(conn, rows, bounds, bandits.guard)
    counts = Counter((key, seed, variant, day) for _, key, seed, variant, day, _ in rows)
    with conn.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO exposure_counts (experiment_key, seed, variant_key, bucket, units)"
            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (experiment_key, seed, variant_key, bucket)"
            " DO UPDATE SET units = exposure_counts.units + EXCLUDED.units",
            [(*key, n) for key, n in counts.items()],
        )
    return len(rows), counted_through


def _roll_predictions(conn: Any, through: int) -> int:
    """Fold new served predictions into per-day model health (requests, fallbacks, latency)."""
    (watermark,) = conn.execute(
        "SELECT value FROM rollup_state WHERE name = 'predictions'"
    ).fetchone()
    rows = conn.execute(
        "SELECT prediction_id, experiment_key, variant_key, predicted_at::date, fallback, latency_ms"
        " FROM predictions WHERE prediction_id > %s AND prediction_id <= %s AND NOT shadow"
        " ORDER BY prediction_id LIMIT %s",
        (watermark, through, EXPOSURE_CHUNK),
    ).fetchall()
    if not rows:
        return 0
    health: dict[tuple[str, str, Any], tuple[int, int, list[int]]] = {}
    for _, key, variant, day, fallback, latency in rows:
        requests, fallbacks, counts = health.get((key, variant, day), (0, 0, [0] * BIN_COUNT))
        counts[bin_of(latency)] += 1
        health[(key, variant, day)] = (requests + 1, fallbacks + int(fallback), counts)
    with conn.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO model_health (experiment_key, variant_key, bucket, requests, fallbacks,"
            " latency_counts) VALUES (%s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (experiment_key, variant_key, bucket) DO UPDATE SET"
            " requests = model_health.requests + EXCLUDED.requests,"
            " fallbacks = model_health.fallbacks + EXCLUDED.fallbacks,"
            " latency_counts = (SELECT array_agg(a + b ORDER BY i) FROM unnest("
            "model_health.latency_counts, EXCLUDED.latency_counts) WITH ORDINALITY AS t(a, b, i))",
            [(*key, n, f, counts) for key, (n, f, counts) in health.items()],
        )
    conn.execute("UPDATE rollup_state SET value = %s WHERE name = 'predictions'", (rows[-1][0],))
    return len(rows)


def _load_events(conn: Any) -> list[Event]:
    """New events in order, plus a bounded slice of pending ones (still waiting for exposures).

    Pending events are read separately so that a large pending backlog can never starve the
    new ones behind it.
    """
    columns = (
        "SELECT event_pk, experiment_key, seed, unit_id, metric, aggregation, value, occurred_at,"
        " received_at, status FROM outcomes"
    )
    rows = conn.execute(
        f"{columns} WHERE status = 'new' ORDER BY event_pk LIMIT %s", (EVENT_CHUNK,)
    ).fetchall()
    rows += conn.execute(
        f"{columns} WHERE status = 'pending' ORDER BY event_pk LIMIT %s", (PENDING_CHUNK,)
    ).fetchall()
    return [Event(*row) for row in rows]


def _load_exposures(
    conn: Any, events: list[Event], counted_through: int
) -> dict[tuple[str, str, str], Exposure]:
    """The events' exposures among those already counted in ``exposure_counts``.

    An exposure committed after this round's count waits for the next round, so a unit's
    outcome is never in the statistics before the unit is in the variant's ``units``.
    """
    keys = sorted({(e.experiment_key, e.seed, e.unit_id) for e in events})
    rows = conn.execute(
        "SELECT x.experiment_key, x.seed, x.unit_id, x.variant_key, x.first_exposed_at"
        " FROM exposures x JOIN unnest(%s::text[], %s::text[], %s::text[]) AS k(e, s, u)"
        " ON x.experiment_key = k.e AND x.seed = k.s AND x.unit_id = k.u"
        " WHERE x.exposure_pk <= %s"
        " ORDER BY x.first_exposed_at DESC",
        ([k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys], counted_through),
    ).fetchall()
    # Descending order: the earliest exposure of a unit is written last and wins.
    return {(e, s, u): Exposure(v, at) for e, s, u, v, at in rows}


def _load_totals(conn: Any, keys: list[UnitKey]) -> dict[UnitKey, UnitTotals]:
    rows = conn.execute(
        "SELECT t.experiment_key, t.seed, t.metric, t.unit_id, t.variant_key, t.y_total, t.x_total"
        " FROM unit_outcomes t JOIN unnest(%s::text[], %s::text[], %s::text[], %s::text[])"
        " AS k(e, s, m, u) ON t.experiment_key = k.e AND t.seed = k.s AND t.metric = k.m"
        " AND t.unit_id = k.u",
        tuple([k[i] for k in keys] for i in range(4)),
    ).fetchall()
    return {(e, s, m, u): UnitTotals(v, y, x) for e, s, m, u, v, y, x in rows}


def _write(
    conn: Any,
    events: list[tuple[Event, Status]],
    exposures: Mapping[tuple[str, str, str], Exposure],
    totals: Mapping[UnitKey, UnitTotals],
    cohort_metrics: set[tuple[str, str]],
    unit_segments: UnitSegments | None = None,
    ratio_pairs: RatioPairs | None = None,
    period_bounds: PeriodBounds | None = None,
) -> None:
    rollup = apply_events(events, exposures, totals, cohort_metrics, unit_segments, ratio_pairs,
                          period_bounds)  # fmt: skip
    segments.write_stats(conn, rollup.segment_deltas)
    ratios.write_deltas(conn, rollup.ratio_deltas)
    periods.write_deltas(conn, rollup.period_deltas, rollup.period_ratio_deltas)
    merge_rows(
        conn, "unit_outcomes", UNIT_KEY, ("y_total", "x_total"),
        ((*key, t.variant_key, t.y_total, t.x_total) for key, t in rollup.totals.items()),
        add=False, kept=("variant_key",),
    )  # fmt: skip
    merge_rows(
        conn, "metric_stats", STATS_KEY, SUMS,
        ((*key, d.sum_y, d.sum_y2, d.sum_x, d.sum_x2, d.sum_xy)
         for key, d in rollup.deltas.items()),
    )  # fmt: skip
    if rollup.cohort_deltas:
        merge_rows(
            conn, "metric_cohort_stats", COHORT_KEY, SUMS,
            ((*key, d.sum_y, d.sum_y2, d.sum_x, d.sum_x2, d.sum_xy)
             for key, d in rollup.cohort_deltas.items()),
        )  # fmt: skip
    transitions: Counter[tuple[str, str]] = Counter()
    for event, status in events:
        if event.previous_status != status.value:
            transitions[(event.experiment_key, status.value)] += 1
            if event.previous_status == Status.PENDING.value:
                transitions[(event.experiment_key, Status.PENDING.value)] -= 1
    with conn.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO outcome_counts (experiment_key, status, events) VALUES (%s, %s, %s)"
            " ON CONFLICT (experiment_key, status)"
            " DO UPDATE SET events = outcome_counts.events + EXCLUDED.events",
            [(key, status, n) for (key, status), n in transitions.items() if n],
        )
    _write_statuses(conn, events, exposures)


UNIT_KEY = ("experiment_key", "seed", "metric", "unit_id")
STATS_KEY = ("experiment_key", "seed", "variant_key", "metric", "bucket")
COHORT_KEY = ("experiment_key", "seed", "variant_key", "metric", "cohort")
SUMS = ("sum_y", "sum_y2", "sum_x", "sum_x2", "sum_xy")


def _write_statuses(
    conn: Any,
    events: list[tuple[Event, Status]],
    exposures: Mapping[tuple[str, str, str], Exposure],
) -> None:
    """Set each event's status and attributed variant: COPY into a stage, one UPDATE."""
    conn.execute(
        "CREATE TEMP TABLE IF NOT EXISTS stage_rollup_statuses"
        " (event_pk bigint, status text, variant_key text) ON COMMIT DELETE ROWS"
    )

    def variant_of(event: Event) -> str | None:
        exposure = exposures.get((event.experiment_key, event.seed, event.unit_id))
        return None if exposure is None else exposure.variant_key

    copy_binary(
        conn, "stage_rollup_statuses", ("event_pk", "status", "variant_key"),
        ((event.event_pk, status.value, variant_of(event)) for event, status in events),
    )  # fmt: skip
    conn.execute(
        "WITH u AS (DELETE FROM stage_rollup_statuses RETURNING event_pk, status, variant_key)"
        " UPDATE outcomes o SET status = u.status, variant_key = u.variant_key"
        " FROM u WHERE o.event_pk = u.event_pk AND o.status IN ('new', 'pending')"
    )


MetricWindows = Callable[[str, str], timedelta | None]


def caught_up(done: tuple[int, int] | None) -> bool:
    """Whether a round of ``roll_up_once`` (its answer ``done``) left nothing it could have
    taken: no round ran (the lock is elsewhere), or fewer than a full chunk of exposures and
    of events were new."""
    return done is None or (done[0] < EXPOSURE_CHUNK and done[1] < EVENT_CHUNK)


_collector_lock = threading.Lock()
_collector_holders = [0, False]  # rounds holding the collector; whether it was on before


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Hold Python's cyclic garbage collector for one round (on again after the last one).

    A round makes a few hundred thousand short-lived tuples and rows and no reference
    cycles; each allocation burst would start collections that walk every object of the
    process, which cost about 40 % of ``apply_events``. Memory is still freed by reference
    counting; cycles made meanwhile by other threads wait until the round ends. Rounds of
    several threads (one holds the lock, the others find it taken) count: the first turns
    the collector off, the last one out turns it back on if it was on.
    """
    with _collector_lock:
        if _collector_holders[0] == 0:
            _collector_holders[1] = gc.isenabled()
            gc.disable()
        _collector_holders[0] += 1
    try:
        yield
    finally:
        with _collector_lock:
            _collector_holders[0] -= 1
            if _collector_holders[0] == 0 and _collector_holders[1]:
                gc.enable()


def roll_up_once(
    conn: Any,
    windows: Callable[[str], timedelta],
    grace: timedelta,
    metric_windows: MetricWindows | None = None,
    segment_specs: SegmentSpecs | None = None,
    ratio_pairs: ConfiguredPairs | None = None,
    bandits: BanditPeriods | None = None,
) -> tuple[int, int] | None:
    """One chunk of work in one transaction; None when another process holds the lock.

    ``metric_windows(experiment, metric)`` is a metric's own outcome window, if it has one:
    its outcomes count only within it, and are also summed by exposure cohort.
    ``segment_specs(experiment)`` are the attributes it is analysed by (``segments.py``).
    ``ratio_pairs()`` are the YAML's ratio metrics; the pairs already kept (``ratio_pairs``
    table) are kept whatever it says (``ratios.py``). ``bandits`` are the YAML's bandits, whose
    sums are also kept by allocation period (``periods.py``; those kept are kept whatever it
    says).
    """
    through = committed_through(conn)
    with _collector_paused(), conn.transaction():
        (locked,) = conn.execute(
            "SELECT pg_try_advisory_xact_lock(%s)", (ROLLUP_LOCK_KEY,)
        ).fetchone()
        if not locked:
            return None
        bounds = periods.track(conn, bandits)
        exposures_counted, counted_through = _roll_exposures(
            conn, through.exposures, segment_specs, bandits, bounds
        )
        exposures_done = exposures_counted + _roll_predictions(conn, through.predictions)
        started: list[ratios.RatioPair] = []
        pairs = ratios.tracked_pairs(
            conn, ratio_pairs, counted_through, segment_specs, metric_windows, started
        )
        periods.track_ratios(conn, bounds, started)
        if counted_through < through.exposures:
            # A backlog of exposures: outcomes wait until the exposures before them are
            # counted, so none is judged unexposed while its exposure is still unread.
            return exposures_done, 0
        events = _load_events(conn)
        if not events:
            return exposures_done, 0
        (now,) = conn.execute("SELECT now()").fetchone()
        exposures = _load_exposures(conn, events, counted_through)
        own = {
            (e.experiment_key, e.metric): metric_windows(e.experiment_key, e.metric)
            for e in events
        } if metric_windows is not None else {}  # fmt: skip
        # Looked up once per experiment, not per event (the YAML is the same all round).
        window_of = {key: windows(key) for key in {e.experiment_key for e in events}}
        classified = [
            (
                e,
                classify(
                    e,
                    exposures.get((e.experiment_key, e.seed, e.unit_id)),
                    own.get((e.experiment_key, e.metric)) or window_of[e.experiment_key],
                    now,
                    grace,
                ),
            )
            for e in events
        ]
        changed = {
            (e.experiment_key, e.seed, e.metric, e.unit_id)
            for e, s in classified
            if s in (Status.ATTRIBUTED, Status.PRE_PERIOD)
        }
        # A ratio's cross products need the unit's total of the other part too.
        keys = sorted(changed | ratios.partner_keys(changed, pairs))
        cohort_metrics = {pair for pair, window in own.items() if window is not None}
        by_unit = (
            segments.unit_segments(conn, events, counted_through, segment_specs)
            if segment_specs is not None else None
        )  # fmt: skip
        _write(conn, classified, exposures, _load_totals(conn, keys), cohort_metrics, by_unit,
               pairs, bounds)  # fmt: skip
        return exposures_done, len(events)


def rollup_lag(conn: Any) -> dict[str, float]:
    """Seconds since the oldest exposure and the oldest new outcome not yet counted (0: none).

    Outcomes waiting for their unit's exposure (``pending``) are not lag: they wait on purpose.
    """
    row = conn.execute(
        "SELECT (SELECT extract(epoch FROM now() - first_exposed_at) FROM exposures"
        "        WHERE exposure_pk > (SELECT value FROM rollup_state WHERE name = 'exposures')"
        "        ORDER BY exposure_pk LIMIT 1),"
        "       (SELECT extract(epoch FROM now() - received_at) FROM outcomes"
        "        WHERE status = 'new' ORDER BY event_pk LIMIT 1)"
    ).fetchone()
    return {
        "exposures": max(0.0, float(row[0] or 0.0)),
        "outcomes": max(0.0, float(row[1] or 0.0)),
    }


class RollupScheduler(PeriodicThread):
    """Run the rollup every ``interval`` seconds in this process (whichever process gets the lock)."""

    def __init__(
        self,
        database: Database,
        windows: Callable[[str], timedelta],
        grace: timedelta,
        interval: float,
        metric_windows: MetricWindows | None = None,
        segment_specs: SegmentSpecs | None = None,
        ratio_pairs: ConfiguredPairs | None = None,
        bandits: BanditPeriods | None = None,
    ) -> None:
        super().__init__("abx-rollup", interval, join_timeout=3.0)
        self._ratio_pairs = ratio_pairs
        self._bandits = bandits
        self._database = database
        self._windows = windows
        self._metric_windows = metric_windows
        self._segment_specs = segment_specs
        self._grace = grace
        self._next_partition_check = 0.0

    def run_until_idle(self, max_rounds: int = 1000) -> None:
        """Roll up everything that is there now (for tests, CLI and benchmarks)."""
        for _ in range(max_rounds):
            with self._database.pool.connection(timeout=5.0) as conn:
                done = self._roll_up(conn)
            if caught_up(done):
                return

    def tick(self) -> None:
        try:
            with self._database.pool.connection(timeout=1.0) as conn:
                if time.monotonic() >= self._next_partition_check:
                    # Months of outcome partitions exist ahead; keep it so as time passes.
                    conn.execute("SELECT abx_ensure_outcome_partitions()")
                    self._next_partition_check = time.monotonic() + PARTITION_CHECK_SECONDS
                self._roll_up(conn)
        except Exception as error:  # the database is away: the next tick tries again
            log.warning("rollup failed, will retry: %s", error)

    def _roll_up(self, conn: Any) -> tuple[int, int] | None:
        """One round with this process's configuration, and its success and lag reported.

        None when another process holds the rollup: that one reports the lag.
        """
        done = roll_up_once(
            conn,
            self._windows,
            self._grace,
            self._metric_windows,
            self._segment_specs,
            self._ratio_pairs,
            self._bandits,
        )
        if done is not None:
            metrics.ROLLUP_LAST_SUCCESS.set(time.time())
            for stream, seconds in rollup_lag(conn).items():
                metrics.ROLLUP_LAG.labels(stream).set(seconds)
        return done


def windows_from(experiments: Mapping[str, Any]) -> Callable[[str], timedelta]:
    def window(key: str) -> timedelta:
        experiment = experiments.get(key)
        hours = experiment.outcome_window_hours if experiment is not None else 168.0
        return timedelta(hours=hours)

    return window


def metric_windows_from(experiments: Mapping[str, Any]) -> MetricWindows:
    """Each metric's own outcome window (``window: 7d`` in its YAML), or None."""

    def window(key: str, metric: str) -> timedelta | None:
        experiment = experiments.get(key)
        if experiment is None:
            return None
        for candidate in experiment.metrics.all_metrics():
            if candidate.name == metric and candidate.window is not None:
                return timedelta(hours=duration_hours(candidate.window))
        return None

    return window
