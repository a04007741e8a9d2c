"""One holder of a role at a time, by PostgreSQL advisory lock, freed when the holder dies."""

from __future__ import annotations

import subprocess
import sys
import threading

import psycopg

from service.storage.leader import Leadership, lock_key
from tests.conftest import wait_for


def test_a_second_holder_waits_until_the_first_releases(db: str) -> None:
    first = Leadership(db, "scheduler", on_lost=lambda: None)
    second = Leadership(db, "scheduler", on_lost=lambda: None)
    other_role = Leadership(db, "something-else", on_lost=lambda: None)
    try:
        assert first.acquire(wait_seconds=0)
        assert not second.acquire(wait_seconds=0.5, poll_seconds=0.1)
        assert other_role.acquire(wait_seconds=0)  # roles are independent
        first.release()
        assert second.acquire(wait_seconds=5, poll_seconds=0.1)
    finally:
        for leadership in (first, second, other_role):
            leadership.release()


def test_a_killed_holder_frees_the_role(db: str) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from service.storage.leader import Leadership;"
         " assert Leadership(sys.argv[1], 'scheduler', on_lost=lambda: None).acquire(0);"
         " print('held', flush=True); time.sleep(600)", db],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    standby = Leadership(db, "scheduler", on_lost=lambda: None)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert not standby.acquire(wait_seconds=0)
        holder.kill()  # SIGKILL: no release; PostgreSQL ends the session and its lock
        holder.wait()
        assert standby.acquire(wait_seconds=20, poll_seconds=0.1)
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
        standby.release()


def test_a_holder_that_loses_its_connection_is_told(db: str) -> None:
    lost = threading.Event()
    leadership = Leadership(db, "scheduler", on_lost=lost.set, check_seconds=0.1)
    try:
        assert leadership.acquire(wait_seconds=0)
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_locks"
                " WHERE locktype = 'advisory' AND objid = (%s::bigint & 4294967295)::oid",
                (lock_key("scheduler"),),
            )
        assert wait_for(lost.is_set, timeout=10)
    finally:
        leadership.release()
