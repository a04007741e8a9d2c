"""Where first assignments are kept: an in-process cache in front of PostgreSQL.

Lookups happen only when the allocation history could change a unit's
variant (see ``assignment.assign``); first assignments and exposures are
buffered through the ``BatchWriter``, never written on the request path.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np

from service.assignment.batch import NO_HOLDOUT, BatchAssignment
from service.assignment.core import Assignment
from service.observability import metrics
from service.storage.database import Database
from service.storage.writer import BatchWriter, Stream

log = logging.getLogger(__name__)

ASSIGNMENTS = Stream(
    table="assignments",
    columns=("experiment_key", "seed", "unit_id", "variant_key", "assigned_at"),
    insert_from_stage=(
        "INSERT INTO assignments (experiment_key, seed, unit_id, variant_key, assigned_at)"
        " SELECT experiment_key, seed, unit_id, variant_key, assigned_at FROM {stage}"
        " ON CONFLICT DO NOTHING"
    ),
)
EXPOSURES = Stream(
    table="exposures",
    columns=("experiment_key", "seed", "unit_id", "variant_key", "first_exposed_at"),
    insert_from_stage=(
        "INSERT INTO exposures (experiment_key, seed, unit_id, variant_key, first_exposed_at)"
        " SELECT DISTINCT ON (experiment_key, seed, unit_id, variant_key)"
        " experiment_key, seed, unit_id, variant_key, first_exposed_at FROM {stage}"
        " ORDER BY experiment_key, seed, unit_id, variant_key, first_exposed_at"
        " ON CONFLICT (experiment_key, seed, unit_id, variant_key) DO UPDATE"
        " SET first_exposed_at = EXCLUDED.first_exposed_at"
        " WHERE EXCLUDED.first_exposed_at < exposures.first_exposed_at"
    ),
)
EXPOSURE_ATTRIBUTES = Stream(
    table="exposure_attributes",
    columns=("experiment_key", "seed", "unit_id", "attributes", "exposed_at"),
    # The first row written wins and is never updated: the segments are those of the first
    # exposure, and the rollup may already have counted the unit in them.
    insert_from_stage=(
        "INSERT INTO exposure_attributes (experiment_key, seed, unit_id, attributes, exposed_at)"
        " SELECT DISTINCT ON (experiment_key, seed, unit_id)"
        " experiment_key, seed, unit_id, attributes, exposed_at FROM {stage}"
        " ORDER BY experiment_key, seed, unit_id, exposed_at ON CONFLICT DO NOTHING"
    ),
)
"""The segment attributes of a unit's first exposure (``experiments/segments.py``), as JSON
text; written in the same flush as the exposure, so the rollup never counts one without it."""
_LOOKUP = (
    "SELECT variant_key FROM assignments WHERE experiment_key = %s AND seed = %s AND unit_id = %s"
)

_LOOKUP_MANY = (
    "SELECT unit_id, variant_key FROM assignments"
    " WHERE experiment_key = %s AND seed = %s AND unit_id = ANY(%s)"
)

SegmentAttributes = Callable[[int], Mapping[str, str] | None]
"""The segment attributes to record with the exposure of the unit at a batch position."""


class StickyStore:
    def __init__(
        self, database: Database, writer: BatchWriter, cache_size: int, lookup_timeout: float
    ) -> None:
        self._database = database
        self._writer = writer
        self._cache_size = cache_size
        self._lookup_timeout = lookup_timeout
        self._cache: dict[tuple[str, str, str], str] = {}
        self._lock = threading.Lock()
        self.lookup_failures = 0

    def stored_variant(self, experiment_key: str, seed: str, unit_id: str) -> str | None:
        """Return the unit's first variant under this seed, or None if it has none (or the
        store cannot be reached in time: the caller then treats the unit as new)."""
        key = (experiment_key, seed, unit_id)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        try:
            with self._database.pool.connection(timeout=self._lookup_timeout) as conn:
                row = conn.execute(_LOOKUP, key).fetchone()
        except Exception as error:
            self.lookup_failures += 1
            log.warning("sticky lookup failed for %s: %s", experiment_key, error)
            return None
        if row is None:
            return None
        self._remember(key, row[0])
        return str(row[0])

    def stored_variants(
        self, experiment_key: str, seed: str, unit_ids: Sequence[str]
    ) -> dict[str, str]:
        """``stored_variant`` for many units: the cache, then one query for the rest.

        Units without a stored first assignment are left out; when the store cannot be
        reached in time, so are all those the cache did not hold (they are treated as new,
        as one lookup's failure is).
        """
        found: dict[str, str] = {}
        missing: list[str] = []
        for unit_id in unit_ids:
            cached = self._cache.get((experiment_key, seed, unit_id))
            if cached is not None:
                found[unit_id] = cached
            else:
                missing.append(unit_id)
        if not missing:
            return found
        try:
            with self._database.pool.connection(timeout=self._lookup_timeout) as conn:
                rows = conn.execute(_LOOKUP_MANY, (experiment_key, seed, missing)).fetchall()
        except Exception as error:
            self.lookup_failures += 1
            log.warning("sticky lookup of %d units failed for %s: %s", len(missing),
                        experiment_key, error)  # fmt: skip
            return found
        for unit_id, variant in rows:
            found[str(unit_id)] = str(variant)
            self._remember((experiment_key, seed, str(unit_id)), str(variant))
        return found

    def record_batch(
        self,
        batch: BatchAssignment,
        seed: str,
        unit_ids: Sequence[str],
        segment_attributes: SegmentAttributes,
    ) -> None:
        """``record`` for each unit of a batch that has something to record (an exposure of
        the experiment or of its holdout); the writer flushes them with one COPY a stream."""
        exposed = batch.exposed() | (batch.holdout_groups != NO_HOLDOUT)
        for position in np.flatnonzero(exposed).tolist():
            assignment = batch.assignment(position)
            attributes = segment_attributes(position) if assignment.exposed else None
            self.record(assignment, seed, unit_ids[position], attributes)

    def record(
        self,
        assignment: Assignment,
        seed: str,
        unit_id: str,
        segment_attributes: Mapping[str, str] | None = None,
    ) -> None:
        """Buffer the first assignment and the exposure, once per unit and process, with the
        exposure's segment attributes when the experiment has segments."""
        if assignment.holdout is not None:
            self._record_holdout(assignment, unit_id)
        if not assignment.exposed:
            return
        key = (assignment.experiment, seed, unit_id)
        if self._cache.get(key) == assignment.variant:
            return
        now = datetime.now(UTC)
        row = (assignment.experiment, seed, unit_id, assignment.variant, now)
        if assignment.record:
            self._writer.put(ASSIGNMENTS.table, row)
        self._writer.put(EXPOSURES.table, row)
        if segment_attributes is not None:
            attributes = json.dumps(dict(segment_attributes), separators=(",", ":"))
            self._writer.put(
                EXPOSURE_ATTRIBUTES.table, (assignment.experiment, seed, unit_id, attributes, now)
            )
        self._remember(key, assignment.variant)

    def _record_holdout(self, assignment: Assignment, unit_id: str) -> None:
        """The holdout's exposure (its group as the variant), once per unit and process."""
        exposure = assignment.holdout
        assert exposure is not None
        key = (exposure.holdout, exposure.seed, unit_id)
        if self._cache.get(key) == exposure.group:
            return
        row = (exposure.holdout, exposure.seed, unit_id, exposure.group, datetime.now(UTC))
        self._writer.put(EXPOSURES.table, row)
        metrics.HOLDOUT_EXPOSURES.labels(exposure.holdout, exposure.group).inc()
        self._remember(key, exposure.group)

    def _remember(self, key: tuple[str, str, str], variant: str) -> None:
        if self._cache_size == 0:
            return
        with self._lock:
            self._cache[key] = variant
            if len(self._cache) > self._cache_size:
                del self._cache[next(iter(self._cache))]


def exposures_by_variant(conn: Any) -> list[tuple[str, str, int]]:
    """Stored exposures per experiment and variant (what the demo reports at its end)."""
    rows = conn.execute(
        "SELECT experiment_key, variant_key, count(*) FROM exposures GROUP BY 1, 2 ORDER BY 1, 2"
    ).fetchall()
    return [(key, variant, int(count)) for key, variant, count in rows]
