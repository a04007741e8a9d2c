"""Batch assignment through the serving edge: stored first assignments read in one query,
first assignments and exposures written as the per-unit path writes them, against PostgreSQL.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from service.app import Runtime, build_runtime
from service.assignment.core import Reason, assign
from service.assignment.sticky import ASSIGNMENTS, EXPOSURES, StickyStore
from service.settings import Settings
from service.storage.database import Database
from service.storage.writer import BatchWriter
from tests.conftest import wait_for
from tests.experiment_files import minimal_experiment, write_experiment

BY_HAND = 3600  # flush interval: the tests flush by hand


def rows(db: str, table: str) -> dict[str, str]:
    with psycopg.connect(db) as conn:
        found = conn.execute(
            f"SELECT unit_id, variant_key FROM {table} WHERE experiment_key = 'batch_sticky'"
        ).fetchall()
    return {unit: variant for unit, variant in found}


def test_batch_keeps_stored_assignments_after_a_weight_change_and_records_new_ones(
    db: str, tmp_path: Path, runtime_with_weights: Callable[..., Runtime]
) -> None:
    first = runtime_with_weights(
        tmp_path / "a", "batch_sticky", 0.5, 0.5, flush_interval_seconds=BY_HAND
    )
    old_units = [f"old-{i}" for i in range(300)]
    seen = {unit: first.assignments.assign("batch_sticky", unit, {}).variant for unit in old_units}
    assert first.writer.flush()

    second = runtime_with_weights(
        tmp_path / "b", "batch_sticky", 0.9, 0.1, flush_interval_seconds=BY_HAND
    )

    def switched() -> bool:
        current = second.registry.get("batch_sticky")
        return current is not None and current.allocation.weights == (0.9, 0.1)

    assert wait_for(switched, timeout=10)
    compiled = second.registry.get("batch_sticky")
    assert compiled is not None and compiled.other_bounds  # history: lookups are needed

    new_units = [f"new-{i}" for i in range(2000)]
    units = old_units + new_units
    batch = second.assignments.assign_batch("batch_sticky", units)
    variants, reasons = batch.variants().tolist(), batch.reasons().tolist()
    # Every stored unit keeps its first variant, whatever the new weights say.
    assert variants[: len(old_units)] == [seen[u] for u in old_units]
    assert set(reasons[: len(old_units)]) <= {Reason.STICKY.value, Reason.HASHED.value}
    assert Reason.STICKY.value in reasons[: len(old_units)]
    # The per-unit path of a third process answers the same for every unit.
    third = runtime_with_weights(
        tmp_path / "c", "batch_sticky", 0.9, 0.1, flush_interval_seconds=BY_HAND
    )
    assert wait_for(lambda: third.registry.get("batch_sticky").allocation.weights  # type: ignore[union-attr]
                    == (0.9, 0.1), timeout=10)  # fmt: skip
    scalar = [third.assignments.assign("batch_sticky", unit, {}) for unit in units]
    assert variants == [a.variant for a in scalar]
    assert reasons == [a.reason.value for a in scalar]
    fresh = variants[len(old_units) :]
    assert 0.87 < fresh.count("a") / len(fresh) < 0.93
    # The batch's first assignments and exposures reach PostgreSQL like the scalar path's.
    assert second.writer.flush()
    stored = rows(db, ASSIGNMENTS.table)
    exposed = rows(db, EXPOSURES.table)
    for unit, variant, reason in zip(units, variants, reasons, strict=True):
        if reason == Reason.HASHED.value:
            assert stored[unit] == variant and exposed[unit] == variant
    assert {u for u, r in zip(units, reasons, strict=True) if r == Reason.HASHED.value} <= set(
        stored
    )


def test_bulk_lookup_reads_once_and_a_failed_lookup_treats_units_as_new(db: str) -> None:
    database = Database(db)
    database.open()
    try:
        writer = BatchWriter(database, {s.table: s for s in (ASSIGNMENTS, EXPOSURES)})
        now = datetime.now(UTC)
        with (
            psycopg.connect(db, autocommit=True) as conn,
            conn.cursor().copy(
                "COPY assignments (experiment_key, seed, unit_id, variant_key, assigned_at)"
                " FROM STDIN"
            ) as copy,
        ):
            for i in range(500):
                copy.write_row(("bulk", "bulk.v1", f"u{i}", "b" if i % 2 else "a", now))
        store = StickyStore(database, writer, cache_size=100, lookup_timeout=5.0)
        asked = [f"u{i}" for i in range(0, 1000, 3)]
        found = store.stored_variants("bulk", "bulk.v1", asked)
        assert found == {f"u{i}": ("b" if i % 2 else "a") for i in range(0, 500, 3)}
        assert store.stored_variants("other", "bulk.v1", asked) == {}
        assert store.stored_variants("bulk", "bulk.v1", []) == {}
        assert store.lookup_failures == 0
    finally:
        database.close()

    # A store that cannot be reached in time: the units are new (as one failed lookup is),
    # the failure is counted, and the cached ones are still answered.
    away = Database("postgresql://postgres@127.0.0.1:9/none")
    away.open()
    try:
        store = StickyStore(away, BatchWriter(away, {}), cache_size=10, lookup_timeout=0.3)
        store._remember(("bulk", "bulk.v1", "u1"), "b")
        started = time.monotonic()
        assert store.stored_variants("bulk", "bulk.v1", ["u1", "u2"]) == {"u1": "b"}
        assert store.lookup_failures == 1
        assert time.monotonic() - started < 5
    finally:
        away.close()


HOLDOUT = """\
key: launches
description: d
owner: o
share: 0.1
scope: all
start: 2026-01-01
metrics:
  - {name: conversion, type: binary}
"""


def test_batch_records_holdout_exposures_and_segments_like_the_per_unit_path(
    db: str, tmp_path: Path, runtimes: list[Runtime]
) -> None:
    folder = tmp_path / "config"
    write_experiment(folder, minimal_experiment("batch_sticky", coverage=0.8,
                                                segments=["platform"]))  # fmt: skip
    (folder / "holdouts").mkdir()
    (folder / "holdouts" / "launches.yaml").write_text(HOLDOUT, encoding="utf-8")
    runtime = build_runtime(Settings(database_url=db, experiments=folder,
                                     data_dir=folder / "data", flush_interval_seconds=BY_HAND))  # fmt: skip
    runtimes.append(runtime)
    units = [f"user-{i}" for i in range(3000)]
    attributes = [{"platform": ("ios", "web")[i % 2]} for i in range(3000)]
    batch = runtime.assignments.assign_batch("batch_sticky", units, lambda: attributes)
    assert runtime.writer.flush()

    compiled = runtime.registry.get("batch_sticky")
    assert compiled is not None
    expected = [
        assign(compiled, u, a, lambda: None) for u, a in zip(units, attributes, strict=True)
    ]
    assert [batch.assignment(i) for i in range(len(units))] == expected
    wanted = {("batch_sticky", u, a.variant) for u, a in zip(units, expected, strict=True)
              if a.exposed}  # fmt: skip
    wanted |= {("launches", u, a.holdout.group) for u, a in zip(units, expected, strict=True)
               if a.holdout is not None}  # fmt: skip
    found: dict[str, Any] = {}

    def written() -> bool:
        # The writer's own thread may hold a batch in flight (5000 rows wake it) while
        # flush() takes the rest: wait for both to commit.
        runtime.writer.flush()
        with psycopg.connect(db) as conn:
            found["exposures"] = set(
                conn.execute(
                    "SELECT experiment_key, unit_id, variant_key FROM exposures"
                ).fetchall()
            )
            found["segments"] = dict(conn.execute(
                "SELECT unit_id, attributes FROM exposure_attributes").fetchall())  # fmt: skip
        return bool(found["exposures"] == wanted)

    wait_for(written, timeout=15)
    exposures, segments = found["exposures"], found["segments"]
    assert exposures == wanted
    assert {group for key, _, group in exposures if key == "launches"} == {"holdout", "rest"}
    assert {r.reason for r in expected} >= {Reason.HOLDOUT, Reason.NOT_IN_COVERAGE, Reason.HASHED}
    for unit, attrs, answer in zip(units, attributes, expected, strict=True):
        if answer.exposed:
            recorded = segments[unit]
            recorded = json.loads(recorded) if isinstance(recorded, str) else recorded
            assert recorded["platform"] == attrs["platform"]
        else:
            assert unit not in segments
