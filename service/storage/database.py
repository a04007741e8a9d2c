"""The connection pool, opened without waiting so the service starts while PostgreSQL is away."""

from __future__ import annotations

import logging

from psycopg_pool import ConnectionPool

log = logging.getLogger(__name__)


class Database:
    def __init__(self, url: str, max_size: int = 4) -> None:
        self.url = url
        self.pool = ConnectionPool(
            url,
            min_size=1,
            max_size=max_size,
            open=False,
            kwargs={"autocommit": True, "connect_timeout": 3},
            name="abx",
            check=ConnectionPool.check_connection,  # a restarted server leaves dead connections
            reconnect_timeout=0,  # keep retrying in the background for as long as it takes
        )

    def open(self) -> None:
        self.pool.open(wait=False)

    def close(self) -> None:
        self.pool.close(timeout=1)

    def is_reachable(self, timeout: float = 1.0) -> bool:
        try:
            with self.pool.connection(timeout=timeout) as conn:
                conn.execute("SELECT 1")
            return True
        except Exception as error:  # any failure means "not ready", never a crash
            log.debug("database not reachable: %s", error)
            return False
