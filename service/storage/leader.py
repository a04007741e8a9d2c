"""One holder at a time of a named role, by a PostgreSQL session advisory lock.

The Celery beat (the scheduler) must run once per deployment: two would enqueue every
analysis twice. Kubernetes' ``Recreate`` strategy and one replica make a second one rare,
not impossible (a node that is partitioned but alive, a person starting one by hand), so the
scheduler holds this lock for its lifetime. A second one waits, as a standby, until the first
one's connection ends: PostgreSQL releases a session lock when its session dies, so a crashed
holder (SIGKILL, lost node) frees the role within the server's connection timeouts.
A holder whose own connection is lost can no longer prove it holds the role and must stop.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable

import psycopg

from service.background import PeriodicThread


def lock_key(role: str) -> int:
    """A stable signed 64-bit advisory-lock key for ``role``."""
    digest = hashlib.sha256(f"abx-leader:{role}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class Leadership:
    """The role's lock, held on a connection of its own; ``check`` runs every few seconds."""

    def __init__(
        self,
        url: str,
        role: str,
        on_lost: Callable[[], None],
        check_seconds: float = 5.0,
    ) -> None:
        self.role = role
        self._key = lock_key(role)
        self._url = url
        self._on_lost = on_lost
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None
        self._watch = PeriodicThread(f"leader-{role}", check_seconds, self._check)

    def acquire(
        self,
        wait_seconds: float | None = None,
        poll_seconds: float = 2.0,
        waiting: Callable[[], None] | None = None,
    ) -> bool:
        """Take the role, waiting up to ``wait_seconds`` (None: for ever); True once held."""
        deadline = None if wait_seconds is None else time.monotonic() + wait_seconds
        announced = False
        while True:
            conn = psycopg.connect(self._url, autocommit=True)
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", (self._key,)).fetchone()
            if row is not None and row[0]:
                self._conn = conn
                self._watch.start()
                return True
            conn.close()
            if not announced and waiting is not None:
                waiting()
                announced = True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(poll_seconds)

    def _check(self) -> None:
        conn = self._conn
        if conn is None:
            return
        try:
            conn.execute("SELECT 1")
        except psycopg.Error:
            self._conn = None
            self._on_lost()

    def release(self) -> None:
        self._watch.close()
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()  # ends the session, and with it the lock
