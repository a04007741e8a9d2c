"""Buffered, batched writes off the request path: ``put`` appends, a thread COPYs.

Rows go through a temporary staging table with ``COPY`` and then one
``INSERT ... SELECT ... ON CONFLICT`` per batch, so duplicates across retries
and processes are harmless. Each write holds the rollup's fence shared
(``write_fence``), so the rollup's watermarks never pass over it. When
PostgreSQL is away, rows stay buffered and the flush is retried with backoff.
A row PostgreSQL refuses (a data error, not an outage) is isolated and quarantined
(``storage/quarantine.py``) in the same transaction that writes the rows around it, so
one bad row never holds up the others, here or in the spool.
With a spool, rows that cannot be flushed are appended to it (fsynced) and
replayed in order once PostgreSQL is back, so they survive a restart; without
one (or if the spool fails too) they stay in memory, and past ``max_pending``
rows new ones are dropped and counted.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from service.background import BackgroundThread
from service.observability import metrics
from service.storage.database import Database
from service.storage.fence import hold_for_write
from service.storage.quarantine import is_refused, keep, write_isolating
from service.storage.spool import BatchMark, ReplayLedger, Spool, SpoolError
from service.storage.staging import clear_stage, copy_to_stage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stream:
    """One target table: the staged columns and the statement that moves staged rows in."""

    table: str
    columns: tuple[str, ...]
    insert_from_stage: str
    """SQL reading ``{stage}`` (the staging table's name is substituted)."""


@dataclass
class _Buffer:
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    oldest: float | None = None


class BatchWriter(BackgroundThread):
    def __init__(
        self,
        database: Database,
        streams: dict[str, Stream],
        flush_interval: float = 0.2,
        max_rows: int = 5000,
        max_pending: int = 1_000_000,
        spool: Spool | None = None,
    ) -> None:
        super().__init__("abx-batch-writer")
        self._spool = spool
        self._ledger = ReplayLedger(database)
        self._created = time.monotonic()
        self._database = database
        self._streams = streams
        self._flush_interval = flush_interval
        self._max_rows = max_rows
        self._max_pending = max_pending
        self._buffers = {name: _Buffer() for name in streams}
        self._lock = threading.Lock()
        self._flushing = threading.Lock()
        """One flush at a time: a caller's flush waits for the writer thread's batch in flight,
        so True means every row put before the call is committed."""
        self._in_flight_oldest: float | None = None
        self._flush_now = threading.Event()
        self.dropped = 0
        self.written = 0
        self.quarantined = 0

    def put(self, stream: str, row: tuple[Any, ...]) -> bool:
        """Buffer one row; False when the buffer is full and the row was dropped."""
        with self._lock:
            buffer = self._buffers[stream]
            if len(buffer.rows) >= self._max_pending:
                self.dropped += 1
                metrics.WRITER_ROWS.labels(stream, "dropped").inc()
                return False
            if buffer.oldest is None:
                buffer.oldest = time.monotonic()
            buffer.rows.append(row)
            # Wake the writer when the buffer reaches a batch, not on every row past it: while
            # rows stay buffered through an outage, each wake-up would end the back-off and the
            # writer would retry the database hundreds of times a second.
            if len(buffer.rows) == self._max_rows:
                self._flush_now.set()
        return True

    def oldest_unflushed(self) -> float | None:
        """Monotonic time of the oldest row not yet committed, or None when all are."""
        if self._spool is not None and self._spool.has_segments():
            return self._created  # spooled rows are not in PostgreSQL yet
        with self._lock:
            times = [b.oldest for b in self._buffers.values() if b.oldest is not None]
            if self._in_flight_oldest is not None:
                times.append(self._in_flight_oldest)
        return min(times) if times else None

    def backlog(self) -> dict[str, Any]:
        """What /readyz reports: rows waiting, the oldest one's age, the spool, quarantined."""
        with self._lock:  # buffered rows only: the spool reports its own oldest record
            times = [b.oldest for b in self._buffers.values() if b.oldest is not None]
            if self._in_flight_oldest is not None:
                times.append(self._in_flight_oldest)
        oldest = min(times) if times else None
        return {
            "pending_rows": self.pending_rows(),
            "oldest_age_seconds": round(time.monotonic() - oldest, 3) if oldest else 0.0,
            "spool": self._spool.state() if self._spool is not None else None,
            "quarantined_rows": self.quarantined,
            "dropped_rows": self.dropped,
        }

    def pending_rows(self) -> int:
        with self._lock:
            return sum(len(b.rows) for b in self._buffers.values())

    def publish_metrics(self) -> None:
        """Rows buffered per stream, and the spool's size and oldest record (sampled)."""
        with self._lock:
            pending = {name: len(b.rows) for name, b in self._buffers.items()}
        for name, rows in pending.items():
            metrics.WRITER_PENDING.labels(name).set(rows)
        if self._spool is not None:
            self._spool.publish_metrics("writes")

    def close(self, timeout: float | None = None) -> None:
        """Stop the thread after a last flush attempt (graceful shutdown)."""
        super().close(timeout)
        if self.pending_rows():
            self.flush()
        if self.pending_rows():
            log.warning("shutting down with %d rows not written", self.pending_rows())

    def _wake(self) -> None:
        self._flush_now.set()

    def _run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            delay = self._flush_interval if failures == 0 else min(5.0, 0.1 * 2**failures)
            self._flush_now.wait(delay)
            self._flush_now.clear()
            failures = 0 if self.flush() else failures + 1

    def flush(self) -> bool:
        """Write everything buffered now; True when it all reached PostgreSQL."""
        with self._flushing:
            return self._flush()

    def _flush(self) -> bool:
        with self._lock:
            taken = {n: b for n, b in self._buffers.items() if b.rows}
            for name in taken:
                self._buffers[name] = _Buffer()
            times = [b.oldest for b in taken.values() if b.oldest is not None]
            self._in_flight_oldest = min(times) if times else None
        if not taken:
            return self._replay_spool()
        try:
            self._write({name: buffer.rows for name, buffer in taken.items()}, "writer")
        except Exception as error:  # the database is away: keep the rows
            log.warning("flush failed, will retry: %s", error)
            metrics.WRITER_FLUSH_FAILURES.inc()
            if self._spool_rows(taken):
                with self._lock:
                    self._in_flight_oldest = None
                return False
            with self._lock:
                for name, buffer in taken.items():
                    current = self._buffers[name]
                    current.rows[:0] = buffer.rows
                    current.oldest = buffer.oldest
                self._in_flight_oldest = None
            return False
        with self._lock:
            self._in_flight_oldest = None
            self.written += sum(len(b.rows) for b in taken.values())
        for name, buffer in taken.items():
            metrics.WRITER_ROWS.labels(name, "written").inc(len(buffer.rows))
        return self._replay_spool()

    def _spool_rows(self, taken: dict[str, _Buffer]) -> bool:
        if self._spool is None:
            return False
        try:
            self._spool.append(
                [(name, *row) for name, buffer in taken.items() for row in buffer.rows]
            )
        except SpoolError as error:
            log.error("cannot spool buffered rows, keeping them in memory: %s", error)
            return False
        for name, buffer in taken.items():
            metrics.WRITER_ROWS.labels(name, "spooled").inc(len(buffer.rows))
        return True

    def _replay_spool(self) -> bool:
        """Write spooled rows (from this or an earlier process) once PostgreSQL answers again."""
        if self._spool is None or not self._spool.has_segments():
            return True
        self._spool.seal()
        try:
            self._spool.replay(self._write_spooled, self._ledger)
        except Exception as error:
            log.warning("spool replay failed, will retry: %s", error)
            return False
        return True

    def _write_spooled(self, batch: list[list[Any]], mark: BatchMark) -> None:
        by_stream: dict[str, list[tuple[Any, ...]]] = {}
        for stream, *row in batch:
            by_stream.setdefault(stream, []).append(tuple(row))
        self._write(by_stream, "spool", mark)

    def _write(
        self,
        by_stream: dict[str, list[tuple[Any, ...]]],
        source: str,
        mark: BatchMark | None = None,
    ) -> None:
        """Commit the rows in one transaction; refused rows go to the quarantine instead.

        The fast path is one COPY per stream. Only when PostgreSQL refuses a row does a second
        transaction isolate the refused rows (bisecting in savepoints) and quarantine them.
        A spooled batch's ``mark`` is recorded in the transaction that commits it.
        """
        try:
            with self._database.pool.connection(timeout=1.0) as conn, conn.transaction():
                for name, rows in by_stream.items():
                    write_stream(conn, rows, self._streams[name], clear=False)
                if mark is not None:
                    mark.record(conn)
            return
        except Exception as error:
            if not is_refused(error):
                raise
        with self._database.pool.connection(timeout=1.0) as conn, conn.transaction():
            for name, rows in by_stream.items():
                stream = self._streams[name]
                refused = write_isolating(conn, partial(write_stream, stream=stream), rows)
                keep(conn, name, source, refused)
                self.quarantined += len(refused)
            if mark is not None:
                mark.record(conn)


def write_stream(
    conn: Any, rows: Sequence[Sequence[Any]], stream: Stream, clear: bool = True
) -> None:
    """COPY rows into the stream's stage and move them into its table (caller's transaction).

    ``clear`` empties the stage afterwards, for a transaction that stages several batches of
    one stream (isolating refused rows); the one-batch fast path skips that round trip.
    """
    hold_for_write(conn)
    stage = copy_to_stage(conn, stream.table, stream.columns, rows)
    conn.execute(stream.insert_from_stage.format(stage=stage))
    if clear:
        clear_stage(conn, stream.table)
