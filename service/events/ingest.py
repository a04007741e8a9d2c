"""Durable ingest of outcome events: group commit to PostgreSQL, fsynced spool otherwise.

Requests hand their validated rows to one writer thread per process and wait.
The thread commits every waiting request in one transaction (COPY into a
staging table, then deduplication on ``event_ids``), and only then releases
them; if PostgreSQL is unreachable it appends them to the spool and fsyncs
first. A request is acknowledged only after one of the two, so a SIGKILL
loses nothing that was acknowledged. While spooling, the thread checks the
database every second and replays the spool, in order, before new events.

A data error is not an outage: when PostgreSQL refuses a row of the group, each request is
committed on its own (in a savepoint) and the one holding the refused row is answered with
the error, nothing of it written; a refused row met while replaying the spool (it was
acknowledged already) goes to the quarantine (``storage/quarantine.py``) and the replay goes on.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from service.background import BackgroundThread, PeriodicThread
from service.events.validation import OUTCOME_COLUMNS
from service.observability import metrics
from service.storage.database import Database
from service.storage.quarantine import error_text, is_refused, keep, write_isolating
from service.storage.spool import BatchMark, ReplayLedger, Spool, SpoolError
from service.storage.staging import clear_stage, copy_to_stage

log = logging.getLogger(__name__)
_COLUMNS = ", ".join(OUTCOME_COLUMNS)


class IngestUnavailable(RuntimeError):
    """Neither PostgreSQL nor the spool could keep the events: nothing was acknowledged."""


class IngestRefused(ValueError):
    """PostgreSQL refused an event of the request (a data error): nothing of it was written."""


@dataclass(frozen=True)
class IngestResult:
    accepted: int
    duplicates: int | None
    """None when spooled: duplicates across requests are only known at replay."""
    spooled: bool


def ingest_rows(conn: Any, rows: Sequence[Sequence[Any]]) -> list[tuple[str, str]]:
    """Stage and deduplicate rows in the caller's transaction; return the new (experiment, event_id)."""
    copy_to_stage(conn, "outcomes", OUTCOME_COLUMNS, rows)
    fresh = conn.execute(
        f"""
        WITH fresh AS (
            INSERT INTO event_ids (experiment_key, event_id)
            SELECT DISTINCT experiment_key, event_id FROM stage_outcomes
            ON CONFLICT DO NOTHING
            RETURNING experiment_key, event_id
        ), inserted AS (
            INSERT INTO outcomes ({_COLUMNS})
            SELECT DISTINCT ON (s.experiment_key, s.event_id) {", ".join("s." + c for c in OUTCOME_COLUMNS)}
            FROM stage_outcomes s JOIN fresh f USING (experiment_key, event_id)
            ORDER BY s.experiment_key, s.event_id
        )
        SELECT experiment_key, event_id FROM fresh
        """
    ).fetchall()
    return [(key, event_id) for key, event_id in fresh]


@dataclass
class _Request:
    rows: Sequence[tuple[Any, ...]]
    done: threading.Event = field(default_factory=threading.Event)
    result: IngestResult | None = None
    error: str | None = None
    refused: str | None = None


class EventIngestor(BackgroundThread):
    def __init__(self, database: Database, spool: Spool, wait_timeout: float = 10.0) -> None:
        super().__init__("abx-event-ingest", join_timeout=10.0)
        self._database = database
        self._spool = spool
        self._ledger = ReplayLedger(database)
        self._wait_timeout = wait_timeout
        self._queue: list[_Request] = []
        self._cond = threading.Condition()
        self._spooling = spool.has_segments()
        self._database_answers = threading.Event()
        self._prober = PeriodicThread("abx-event-probe", 1.0, self._probe)
        self.quarantined = 0

    def start(self) -> None:
        super().start()
        self._prober.start()

    def close(self, timeout: float | None = None) -> None:
        self._prober.close()
        super().close(timeout)
        self._spool.seal()

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify()

    def submit(self, rows: Sequence[tuple[Any, ...]]) -> IngestResult:
        """Block until the rows are durable; raise ``IngestUnavailable`` if they cannot be."""
        request = _Request(rows)
        with self._cond:
            if self.stopping:
                raise IngestUnavailable("the service is shutting down")
            self._queue.append(request)
            self._cond.notify()
        if not request.done.wait(self._wait_timeout):
            raise IngestUnavailable("timed out waiting for the events to become durable")
        if request.refused is not None:
            raise IngestRefused(request.refused)
        if request.result is None:
            raise IngestUnavailable(request.error or "the events could not be stored")
        return request.result

    @property
    def spooling(self) -> bool:
        return self._spooling

    def backlog(self) -> dict[str, Any]:
        """What /readyz reports: spooling or not, the spool, rows quarantined at replay."""
        return {"spooling": self._spooling, "spool": self._spool.state(),
                "quarantined_rows": self.quarantined}  # fmt: skip

    def publish_metrics(self) -> None:
        self._spool.publish_metrics("events")

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._queue and not self.stopping:
                    self._cond.wait(timeout=1.0)  # wake at least every second to probe
                batch, self._queue = self._queue, []
                stopping = self.stopping
            if self._spooling:
                self._try_leave_spooling()
            if batch:
                self._write(batch)
            if stopping and not self._queue:
                return

    def _try_leave_spooling(self) -> None:
        """Replay the spool once the probe thread has seen PostgreSQL answer again.

        Probing is not done here: a probe waits for a connection, and while the database
        is away that wait would hold up every request queued behind it.
        """
        if not self._database_answers.is_set():
            return
        try:
            self._spool.seal()
            replayed = self._spool.replay(self._commit_replayed, self._ledger)
        except Exception as error:
            log.info("still spooling: %s", error)
            self._database_answers.clear()
            return
        log.info("database is back: replayed %d spooled batch(es)", replayed)
        self._spooling = self._spool.has_segments()

    def _probe(self) -> None:
        """While spooling, check every second (off the writer thread) whether PostgreSQL answers."""
        if self._spooling and not self._database_answers.is_set():
            try:
                with self._database.pool.connection(timeout=1.0) as conn:
                    conn.execute("SELECT 1")
                self._database_answers.set()
                self._wake()
            except Exception as error:
                log.debug("database still away: %s", error)

    def _commit_replayed(self, rows: list[list[Any]], mark: BatchMark) -> None:
        try:
            with self._database.pool.connection(timeout=2.0) as conn, conn.transaction():
                ingest_rows(conn, rows)
                mark.record(conn)
            return
        except Exception as error:
            if not is_refused(error):
                raise
        with self._database.pool.connection(timeout=2.0) as conn, conn.transaction():
            refused = write_isolating(conn, ingest_and_clear, rows)
            keep(conn, "outcomes", "spool", refused)
            mark.record(conn)
        self.quarantined += len(refused)

    def _write(self, batch: list[_Request]) -> None:
        rows = [row for request in batch for row in request.rows]
        if not self._spooling:
            try:
                with self._database.pool.connection(timeout=1.0) as conn, conn.transaction():
                    fresh = set(ingest_rows(conn, rows))
                self._release_committed(batch, fresh)
                return
            except Exception as error:
                if is_refused(error) and self._write_separately(batch):
                    return
                log.warning("database write failed, spooling: %s", error)
                self._database_answers.clear()
                self._spooling = True
        try:
            self._spool.append(rows)
        except SpoolError as error:
            log.error("cannot spool %d events: %s", len(rows), error)
            for request in batch:
                request.error = str(error)
                request.done.set()
            return
        for request in batch:
            request.result = IngestResult(len(request.rows), None, spooled=True)
            request.done.set()
        _count(Counter(row[0] for row in rows), "spooled")

    def _write_separately(self, batch: list[_Request]) -> bool:
        """Commit each request in a savepoint; refuse those holding a row PostgreSQL refuses.

        False when the database went away meanwhile (then nothing was written: spool them).
        """
        committed: list[_Request] = []
        fresh: set[tuple[str, str]] = set()
        try:
            with self._database.pool.connection(timeout=1.0) as conn, conn.transaction():
                for request in batch:
                    try:
                        with conn.transaction():
                            fresh.update(ingest_rows(conn, request.rows))
                            clear_stage(conn, "outcomes")
                        committed.append(request)
                    except Exception as error:
                        if not is_refused(error):
                            raise
                        request.refused = error_text(error)
        except Exception as error:
            log.warning("database write failed while isolating a refused event: %s", error)
            for request in batch:
                request.refused = None
            return False
        refused = [request for request in batch if request.refused is not None]
        log.warning(
            "the database refused %d request(s) of %d: %s",
            len(refused),
            len(batch),
            refused[0].refused if refused else "",
        )
        _count(Counter(row[0] for request in refused for row in request.rows), "refused")
        for request in refused:
            request.done.set()
        self._release_committed(committed, fresh)
        return True

    @staticmethod
    def _release_committed(batch: list[_Request], fresh: set[tuple[str, str]]) -> None:
        accepted_by: Counter[str] = Counter()
        duplicates_by: Counter[str] = Counter()
        for request in batch:
            accepted = 0
            for row in request.rows:
                key = (row[0], row[2])
                if key in fresh:
                    fresh.discard(key)  # the first request holding an event id gets it
                    accepted += 1
                    accepted_by[row[0]] += 1
                else:
                    duplicates_by[row[0]] += 1
            request.result = IngestResult(accepted, len(request.rows) - accepted, spooled=False)
            request.done.set()
        _count(accepted_by, "accepted")
        _count(duplicates_by, "duplicate")


def ingest_and_clear(conn: Any, rows: Sequence[Sequence[Any]]) -> None:
    """``ingest_rows`` for a transaction that stages several batches (isolation, retries)."""
    ingest_rows(conn, rows)
    clear_stage(conn, "outcomes")


def _count(by_experiment: Counter[str], result: str) -> None:
    for experiment, events in by_experiment.items():
        metrics.EVENTS.labels(experiment, result).inc(events)
