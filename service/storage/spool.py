"""A local, fsynced, append-only spool for outcome events while PostgreSQL is away.

Each process appends to its own segment file, holding an exclusive ``flock`` on
it while it is open; a batch is one JSON line, written and ``fsync``ed before
the request is acknowledged. Sealed segments (and those left by a killed
process, whose lock died with it) are replayed in name order by whoever takes
the lock, then deleted. A torn last line is a batch that was never
acknowledged, so it is skipped.

Each batch is replayed once: the replay of a batch records its line in ``spool_replays``
(``ReplayLedger``) in the batch's own transaction, and a replay of the segment (after an
outage cut it half-way, a restart, or a failure) starts after the last line recorded. Rows of
tables without an idempotency key (``predictions``) are therefore never written twice.

A segment whose replay fails ``max_replay_failures`` times in a row while PostgreSQL answers
(anything but a connection failure: a line that is not a batch of rows, a table that refuses
the whole batch) is moved aside into ``quarantine/`` under the spool's folder, counted and
logged, so that the segments behind it are replayed; ``abx quarantine`` lists, retries (moves
back) or drops it. Only the batches that never reached PostgreSQL are moved aside, from the
failing one on, under a new name (``<segment>+<line>.spool``) so that the ledger starts afresh
for it when it comes back. The aside copy is complete (fsynced, renamed) before the segment is
removed, and a segment whose aside copy exists is never replayed again, so a crash between the
two neither loses nor doubles a batch. Rows the database refuses one by one never get this
far: the writers quarantine those rows and replay the rest.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import psycopg

from service.observability import metrics
from service.storage.database import Database

log = logging.getLogger(__name__)


class SpoolError(OSError):
    """The spool cannot keep this batch (unwritable, full, or over its size limit)."""


def _encode(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


QUARANTINE_FOLDER = "quarantine"


def is_outage(error: BaseException) -> bool:
    """A failure of the connection or the server (retry later), not of the segment's content."""
    return isinstance(error, psycopg.OperationalError | OSError)


@dataclass(frozen=True)
class BatchMark:
    """Where a replayed batch sits: ``record`` it in the transaction that writes the batch."""

    segment: str
    line: int

    def record(self, conn: Any) -> None:
        conn.execute(
            "INSERT INTO spool_replays (segment, line) VALUES (%s, %s) ON CONFLICT (segment)"
            " DO UPDATE SET line = EXCLUDED.line, replayed_at = now()",
            (self.segment, self.line),
        )


class ReplayLedger:
    """How far each segment's replay reached, as PostgreSQL itself records it (``spool_replays``)."""

    def __init__(self, database: Database) -> None:
        self._database = database

    def replayed_through(self, segment: str) -> int:
        """The last line of ``segment`` already in PostgreSQL (0: none)."""
        with self._database.pool.connection(timeout=2.0) as conn:
            row = conn.execute(
                "SELECT line FROM spool_replays WHERE segment = %s", (segment,)
            ).fetchone()
        return int(row[0]) if row else 0

    def forget(self, segment: str) -> None:
        """Drop the mark of a segment that is gone (best effort: a stale mark harms nothing)."""
        try:
            with self._database.pool.connection(timeout=2.0) as conn:
                conn.execute("DELETE FROM spool_replays WHERE segment = %s", (segment,))
        except Exception as error:
            log.info("could not forget the replay mark of %s: %s", segment, error)


Ingest = Callable[[list[list[Any]], BatchMark], None]
"""Writes one batch in one transaction, in which it calls ``mark.record(conn)``."""


class Spool:
    def __init__(
        self, directory: Path, max_bytes: int, stream: str = "spool", max_replay_failures: int = 3
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.stream = stream
        """The metric label of a segment moved aside (``abx_rows_quarantined{stream}``)."""
        self.max_replay_failures = max_replay_failures
        self._replay_failures: dict[str, int] = {}
        self._prefix = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._sequence = 0
        self._segment: IO[str] | None = None

    def append(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Write one batch durably, or raise ``SpoolError``."""
        line = json.dumps([[_encode(v) for v in row] for row in rows], separators=(",", ":"))
        try:
            if self.size_bytes() + len(line) + 1 > self.max_bytes:
                raise SpoolError(f"spool would exceed its limit of {self.max_bytes} bytes")
            segment = self._open_segment()
            segment.write(line + "\n")
            segment.flush()
            os.fsync(segment.fileno())
        except SpoolError:
            raise
        except OSError as error:
            self.seal()
            raise SpoolError(f"cannot write to spool {self.directory}: {error}") from error

    def _open_segment(self) -> IO[str]:
        if self._segment is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._sequence += 1
            # Named by the time it opens, so names sort oldest first (the replay order) and
            # say how old the oldest record waiting is.
            opened = time.time_ns()
            path = self.directory / f"{opened:020d}-{self._prefix}-{self._sequence:06d}.spool"
            segment = path.open("a", encoding="utf-8")
            fcntl.flock(segment.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._segment = segment
        return self._segment

    def seal(self) -> None:
        """Close the current segment so that it can be replayed."""
        if self._segment is not None:
            self._segment.close()  # closing releases the flock
            self._segment = None

    def size_bytes(self) -> int:
        try:
            return sum(p.stat().st_size for p in self.directory.glob("*.spool"))
        except OSError:
            return 0

    def oldest_record_time(self) -> float | None:
        """Unix time of the oldest spooled record (its segment's opening), None when empty."""
        try:
            names = [p.name for p in self.directory.glob("*.spool")]
        except OSError:
            return None
        opened = [int(name[:20]) for name in names if name[:20].isdigit()]
        return min(opened) / 1e9 if opened else None

    def publish_metrics(self, name: str) -> None:
        """The spool's size and the age of its oldest record, under the label ``name``."""
        oldest = self.oldest_record_time()
        metrics.SPOOL_BYTES.labels(name).set(self.size_bytes())
        age = max(0.0, time.time() - oldest) if oldest is not None else 0.0
        metrics.SPOOL_OLDEST_AGE.labels(name).set(age)

    def has_segments(self) -> bool:
        return self.directory.is_dir() and any(self.directory.glob("*.spool"))

    def replay(self, ingest: Ingest, ledger: ReplayLedger | None = None) -> int:
        """Ingest every sealed segment in order; return the batches replayed.

        With a ``ledger``, the batches a previous replay already wrote are skipped, so each is
        written once. Without one, ``ingest`` must be idempotent (tests of the file format).
        """
        replayed = 0
        for path in sorted(self.directory.glob("*.spool")) if self.directory.is_dir() else []:
            if self._segment is not None and path.name == Path(self._segment.name).name:
                continue
            with self._locked(path) as handle:
                if handle is None:
                    continue  # another process owns or replays it
                if self._aside_copies(path):
                    # Moved aside before a crash kept it from being removed: its batches are
                    # either in PostgreSQL (before the aside copy's line) or in that copy.
                    self._remove(path, ledger)
                    continue
                written = ledger.replayed_through(path.name) if ledger is not None else 0
                try:
                    for line, batch in _batches(handle):
                        if line <= written:
                            continue
                        ingest(batch, BatchMark(path.name, line))
                        written = line
                        replayed += 1
                except Exception as error:
                    if is_outage(error) or not self._failed_again(path, written + 1, error):
                        raise
                    self._remove(path, ledger)
                    continue
                self._remove(path, ledger)
                self._replay_failures.pop(path.name, None)
        return replayed

    def _aside_copies(self, path: Path) -> list[Path]:
        """Copies of ``path``'s unwritten batches, moved aside (or back) already."""
        pattern = f"{path.stem}+*.spool"
        return [*self.directory.glob(pattern), *(self.directory / QUARANTINE_FOLDER).glob(pattern)]

    def _remove(self, path: Path, ledger: ReplayLedger | None) -> None:
        path.unlink()
        _sync_folder(path.parent)
        if ledger is not None:
            ledger.forget(path.name)

    def _failed_again(self, path: Path, line: int, error: BaseException) -> bool:
        """Count a replay failure of ``path`` at ``line``; True when it was moved aside for good.

        The copy moved aside holds the batches from ``line`` on: those before it are in
        PostgreSQL. The caller removes ``path`` afterwards.
        """
        failures = self._replay_failures.get(path.name, 0) + 1
        self._replay_failures[path.name] = failures
        if failures < self.max_replay_failures:
            return False
        aside = self.directory / QUARANTINE_FOLDER
        aside.mkdir(parents=True, exist_ok=True)
        target = aside / f"{path.stem}+{line}.spool"
        partial = aside / f".{target.name}.partial"
        with (
            path.open("r", encoding="utf-8") as source,
            partial.open("w", encoding="utf-8") as copy,
        ):
            for number, text in enumerate(source, start=1):
                if number >= line:
                    copy.write(text)
            copy.flush()
            os.fsync(copy.fileno())
        partial.rename(target)
        _sync_folder(aside)
        self._replay_failures.pop(path.name, None)
        metrics.QUARANTINED.labels(self.stream).inc()
        log.error(
            "spool segment %s failed to replay %d times at line %d (%s: %s); its batches from"
            " that line on moved aside to %s (see `abx quarantine list`)",
            path.name,
            failures,
            line,
            type(error).__name__,
            error,
            target,
        )
        return True

    def state(self) -> dict[str, Any]:
        """What /readyz reports: size, the oldest record's age, segments moved aside."""
        oldest = self.oldest_record_time()
        return {
            "bytes": self.size_bytes(),
            "oldest_age_seconds": round(max(0.0, time.time() - oldest), 3) if oldest else 0.0,
            "segments_moved_aside": len(self.quarantined_segments()),
        }

    def quarantined_segments(self) -> list[Path]:
        """Segments moved aside after failing to replay, oldest first."""
        aside = self.directory / QUARANTINE_FOLDER
        return sorted(aside.glob("*.spool")) if aside.is_dir() else []

    @staticmethod
    @contextmanager
    def _locked(path: Path) -> Iterator[IO[str] | None]:
        """Open ``path`` under an exclusive lock, or yield None if someone else holds it."""
        try:
            handle = path.open("r", encoding="utf-8")
        except FileNotFoundError:
            yield None
            return
        with handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield None
                return
            yield handle


def _batches(handle: IO[str]) -> Iterator[tuple[int, list[list[Any]]]]:
    """(line number, batch) of each whole line; a torn line was never acknowledged."""
    for number, line in enumerate(handle, start=1):
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError:
            log.warning("%s:%d: skipping a torn batch (never acknowledged)", handle.name, number)


def _sync_folder(folder: Path) -> None:
    """Make a rename or an unlink in ``folder`` durable."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
