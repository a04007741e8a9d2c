"""Each serving process's copy of the keys table: verification without a database round trip.

The copy is re-read every ``ABX_KEY_REFRESH_SECONDS`` (1 s by default), so a revocation
reaches every worker of every replica within that plus one query: well inside the promised
5 s. A token whose key id is not in the copy yet (a key made a moment ago) is looked up once,
within a small budget per refresh, so garbage tokens cannot turn into a query each.

While PostgreSQL is unreachable the last copy keeps answering; it is also written to
``$ABX_DATA_DIR/access/keys.json`` (hashes only, mode 0600), so a process started during an
outage verifies keys as of the last one that saw the database. A process with neither cannot
tell a good key from a bad one: ``KeysUnavailable`` (503), never a guess.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from service.access.keys import ApiKey, all_keys, find_key, parse_token, record_use, token_digest
from service.background import PeriodicThread

log = logging.getLogger(__name__)
MISS_LOOKUPS_PER_REFRESH = 20
_DECOY = token_digest("abx_live_000000000000_decoy")


class KeysUnavailable(Exception):
    """No copy of the keys yet and the database is unreachable."""


def _moment(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _to_json(key: ApiKey) -> dict[str, Any]:
    return {
        "key_id": key.key_id, "name": key.name, "owner": key.owner, "created_by": key.created_by,
        "scopes": sorted(key.scopes), "token_sha256": key.token_sha256.hex(),
        "rate_limit": key.rate_limit, "created_at": key.created_at.isoformat(),
        "expires_at": key.expires_at.isoformat() if key.expires_at else None,
        "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
    }  # fmt: skip


def _from_json(item: dict[str, Any]) -> ApiKey:
    return ApiKey(
        item["key_id"], item["name"], item["owner"], item["created_by"], frozenset(item["scopes"]),
        bytes.fromhex(item["token_sha256"]), item["rate_limit"],
        datetime.fromisoformat(item["created_at"]), _moment(item["expires_at"]),
        _moment(item["revoked_at"]), None,
    )  # fmt: skip


class KeyDirectory(PeriodicThread):
    def __init__(
        self, database: Any, snapshot: Path | None, interval: float, lookup_timeout: float = 0.25
    ) -> None:
        super().__init__("abx-keys", interval)
        self._database = database
        self._snapshot = snapshot
        self._lookup_timeout = lookup_timeout
        self._keys: dict[str, ApiKey] = {}
        self._loaded = False
        self._written: list[dict[str, Any]] | None = None
        self._used: dict[str, float] = {}
        self._missed: set[str] = set()
        self._miss_budget = MISS_LOOKUPS_PER_REFRESH
        self._lock = threading.Lock()
        self.refreshed_at: float | None = None

    @property
    def loaded(self) -> bool:
        return self._loaded

    def load(self, timeout: float = 2.0) -> None:
        """At start: the table if it answers, else the snapshot a previous process left."""
        if self.refresh(timeout):
            return
        if self._snapshot is not None and self._snapshot.is_file():
            try:
                items = json.loads(self._snapshot.read_text("utf-8"))
                self._keys = {item["key_id"]: _from_json(item) for item in items}
                self._loaded = True
                log.warning("database unreachable: verifying keys from %s", self._snapshot)
            except (OSError, ValueError, KeyError) as error:
                log.error("cannot read the keys snapshot %s: %s", self._snapshot, error)

    def refresh(self, timeout: float = 2.0) -> bool:
        """Re-read the table; False (and the old copy kept) if the database is away."""
        try:
            with self._database.pool.connection(timeout=timeout) as conn:
                keys = all_keys(conn)
                used, self._used = self._used, {}
                record_use(conn, used)
        except Exception as error:
            log.debug("keys not refreshed: %s", error)
            return False
        self._keys = {key.key_id: key for key in keys}
        self._loaded = True
        self.refreshed_at = time.time()
        with self._lock:
            self._missed.clear()
            self._miss_budget = MISS_LOOKUPS_PER_REFRESH
        self._write_snapshot(keys)
        return True

    def tick(self) -> None:
        self.refresh(timeout=self._interval)

    def _write_snapshot(self, keys: list[ApiKey]) -> None:
        if self._snapshot is None:
            return
        items = sorted((_to_json(key) for key in keys), key=lambda item: item["key_id"])
        if items == self._written:
            return
        try:
            self._snapshot.parent.mkdir(parents=True, exist_ok=True)
            temporary = self._snapshot.with_name(f".{self._snapshot.name}.{os.getpid()}")
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                json.dump(items, handle)
            os.replace(temporary, self._snapshot)
            self._written = items
        except OSError as error:
            log.warning("cannot write the keys snapshot %s: %s", self._snapshot, error)

    def _look_up(self, key_id: str) -> ApiKey | None:
        """A key made since the last refresh; bounded so unknown ids cost little. One lookup
        at a time, so concurrent first requests with a new key wait for the same answer."""
        with self._lock:
            key = self._keys.get(key_id)
            if key is not None:
                return key
            if key_id in self._missed or self._miss_budget <= 0:
                return None
            self._miss_budget -= 1
            try:
                with self._database.pool.connection(timeout=self._lookup_timeout) as conn:
                    key = find_key(conn, key_id)
            except Exception as error:
                log.debug("key lookup failed: %s", error)
                return None
            if key is None:
                self._missed.add(key_id)
                return None
            self._keys = {**self._keys, key_id: key}
            return key

    def verify(self, token: str) -> ApiKey | None:
        """The key a token belongs to if it is active now, else None (whatever the reason)."""
        key_id = parse_token(token)
        key = None
        if key_id is not None:
            key = self._keys.get(key_id) or self._look_up(key_id)
        if key is None and key_id is not None and not self._loaded:
            raise KeysUnavailable("the keys cannot be read: the database is unreachable")
        # The same work whether the key exists or not: timing tells nothing either.
        matches = hmac.compare_digest(
            key.token_sha256 if key is not None else _DECOY, token_digest(token)
        )
        if key is None or not matches or key.state(datetime.now(UTC)) != "active":
            return None
        self._used[key.key_id] = time.time()
        return key

    def still_active(self, key_id: str) -> bool:
        """Whether a key verified earlier is still active (an open stream's check; no use
        recorded). While the database is away the last copy answers, as for ``verify``."""
        key = self._keys.get(key_id)
        return key is not None and key.state(datetime.now(UTC)) == "active"

    def active(self, key_id: str) -> ApiKey | None:
        """The key by id if it is active now (a session's key: no token to compare)."""
        key = self._keys.get(key_id)
        if key is None and not self._loaded:
            raise KeysUnavailable("the keys cannot be read: the database is unreachable")
        if key is None or key.state(datetime.now(UTC)) != "active":
            return None
        self._used[key.key_id] = time.time()
        return key
