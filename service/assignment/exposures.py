"""First assignments and exposures that a client SDK made locally, recorded once per batch.

An SDK that assigns from the snapshot (``snapshot.py``) sends what it served in batches
(``POST /v1/sdk/exposures``). Each item becomes the rows ``/v1/assign`` would have buffered
for a ``hashed`` answer: the first assignment (the sticky record) and the exposure, with the
same conflict rules as the writer's streams (``sticky.py``). The batch id is inserted in the
same transaction, so a batch resent after a lost answer writes and counts nothing twice, and
the answer is sent only once the rows are committed. Batch ids are kept
``ABX_SDK_BATCH_RETENTION_DAYS`` (31): the server refuses exposures more than 30 days old, so
an older id guards nothing, and ``prune_batches`` (run by the beat's periodic analysis task)
deletes it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from service.assignment.core import CompiledExperiment
from service.assignment.hashing import hash_prefix, pick_index, unit_fraction
from service.experiments.holdouts import HOLDOUT_GROUP, REST_GROUP, Holdout
from service.storage.fence import hold_for_write


@dataclass(frozen=True)
class LocalExposure:
    experiment: str
    seed: str
    unit_id: str
    variant: str
    exposed_at: datetime
    segment_attributes: dict[str, str] | None = None
    """What the experiment's ``segments`` record (``experiments/segments.py``), else None."""


def hashed_variants(compiled: CompiledExperiment, unit_id: str) -> frozenset[str]:
    """The variants any allocation of the current seed gives this unit by hash."""
    fraction = unit_fraction(compiled.variant_prefix, unit_id)
    variants = compiled.experiment.variants
    return frozenset(
        variants[pick_index(fraction, bounds)].key
        for bounds in (compiled.bounds, *compiled.other_bounds)
    )


def is_current(compiled: CompiledExperiment, exposure: LocalExposure) -> bool:
    """True when the SDK's answer is one the server could have given under this seed: a
    stale seed (re-randomized since) or a variant the hash never gives is not recorded."""
    return exposure.seed == compiled.experiment.seed and exposure.variant in hashed_variants(
        compiled, exposure.unit_id
    )


def is_current_holdout(holdout: Holdout, exposure: LocalExposure) -> bool:
    """True when the SDK's holdout exposure names this seed and the group the hash gives."""
    if exposure.seed != holdout.seed or exposure.variant not in (HOLDOUT_GROUP, REST_GROUP):
        return False
    member = unit_fraction(hash_prefix("holdout", holdout.key, holdout.seed), exposure.unit_id)
    return (member < holdout.share) == (exposure.variant == HOLDOUT_GROUP)


# One statement per table over arrays (not a statement per row): a batch of 1,000 is two round
# trips. Duplicates within a batch keep the earliest time, as the writer's streams do.
_ROWS = (
    "SELECT * FROM unnest(%(experiments)s::text[], %(seeds)s::text[], %(units)s::text[],"
    " %(variants)s::text[], %(times)s::timestamptz[]) AS r(experiment_key, seed, unit_id,"
    " variant_key, at)"
)
_ASSIGNMENTS = (
    "INSERT INTO assignments (experiment_key, seed, unit_id, variant_key, assigned_at)"
    f" SELECT experiment_key, seed, unit_id, variant_key, at FROM ({_ROWS}) rows"
    " ORDER BY at ON CONFLICT DO NOTHING"
)
_EXPOSURES = (
    "INSERT INTO exposures (experiment_key, seed, unit_id, variant_key, first_exposed_at)"
    " SELECT DISTINCT ON (experiment_key, seed, unit_id, variant_key)"
    f" experiment_key, seed, unit_id, variant_key, at FROM ({_ROWS}) rows"
    " ORDER BY experiment_key, seed, unit_id, variant_key, at"
    " ON CONFLICT (experiment_key, seed, unit_id, variant_key) DO UPDATE"
    " SET first_exposed_at = EXCLUDED.first_exposed_at"
    " WHERE EXCLUDED.first_exposed_at < exposures.first_exposed_at"
)
_ATTRIBUTES = (
    "INSERT INTO exposure_attributes (experiment_key, seed, unit_id, attributes, exposed_at)"
    " SELECT DISTINCT ON (experiment_key, seed, unit_id) experiment_key, seed, unit_id,"
    " attributes::jsonb, at FROM unnest(%(experiments)s::text[], %(seeds)s::text[],"
    " %(units)s::text[], %(attributes)s::text[], %(times)s::timestamptz[])"
    " AS r(experiment_key, seed, unit_id, attributes, at)"
    " ORDER BY experiment_key, seed, unit_id, at ON CONFLICT DO NOTHING"
)


def _columns(exposures: Sequence[LocalExposure]) -> dict[str, list[Any]]:
    return {
        "experiments": [e.experiment for e in exposures],
        "seeds": [e.seed for e in exposures],
        "units": [e.unit_id for e in exposures],
        "variants": [e.variant for e in exposures],
        "times": [e.exposed_at for e in exposures],
    }


def record_batch(
    conn: Any,
    batch_id: str,
    exposures: Sequence[LocalExposure],
    holdout_exposures: Sequence[LocalExposure] = (),
) -> bool:
    """Write the batch's rows and its id in one transaction; False if the id was seen before.

    Holdout exposures (the holdout's key, seed and group) are exposures only: membership is
    the hash's alone, so there is no first assignment to keep.
    """
    with conn.transaction():
        hold_for_write(conn)  # the rollup's watermark must not pass these rows (fence.py)
        new = conn.execute(
            "INSERT INTO sdk_exposure_batches (batch_id, items) VALUES (%s, %s)"
            " ON CONFLICT DO NOTHING RETURNING batch_id",
            (batch_id, len(exposures)),
        ).fetchone()
        if new is None:
            return False
        if exposures:
            columns = _columns(exposures)
            conn.execute(_ASSIGNMENTS, columns)
            conn.execute(_EXPOSURES, columns)
        segmented = [e for e in exposures if e.segment_attributes is not None]
        if segmented:  # first written wins, as in sticky.EXPOSURE_ATTRIBUTES
            conn.execute(_ATTRIBUTES, {
                "experiments": [e.experiment for e in segmented],
                "seeds": [e.seed for e in segmented],
                "units": [e.unit_id for e in segmented],
                "attributes": [json.dumps(e.segment_attributes, separators=(",", ":"))
                               for e in segmented],
                "times": [e.exposed_at for e in segmented],
            })  # fmt: skip
        if holdout_exposures:
            conn.execute(_EXPOSURES, _columns(holdout_exposures))
    return True


def prune_batches(
    conn: Any, older_than: timedelta, chunk: int = 10_000
) -> tuple[int, float | None]:
    """Delete batch ids received more than ``older_than`` ago; return (deleted, oldest age s).

    In chunks of ``chunk`` rows (oldest first, by the ``received_at`` index), each committed on
    its own, so a first prune of a long-grown table never holds one long transaction.
    """
    deleted = 0
    while True:
        with conn.transaction():
            count = conn.execute(
                "DELETE FROM sdk_exposure_batches WHERE batch_id IN (SELECT batch_id FROM"
                " sdk_exposure_batches WHERE received_at < now() - %s ORDER BY received_at"
                " LIMIT %s)",
                (older_than, chunk),
            ).rowcount
        deleted += count
        if count < chunk:
            break
    row = conn.execute(
        "SELECT extract(epoch FROM now() - min(received_at)) FROM sdk_exposure_batches"
    ).fetchone()
    oldest = float(row[0]) if row and row[0] is not None else None
    return deleted, oldest
