"""A ratio's rolled-up sums against the per-unit computation, through the workers' analysis.

The rollup keeps a ratio's cross products per variant and day (``events/ratios.py``); the
analysis reads them in buckets. Here events arrive over three rollup rounds, some late (their
day already rolled up for other units), some sent twice, and the analysis
(``decisions.inputs.run_analysis``, what the workers run) is compared, now and as of a past
day, with the same ratio computed unit by unit in Python from the events themselves.
"""

from __future__ import annotations

import json
from dataclasses import astuple
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import numpy as np
import psycopg
import pytest

from analysis import cuped
from analysis.ratio_metric import RatioCrossSums, linearized_stats
from analysis.sufficient_stats import SufficientStats
from service.decisions.inputs import run_analysis
from service.decisions.segments import analyze_segments
from service.decisions.sequential import design_for
from service.events.ingest import ingest_rows
from service.events.ratios import configured_pairs_from
from service.events.rollup import metric_windows_from, roll_up_once, windows_from
from service.events.segments import segment_specs_from
from service.events.sums import ratio_since, ratio_sums
from service.experiments.schema import Experiment
from tests.experiment_files import minimal_experiment

KEY, SEED = "rr", "rr.v1"
GRACE = timedelta(hours=1)
METRICS = {
    "primary": {"name": "revenue_per_session", "type": "ratio", "numerator": "revenue",
                "denominator": "sessions"},
    "secondary": [{"name": "revenue", "type": "continuous"}, {"name": "sessions", "type": "count"}],
}  # fmt: skip
UNITS = 400  # per variant


def experiment() -> Experiment:
    return Experiment.model_validate(minimal_experiment(KEY, metrics=METRICS))


def at(day: date, hours: float) -> datetime:
    """Within 10:00-14:00 UTC, so the bucket's date is the same in any nearby time zone."""
    return datetime.combine(day, time(10), UTC) + timedelta(hours=hours)


class Units:
    """Exposed units with their events, and the per-unit truth the rollup must match."""

    def __init__(self, exposure_day: date, rng: np.random.Generator) -> None:
        self.exposure_day = exposure_day
        self.rng = rng
        self.events: list[tuple[Any, ...]] = []
        self.units = [(f"{v}{i}", v) for v in "ab" for i in range(UNITS)]

    def event(self, unit: str, metric: str, value: float, occurred: datetime) -> tuple[Any, ...]:
        row = (KEY, SEED, f"e{len(self.events)}", unit, metric, "sum", value, occurred,
               datetime.now(UTC), None)  # fmt: skip
        self.events.append(row)
        return row

    def day_events(self, units: list[tuple[str, str]], offset: int) -> list[tuple[Any, ...]]:
        """Sessions and revenue on the ``offset``-th day after exposure (-1: the pre-period)."""
        rows = []
        day = self.exposure_day + timedelta(days=offset)
        for unit, variant in units:
            lift = 1.3 if variant == "b" and offset >= 0 else 1.0
            for _ in range(int(self.rng.poisson(1.2))):
                when = at(day, 0.5 + float(self.rng.uniform(0, 3)))
                rows.append(self.event(unit, "sessions", 1.0, when))
                rows.append(self.event(unit, "revenue", float(self.rng.gamma(2.0, 3.0 * lift)),
                                       when))  # fmt: skip
        return rows

    def truth(self, through: date | None) -> dict[str, np.ndarray]:
        """Per variant: each unit's x, y, x', y' from the distinct events up to ``through``."""
        seen: dict[str, tuple[Any, ...]] = {row[2]: row for row in self.events}
        exposed = at(self.exposure_day, 0)
        index = {unit: i for i, (unit, _) in enumerate(self.units)}
        values = np.zeros((len(self.units), 4))
        for _, _, _, unit, metric, _, value, occurred, _, _ in seen.values():
            if through is not None and max(occurred, exposed).date() > through:
                continue
            post = occurred >= exposed
            column = (0 if metric == "revenue" else 1) + (0 if post else 2)
            values[index[unit], column] += value
        return {v: values[[i for i, (_, w) in enumerate(self.units) if w == v]] for v in "ab"}


def reference(units: np.ndarray) -> tuple[SufficientStats, SufficientStats, RatioCrossSums]:
    x, y, xp, yp = units.T
    n = len(x)
    return (
        SufficientStats(n, x.sum(), x @ x, xp.sum(), xp @ xp, x @ xp),
        SufficientStats(n, y.sum(), y @ y, yp.sum(), yp @ yp, y @ yp),
        RatioCrossSums(x @ y, xp @ yp, x @ yp, xp @ y),
    )


def check_read(conn: Any, truth: dict[str, np.ndarray], through: date | None) -> None:
    found = ratio_sums(conn, KEY, SEED, "revenue", "sessions", {"a": UNITS, "b": UNITS}, through)
    for variant in "ab":
        numerator, denominator, cross = reference(truth[variant])
        got = found[variant]
        for mine, theirs in ((got.numerator, numerator), (got.denominator, denominator),
                             (got.cross, cross)):  # fmt: skip
            assert astuple(mine) == pytest.approx(astuple(theirs), rel=1e-9)


def check_analysis(conn: Any, truth: dict[str, np.ndarray], through: date | None) -> None:
    """The workers' analysis of the ratio equals CUPED on the per-unit linearisation."""
    result, _ = run_analysis(conn, experiment(), {"a": 0.5, "b": 0.5}, through, use_history=False)
    [comparison] = [c for c in result.primary if c.metric == "revenue_per_session"]
    control, treatment = (linearized_stats(*reference(truth[v])) for v in "ab")
    expected = cuped.compare(control, treatment)
    assert comparison.control_mean == pytest.approx(control.mean, rel=1e-9)
    assert comparison.treatment_mean == pytest.approx(treatment.mean, rel=1e-9)
    assert comparison.cuped
    assert comparison.difference == pytest.approx(expected.difference, rel=1e-9)
    assert comparison.variance_reduction == pytest.approx(expected.variance_reduction, rel=1e-9)
    assert not [line for line in result.skipped if "revenue_per_session" in line]


def rollup(conn: Any, pairs: Any = None) -> None:
    windows = windows_from({KEY: experiment()})
    while roll_up_once(conn, windows, GRACE, ratio_pairs=pairs) not in (None, (0, 0)):
        pass


def test_rolled_up_ratio_equals_the_per_unit_computation(db: str) -> None:
    rng = np.random.default_rng(25)
    today = datetime.now(UTC).date()
    data = Units(today - timedelta(days=3), rng)
    first, second = data.units[::2], data.units[1::2]
    pairs = configured_pairs_from({KEY: experiment()})
    with psycopg.connect(db) as conn:
        with conn.cursor().copy("COPY exposures (experiment_key, seed, unit_id, variant_key,"
                                " first_exposed_at) FROM STDIN") as copy:  # fmt: skip
            for unit, variant in data.units:
                copy.write_row((KEY, SEED, unit, variant, at(data.exposure_day, 0)))
        # Round 1: half the units, pre-period and the first two days; some events sent twice.
        rows = [r for day in (-1, 0, 1) for r in data.day_events(first, day)]
        ingest_rows(conn, rows + rows[::7])
        conn.commit()
        rollup(conn, pairs)
        assert ratio_since(conn, KEY, SEED, "revenue", "sessions") == today
        # Round 2: the other half's same days arrive late; the first half's third day; the
        # first round's events again (a client retrying).
        rows = [r for day in (-1, 0, 1) for r in data.day_events(second, day)]
        rows += data.day_events(first, 2)
        ingest_rows(conn, rows + data.events[:50])
        conn.commit()
        rollup(conn, pairs)
        # Round 3: the second half's third day, later still.
        ingest_rows(conn, data.day_events(second, 2))
        conn.commit()
        rollup(conn, pairs)
        stored = conn.execute(
            "SELECT count(*) FROM outcomes WHERE experiment_key = %s", (KEY,)
        ).fetchone()
        assert stored is not None and stored[0] == len(data.events)  # duplicates dropped
        # The ratio is kept from the first round (since today), so a past day reads too.
        conn.execute("UPDATE ratio_pairs SET since = %s", (data.exposure_day,))
        for through in (None, data.exposure_day + timedelta(days=1)):
            truth = data.truth(through)
            check_read(conn, truth, through)
            check_analysis(conn, truth, through)
        # As of a day before the rollup kept the ratio, it waits and says why.
        conn.execute("UPDATE ratio_pairs SET since = %s", (today,))
        result, _ = run_analysis(conn, experiment(), {"a": 0.5, "b": 0.5}, data.exposure_day,
                                 use_history=False)  # fmt: skip
        assert not [c for c in result.primary if c.metric == "revenue_per_session"]
        assert any(f"kept since {today}" in line for line in result.skipped), result.skipped


def test_a_ratio_first_named_after_its_events_starts_from_the_unit_totals(db: str) -> None:
    """Rolled up before the YAML names the ratio: the first round after sums the units once."""
    rng = np.random.default_rng(26)
    data = Units(datetime.now(UTC).date() - timedelta(days=2), rng)
    with psycopg.connect(db) as conn:
        with conn.cursor().copy("COPY exposures (experiment_key, seed, unit_id, variant_key,"
                                " first_exposed_at) FROM STDIN") as copy:  # fmt: skip
            for unit, variant in data.units:
                copy.write_row((KEY, SEED, unit, variant, at(data.exposure_day, 0)))
        ingest_rows(conn, [r for day in (-1, 0) for r in data.day_events(data.units, day)])
        conn.commit()
        rollup(conn)  # no ratio named: no cross products kept
        assert ratio_since(conn, KEY, SEED, "revenue", "sessions") is None
        result, _ = run_analysis(conn, experiment(), {"a": 0.5, "b": 0.5}, use_history=False)
        assert "revenue_per_session: its cross products are not rolled up yet" in result.skipped
        pairs = configured_pairs_from({KEY: experiment()})
        rollup(conn, pairs)
        ingest_rows(conn, data.day_events(data.units, 1))  # then changes add their differences
        conn.commit()
        rollup(conn)  # a rollup that no longer names it still keeps a kept pair
        truth = data.truth(None)
        check_read(conn, truth, None)
        check_analysis(conn, truth, None)


def test_a_ratio_primary_per_segment_equals_the_per_unit_computation(db: str) -> None:
    """Segments of a ratio primary: first summed from the units (named after its events), then
    kept by the rollup through late events; each segment's comparison is the one computed
    from the segment's units directly."""
    segmented = Experiment.model_validate(
        minimal_experiment(KEY, metrics=METRICS, segments=["platform"])
    )
    rng = np.random.default_rng(27)
    data = Units(datetime.now(UTC).date() - timedelta(days=3), rng)
    platform = {unit: ("ios", "web", "android")[i % 3] for i, (unit, _) in enumerate(data.units)}
    windows = windows_from({KEY: segmented})
    specs = segment_specs_from({KEY: segmented})
    pairs = configured_pairs_from({KEY: segmented})

    def roll(named: bool) -> None:
        while roll_up_once(conn, windows, GRACE, segment_specs=specs,
                           ratio_pairs=pairs if named else None) not in (None, (0, 0)):  # fmt: skip
            pass

    with psycopg.connect(db) as conn:
        with conn.cursor().copy("COPY exposures (experiment_key, seed, unit_id, variant_key,"
                                " first_exposed_at) FROM STDIN") as copy:  # fmt: skip
            for unit, variant in data.units:
                copy.write_row((KEY, SEED, unit, variant, at(data.exposure_day, 0)))
        with conn.cursor().copy("COPY exposure_attributes (experiment_key, seed, unit_id,"
                                " attributes, exposed_at) FROM STDIN") as copy:  # fmt: skip
            for unit, _ in data.units:
                copy.write_row((KEY, SEED, unit, json.dumps({"platform": platform[unit]}),
                                at(data.exposure_day, 0)))  # fmt: skip
        first, second = data.units[::2], data.units[1::2]
        ingest_rows(conn, [r for day in (-1, 0) for r in data.day_events(first, day)])
        conn.commit()
        roll(named=False)
        roll(named=True)  # the first sum, per segment from the units
        rows = [r for day in (-1, 0, 1) for r in data.day_events(second, day)]
        ingest_rows(conn, rows + data.day_events(first, 1) + data.events[:40])
        conn.commit()
        roll(named=True)
        result, _ = run_analysis(conn, segmented, {"a": 0.5, "b": 0.5}, use_history=False)
    assert result.segments is not None
    truth = data.truth(None)
    names = {v: [u for u, w in data.units if w == v] for v in "ab"}
    units: dict[tuple[str, str], dict[str, int]] = {}
    stats: dict[tuple[str, str], dict[tuple[str, str], SufficientStats]] = {}
    for segment in ("ios", "web", "android"):
        for variant in "ab":
            mine = [i for i, u in enumerate(names[variant]) if platform[u] == segment]
            units.setdefault(("platform", segment), {})[variant] = len(mine)
            stats.setdefault(("platform", segment), {})[(variant, "revenue_per_session")] = (
                linearized_stats(*reference(truth[variant][mine]))
            )
    expected = analyze_segments(segmented, design_for(segmented), units, stats)
    assert expected is not None and len(expected.comparisons) == 3
    assert result.segments.units == expected.units
    assert not result.segments.skipped, result.segments.skipped
    for got, want in zip(result.segments.comparisons, expected.comparisons, strict=True):
        assert (got.segment, got.cuped) == (want.segment, want.cuped)
        for field in ("control_mean", "treatment_mean", "difference", "ci_low", "ci_high",
                      "p_value", "p_value_adjusted"):  # fmt: skip
            assert getattr(got, field) == pytest.approx(getattr(want, field), rel=1e-9), field


def test_a_windowed_ratio_reads_its_mature_units_only(db: str) -> None:
    """``window: 1d`` on the ratio and its parts: outcomes count within a day of exposure, and
    only units whose day has passed are analysed, with the cross products of those units."""
    windowed = {"name": "rps", "type": "ratio", "numerator": "revenue",
                "denominator": "sessions", "window": "1d"}  # fmt: skip
    parts = [{"name": "revenue", "type": "continuous", "window": "1d"},
             {"name": "sessions", "type": "count", "window": "1d"}]  # fmt: skip
    exp = Experiment.model_validate(
        minimal_experiment(KEY, metrics={"primary": windowed, "secondary": parts})
    )
    rng = np.random.default_rng(28)
    now = datetime.now(UTC)
    old = at(now.date() - timedelta(days=3), 0)
    units = [(f"{v}{i}", v, old if i % 4 else now - timedelta(hours=1)) for v in "ab"
             for i in range(UNITS)]  # fmt: skip
    events: list[tuple[Any, ...]] = []
    truth = {unit: np.zeros(4) for unit, _, _ in units}

    def emit(unit: str, exposed: datetime, offset: timedelta, counted: bool, column: int) -> None:
        sessions = float(1 + rng.poisson(1.0))
        revenue = float(rng.gamma(2.0 * sessions, 2.0))
        for metric, value in (("revenue", revenue), ("sessions", sessions)):
            events.append((KEY, SEED, f"w{len(events)}", unit, metric, "sum", value,
                           exposed + offset, now, None))  # fmt: skip
            if counted:
                truth[unit][column + (metric == "sessions")] += value

    for unit, _, exposed in units:
        emit(unit, exposed, -timedelta(hours=12), True, 2)  # pre-period: the covariate
        if exposed == old:
            emit(unit, exposed, timedelta(hours=float(rng.uniform(1, 20))), True, 0)
            emit(unit, exposed, timedelta(hours=30), False, 0)  # outside the window
        else:
            emit(unit, exposed, timedelta(minutes=10), True, 0)  # not mature yet
    windows = windows_from({KEY: exp})
    metric_windows = metric_windows_from({KEY: exp})
    pairs = configured_pairs_from({KEY: exp})

    def roll(named: bool) -> None:
        while roll_up_once(conn, windows, GRACE, metric_windows,
                           ratio_pairs=pairs if named else None) not in (None, (0, 0)):  # fmt: skip
            pass

    with psycopg.connect(db) as conn:
        with conn.cursor().copy("COPY exposures (experiment_key, seed, unit_id, variant_key,"
                                " first_exposed_at) FROM STDIN") as copy:  # fmt: skip
            for unit, variant, exposed in units:
                copy.write_row((KEY, SEED, unit, variant, exposed))
        half = len(events) // 2
        ingest_rows(conn, events[:half])
        conn.commit()
        roll(named=False)
        roll(named=True)  # the first sums, by exposure cohort too
        ingest_rows(conn, events[half:] + events[:30])
        conn.commit()
        roll(named=True)
        result, _ = run_analysis(conn, exp, {"a": 0.5, "b": 0.5}, use_history=False)
    mature = {v: np.array([truth[u] for u, w, e in units if w == v and e == old]) for v in "ab"}
    assert result.maturity["rps"].mature_units == {v: len(mature[v]) for v in "ab"}
    [comparison] = [c for c in result.primary if c.metric == "rps"]
    control, treatment = (linearized_stats(*reference(mature[v])) for v in "ab")
    expected = cuped.compare(control, treatment)
    assert comparison.control_units == len(mature["a"])
    assert comparison.control_mean == pytest.approx(control.mean, rel=1e-9)
    assert comparison.treatment_mean == pytest.approx(treatment.mean, rel=1e-9)
    assert comparison.cuped
    assert comparison.difference == pytest.approx(expected.difference, rel=1e-9)
    assert comparison.variance_reduction == pytest.approx(expected.variance_reduction, rel=1e-9)
