"""Keep PostgreSQL and this process in step: experiment rows, allocations, heartbeats.

At start each process upserts the experiments it loaded from YAML and, when an
experiment's weights differ from its latest stored allocation, adds a new
allocation row. A background thread then, every ``state_poll_seconds``, reports
how far this process's buffered writes have reached PostgreSQL and reads the
allocation history back (``allocation_history`` decides what is in force).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from service.assignment.allocation import AllocationPlan, AllocationRow, resolve_allocation
from service.assignment.registry import Registry
from service.assignment.state import read_states
from service.background import PeriodicThread
from service.experiments.schema import Experiment
from service.settings import LIVE_WRITER_SECONDS
from service.storage.database import Database
from service.storage.writer import BatchWriter

log = logging.getLogger(__name__)
SYNC_LOCK_KEY = 0x616278_02


def weights_of(experiment: Experiment) -> dict[str, float]:
    return {variant.key: variant.weight for variant in experiment.variants}


def _fingerprint(weights: dict[str, float]) -> str:
    return hashlib.sha256(json.dumps(weights, sort_keys=True).encode()).hexdigest()


def sync_experiments(
    conn: Any, experiments: Iterable[tuple[Experiment, str]], settle_seconds: float
) -> None:
    """Upsert experiment rows and append an allocation wherever the weights changed.

    A changed allocation takes effect ``settle_seconds`` from now, so that every
    serving process hears of it before it starts (``allocation_history``).
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (SYNC_LOCK_KEY,))
        for experiment, source in experiments:
            definition = experiment.model_dump(mode="json", by_alias=True)
            digest = hashlib.sha256(json.dumps(definition, sort_keys=True).encode()).hexdigest()
            conn.execute(
                "INSERT INTO experiments (key, seed, status, definition, definition_sha256,"
                " source_file) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (key) DO UPDATE SET"
                " seed = EXCLUDED.seed, status = EXCLUDED.status, definition = EXCLUDED.definition,"
                " definition_sha256 = EXCLUDED.definition_sha256,"
                " source_file = EXCLUDED.source_file, synced_at = now()",
                (
                    experiment.key,
                    experiment.seed,
                    experiment.status,
                    Jsonb(definition),
                    digest,
                    source,
                ),
            )
            weights = weights_of(experiment)
            # A bandit's own re-weightings are not YAML edits: compare with the YAML's rows.
            latest = conn.execute(
                "SELECT fingerprint FROM allocations WHERE experiment_key = %s AND seed = %s"
                " AND origin = 'yaml' ORDER BY allocation_id DESC LIMIT 1",
                (experiment.key, experiment.seed),
            ).fetchone()
            if latest is None or latest[0] != _fingerprint(weights):
                append_allocation(
                    conn, experiment, weights, 0.0 if latest is None else settle_seconds
                )


def append_allocation(
    conn: Any,
    experiment: Experiment,
    weights: dict[str, float],
    settle_seconds: float,
    origin: str = "yaml",
    decision_id: str | None = None,
) -> None:
    """Announce new weights, in force ``settle_seconds`` from now (the one way weights change).

    Units already assigned keep their variant (the assignment core asks the sticky store
    wherever earlier bounds differ); only new units follow the new weights. One set by the
    decision workers (``origin`` ``bandit`` or ``graduation``, with its decision) stays in force
    across restarts until the YAML's own weights change (``sync_experiments`` compares the
    YAML with the latest YAML row only).
    """
    conn.execute(
        "INSERT INTO allocations (experiment_key, seed, weights, fingerprint, effective_at,"
        " origin, decision_id) VALUES (%s, %s, %s, %s, now() + make_interval(secs => %s), %s, %s)",
        (experiment.key, experiment.seed, Jsonb(weights), _fingerprint(weights), settle_seconds,
         origin, decision_id),
    )  # fmt: skip


def allocation_history(
    conn: Any, experiment: Experiment
) -> list[tuple[dict[str, float], datetime]]:
    """Every allocation of the experiment under its seed: (weights, effective_at), in order."""
    rows = conn.execute(
        "SELECT weights, effective_at FROM allocations WHERE experiment_key = %s AND seed = %s"
        " ORDER BY effective_at, allocation_id",
        (experiment.key, experiment.seed),
    ).fetchall()
    return [({k: float(v) for k, v in dict(weights).items()}, at) for weights, at in rows]


def last_allocation_age_hours(conn: Any, experiment: Experiment, origin: str) -> float | None:
    """Hours since the experiment's latest allocation of ``origin`` took effect; None: none."""
    (age,) = conn.execute(
        "SELECT extract(epoch FROM now() - max(effective_at)) / 3600.0 FROM allocations"
        " WHERE experiment_key = %s AND seed = %s AND origin = %s",
        (experiment.key, experiment.seed, origin),
    ).fetchone()
    return None if age is None else float(age)


def read_allocations(conn: Any, registry: Registry) -> tuple[dict[str, AllocationPlan], datetime]:
    """Plan the allocation of every experiment of the registry; also return the database time."""
    now, flushed_through = conn.execute(
        "SELECT now(), min(flushed_through) FROM writer_heartbeats"
        " WHERE seen_at > now() - make_interval(secs => %s)",
        (LIVE_WRITER_SECONDS,),
    ).fetchone()
    rows: dict[tuple[str, str], list[AllocationRow]] = defaultdict(list)
    for key, seed, weights, effective_at in conn.execute(
        "SELECT experiment_key, seed, weights, effective_at FROM allocations"
        " WHERE experiment_key = ANY(%s) ORDER BY allocation_id",
        (list(registry.experiments),),
    ):
        rows[(key, seed)].append(AllocationRow(weights, effective_at))
    plans = {}
    for key, experiment in registry.experiments.items():
        plan = resolve_allocation(
            rows[(key, experiment.seed)], experiment.variant_keys, now, flushed_through
        )
        if plan is not None:
            plans[key] = plan
    return plans, now


class StateSync(PeriodicThread):
    """Background heartbeat and allocation refresh for one serving process."""

    def __init__(
        self,
        database: Database,
        registry: Registry,
        writer: BatchWriter,
        interval: float,
        settle_seconds: float,
    ) -> None:
        super().__init__("abx-state-sync", interval)
        self._settle_seconds = settle_seconds
        self._database = database
        self._registry = registry
        self._writer = writer
        self._last_applied: float | None = None
        self._created = time.monotonic()
        # (applied at, read started at) of recent views, oldest first: which view a
        # buffered row was assigned under (see ``_heartbeat``).
        self._views: deque[tuple[float, float]] = deque(maxlen=256)
        self._synced = False
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    def close(self, timeout: float | None = None) -> None:
        super().close(timeout)
        try:
            with self._database.pool.connection(timeout=1.0) as conn:
                conn.execute(
                    "DELETE FROM writer_heartbeats WHERE worker_id = %s", (self.worker_id,)
                )
        except Exception as error:
            log.info("could not remove heartbeat: %s", error)

    def poll_once(self, timeout: float = 2.0) -> bool:
        """Sync experiments (until done once), heartbeat, then read and apply allocations.

        Returns False when PostgreSQL is away; the next poll tries again, so a
        process started while the database was down catches up when it is back.
        """
        started = time.monotonic()
        try:
            with self._database.pool.connection(timeout=timeout) as conn:
                if not self._synced:
                    registry = self._registry
                    sync_experiments(
                        conn,
                        [(e, registry.sources[k]) for k, e in registry.experiments.items()],
                        self._settle_seconds,
                    )
                    self._synced = True
                self._heartbeat(conn)
                plans, database_now = read_allocations(conn, self._registry)
                states = read_states(conn, self._registry.experiments)
        except Exception as error:
            log.warning("state refresh failed: %s", error)
            return False
        self._registry.apply_plans(plans, database_now.timestamp() - time.time(), states)
        self._views.append((time.monotonic(), started))
        self._last_applied = started
        return True

    def resync(self) -> bool:
        """After a hot reload: upsert the experiments again and re-read their allocations."""
        self._synced = False
        return self.poll_once()

    def view_read_before(self, moment: float) -> float:
        """When the read began of the view this process served at ``moment`` (monotonic):
        the latest view applied by then; its own start before any (the YAML's weights)."""
        read = self._created
        for applied, started in self._views:
            if applied > moment:
                break
            read = started
        if self._views and self._views[0][0] > moment and len(self._views) == self._views.maxlen:
            return self._created  # that view has left the history: claim no more than start
        return read

    def _heartbeat(self, conn: Any) -> None:
        # Flushed through: every first assignment this process made under a view of the
        # allocations read before this moment is in PostgreSQL. A buffered row counts by
        # the view it was made under, not by when it was made: a process that heard of a
        # change late made rows after the switch time under the old weights, and they must
        # hold the switch until flushed. Ages, not clock readings, cross to the server.
        oldest = self._writer.oldest_unflushed()
        mark = (
            self._last_applied or self._created
            if oldest is None
            else min(self._last_applied or self._created, self.view_read_before(oldest))
        )
        age = time.monotonic() - mark
        conn.execute(
            "INSERT INTO writer_heartbeats (worker_id, flushed_through, seen_at)"
            " VALUES (%s, now() - make_interval(secs => %s), now())"
            " ON CONFLICT (worker_id) DO UPDATE SET flushed_through = EXCLUDED.flushed_through,"
            " seen_at = EXCLUDED.seen_at",
            (self.worker_id, age),
        )

    def tick(self) -> None:
        self.poll_once()


def weights_in_force(conn: Any, experiment: Experiment) -> dict[str, float]:
    """The newest allocation in force under the experiment's seed, else the YAML weights.

    The serving processes know this already (their registry); ``abx report`` has no
    registry and reads what they wrote.
    """
    row = conn.execute(
        "SELECT weights FROM allocations WHERE experiment_key = %s AND seed = %s"
        " AND effective_at <= now() ORDER BY effective_at DESC, allocation_id DESC LIMIT 1",
        (experiment.key, experiment.seed),
    ).fetchone()
    stored = dict(row[0]) if row else {}
    return {v.key: float(stored.get(v.key, v.weight)) for v in experiment.variants}


def allocated_weights(conn: Any, experiment: Experiment) -> dict[str, float]:
    """The weights the newest allocation gives when a shadow's graduation set it, else the YAML's.

    What the decision workers analyse: a graduation's allocation counts from the moment it is
    recorded, and a YAML edit not yet synced by any serving process still counts as written.
    (A bandit's re-weightings are analysed by allocation period, from the YAML's arms.)
    """
    yaml = weights_of(experiment)
    row = conn.execute(
        "SELECT weights, origin, (SELECT fingerprint FROM allocations WHERE experiment_key = %s"
        " AND seed = %s AND origin = 'yaml' ORDER BY allocation_id DESC LIMIT 1)"
        " FROM allocations WHERE experiment_key = %s AND seed = %s"
        " ORDER BY allocation_id DESC LIMIT 1",
        (experiment.key, experiment.seed, experiment.key, experiment.seed),
    ).fetchone()
    if row is None or row[1] != "graduation" or row[2] != _fingerprint(yaml):
        return yaml  # no decision's allocation, or the YAML's weights changed since
    stored = dict(row[0])
    return {v.key: float(stored.get(v.key, 0.0)) for v in experiment.variants}
