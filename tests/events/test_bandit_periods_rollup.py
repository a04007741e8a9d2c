"""A bandit's rolled-up sums by allocation period against the per-unit computation.

The rollup keeps each period's units and sums (``events/periods.py``, migration 0029); the
reference is the scan of the exposures and the units' totals (``scan_period_sums``) and,
for a ratio's Σxy, the product of each unit's two totals. Hypothesis draws the rounds:
exposures arriving late with early times, events before their exposure (pending, then
attributed), events sent twice (dropped) or repeated under new ids (counted), pre-period
events, a max-aggregated metric, and switches appended ahead of the exposures filed (the
bounds grow), among them (the bandit is filed again) or before earlier switches.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.assignment.sync import allocation_history, append_allocation, sync_experiments
from service.events.ingest import ingest_rows
from service.events.periods import BanditPeriods, period_sums, scan_period_sums
from service.events.ratios import configured_pairs_from
from service.events.rollup import EVENT_CHUNK, EXPOSURE_CHUNK, roll_up_once, windows_from
from service.experiments.schema import Experiment
from tests.experiment_files import minimal_experiment

GUARD = timedelta(minutes=20)
GRACE = timedelta(hours=1)
VARIANTS = ("a", "b", "c")
EXAMPLES = itertools.count()


def bandit(key: str) -> Experiment:
    return Experiment.model_validate(minimal_experiment(
        key,
        variants=[{"key": v, "weight": round(1 / 3, 6) if v != "c" else 1 - 2 * round(1 / 3, 6)}
                  for v in VARIANTS],
        policy={"method": "bandit", "min_units": 1_000_000, "min_runtime_hours": 0},
        metrics={
            "primary": {"name": "conversion", "type": "binary"},
            "secondary": [
                {"name": "revenue_per_session", "type": "ratio", "numerator": "revenue",
                 "denominator": "sessions"},
                {"name": "revenue", "type": "continuous"},
                {"name": "sessions", "type": "count"},
            ],
        },
    ))  # fmt: skip


def roll(conn: Any, experiment: Experiment) -> None:
    kept = BanditPeriods(lambda: [(experiment.key, experiment.seed)], GUARD)
    pairs = configured_pairs_from({experiment.key: experiment})
    windows = windows_from({experiment.key: experiment})
    for _ in range(50):  # until a round is short of a full chunk (as ``run_until_idle``)
        done = roll_up_once(conn, windows, GRACE, ratio_pairs=pairs, bandits=kept)
        if done is not None and done[0] < EXPOSURE_CHUNK and done[1] < EVENT_CHUNK:
            return


def check(conn: Any, experiment: Experiment) -> None:
    """Rolled-up read (and that it was the rolled-up one) equals the scan and the unit products."""
    key, seed = experiment.key, experiment.seed
    history = allocation_history(conn, experiment)
    (stored,) = conn.execute(
        "SELECT bounds FROM bandit_periods WHERE experiment_key = %s AND seed = %s", (key, seed)
    ).fetchone()
    assert list(stored) == [at for _, at in history[1:]]  # the read below is the rolled-up one
    rolled = period_sums(conn, key, seed, history, GUARD)
    scanned = scan_period_sums(conn, key, seed, history, GUARD)
    assert len(rolled) == len(scanned) == len(history)
    cross: dict[tuple[int, str], float] = {}
    bounds = [at for _, at in history[1:]]
    for period, variant, product in conn.execute(
        "SELECT width_bucket(x.first_exposed_at, %s::timestamptz[]), a.variant_key,"
        " sum(a.y_total * b.y_total) FROM unit_outcomes a JOIN unit_outcomes b ON"
        " b.experiment_key = a.experiment_key AND b.seed = a.seed AND b.unit_id = a.unit_id"
        " JOIN exposures x ON x.experiment_key = a.experiment_key AND x.seed = a.seed"
        " AND x.unit_id = a.unit_id AND x.variant_key = a.variant_key WHERE a.experiment_key = %s AND a.seed = %s AND a.metric = 'revenue'"
        " AND b.metric = 'sessions' GROUP BY 1, 2",
        (bounds, key, seed),
    ):
        cross[(period, variant)] = float(product)
    for index, (mine, theirs) in enumerate(zip(rolled, scanned, strict=True)):
        assert mine.weights == theirs.weights and mine.starts_at == theirs.starts_at
        assert mine.units == theirs.units
        assert mine.settled_units == theirs.settled_units
        for variant, metric in set(mine.stats) | set(theirs.stats):
            got, expected = mine.stats.get((variant, metric)), theirs.stats.get((variant, metric))
            n = mine.units[variant]
            assert (got.n if got else n) == (expected.n if expected else n) == n
            assert (got.total if got else 0.0) == pytest.approx(
                expected.total if expected else 0.0, abs=1e-6)  # fmt: skip
            assert (got.total_squares if got else 0.0) == pytest.approx(
                expected.total_squares if expected else 0.0, abs=1e-6)  # fmt: skip
        for variant in VARIANTS:
            found = mine.cross.get((variant, "revenue", "sessions"), 0.0)
            assert found == pytest.approx(cross.get((index, variant), 0.0), abs=1e-6)


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(seed=st.integers(0, 2**32 - 1), rounds=st.integers(2, 3))
def test_rolled_up_periods_equal_the_per_unit_computation(db: str, seed: int, rounds: int) -> None:
    rng = np.random.default_rng(seed)
    experiment = bandit(f"bp{next(EXAMPLES)}")  # one database for every example
    key, exp_seed = experiment.key, experiment.seed
    with psycopg.connect(db, autocommit=True) as conn:
        sync_experiments(conn, [(experiment, "bp.yaml")], settle_seconds=0.0)
        (now,) = conn.execute("SELECT now()").fetchone()
        start = now - timedelta(hours=12)
        conn.execute("UPDATE allocations SET effective_at = %s WHERE experiment_key = %s",
                     (start - timedelta(hours=1), key))  # fmt: skip
        exposed: dict[str, tuple[str, datetime]] = {}
        sent: list[tuple[Any, ...]] = []
        for round_number in range(rounds):
            # A switch now and then, anywhere in the 14 hours: ahead of the exposures filed,
            # among them, or before earlier switches.
            if rng.random() < 0.7:
                weights = rng.dirichlet(np.ones(3))
                append_allocation(conn, experiment, dict(zip(VARIANTS, map(float, weights),
                                                            strict=True)), 0.0)  # fmt: skip
                when = start + timedelta(minutes=float(rng.uniform(0, 14 * 60)))
                conn.execute(
                    "UPDATE allocations SET effective_at = %s WHERE allocation_id ="
                    " (SELECT max(allocation_id) FROM allocations WHERE experiment_key = %s)",
                    (when, key),
                )
            units = [f"r{round_number}u{i}" for i in range(int(rng.integers(20, 60)))]
            rows = []
            for unit in units:
                variant = VARIANTS[int(rng.integers(3))]
                when = start + timedelta(minutes=float(rng.uniform(0, 12 * 60)))
                exposed[unit] = (variant, when)
                rows.append((key, exp_seed, unit, variant, when))
            # Some of this round's exposures arrive next round (their events wait, pending).
            late = set(rng.choice(len(rows), size=len(rows) // 4, replace=False).tolist())
            events = []
            for unit in list(exposed):
                if rng.random() < 0.5:
                    continue
                _, first = exposed[unit]
                for _ in range(int(rng.integers(1, 4))):
                    occurred = first + timedelta(minutes=float(rng.uniform(-60, 240)))
                    metric = ["conversion", "revenue", "sessions"][int(rng.integers(3))]
                    value = 1.0 if metric != "revenue" else float(rng.gamma(2.0, 3.0))
                    aggregation = "max" if metric == "conversion" else "sum"
                    events.append((key, exp_seed, f"e{len(sent) + len(events)}", unit, metric,
                                   aggregation, value, occurred, datetime.now(UTC), None))  # fmt: skip
            repeats = [(*e[:2], f"{e[2]}r", *e[3:]) for e in events[::5]]  # new ids: counted
            with conn.transaction():
                conn.cursor().executemany(
                    "INSERT INTO exposures (experiment_key, seed, unit_id, variant_key,"
                    " first_exposed_at) VALUES (%s, %s, %s, %s, %s)",
                    [r for i, r in enumerate(rows) if i not in late],
                )
                ingest_rows(conn, events + repeats + sent[::3])  # old ids again: dropped
            sent += events + repeats
            roll(conn, experiment)
            check(conn, experiment)
            with conn.transaction():
                conn.cursor().executemany(
                    "INSERT INTO exposures (experiment_key, seed, unit_id, variant_key,"
                    " first_exposed_at) VALUES (%s, %s, %s, %s, %s)",
                    [r for i, r in enumerate(rows) if i in late],
                )
            roll(conn, experiment)
            check(conn, experiment)


def test_a_read_of_a_bandit_not_kept_scans(db: str) -> None:
    """Without the rollup's rows (or with other switch times) the read is the scan's."""
    experiment = bandit("bpscan")
    with psycopg.connect(db, autocommit=True) as conn:
        sync_experiments(conn, [(experiment, "bp.yaml")], settle_seconds=0.0)
        (now,) = conn.execute("SELECT now()").fetchone()
        conn.execute(
            "INSERT INTO exposures (experiment_key, seed, unit_id, variant_key, first_exposed_at)"
            " SELECT %s, %s, 'u' || i, (ARRAY['a', 'b', 'c'])[1 + i %% 3], %s"
            " FROM generate_series(1, 30) AS i",
            (experiment.key, experiment.seed, now - timedelta(hours=1)),
        )
        roll_up_once(conn, windows_from({experiment.key: experiment}), GRACE)
        history = allocation_history(conn, experiment)
        found = period_sums(conn, experiment.key, experiment.seed, history, GUARD)
        assert found[0].units == {"a": 10, "b": 10, "c": 10}
        assert conn.execute("SELECT count(*) FROM bandit_periods").fetchone() == (0,)
        roll(conn, experiment)  # now kept; a read with another guard scans, same answer
        assert conn.execute("SELECT count(*) FROM bandit_periods").fetchone() == (1,)
        other = period_sums(conn, experiment.key, experiment.seed, history, GUARD * 2)
        assert other[0].units == found[0].units and other[0].cross == {}
