"""The ``api_keys`` table: create, list, revoke and rotate keys; tokens and their hashes.

A token is ``abx_live_<key_id>_<secret>``: ``key_id`` (12 hex digits) finds the row and is
safe to show; the secret is 256 random bits. Only the SHA-256 of the whole token is stored
(a token that random needs no slow hash) and it is compared in constant time. The token is
printed once, at creation, and can never be shown again.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from limits import parse_many

from service.access.scopes import parse_scopes

TOKEN_PREFIX = "abx_live_"
KEY_ID_LENGTH = 12
_TOKEN = re.compile(rf"^{TOKEN_PREFIX}([0-9a-f]{{{KEY_ID_LENGTH}}})_[A-Za-z0-9_-]{{43}}$")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_DURATION = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_COLUMNS = (
    "key_id, name, owner, created_by, scopes, token_sha256, rate_limit, created_at, expires_at,"
    " revoked_at, last_used_at"
)


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    name: str
    owner: str
    created_by: str
    scopes: frozenset[str]
    token_sha256: bytes
    rate_limit: str | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None

    @property
    def actor(self) -> str:
        """What the audit log records for whoever holds this key."""
        return f"key:{self.name}"

    def state(self, now: datetime) -> str:
        """active, revoked or expired."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"


@dataclass(frozen=True)
class NewKey:
    key: ApiKey
    token: str
    """Shown once; abx keeps only its hash."""


def parse_token(token: str) -> str | None:
    """The key id of a well-formed token, else None (nothing to look up)."""
    match = _TOKEN.match(token)
    return match.group(1) if match else None


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def new_token() -> tuple[str, str]:
    key_id = secrets.token_hex(KEY_ID_LENGTH // 2)
    return key_id, f"{TOKEN_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"


def parse_duration(text: str) -> timedelta:
    """``90d``, ``12h``, ``30m``, ``2w`` or ``45s``."""
    match = _DURATION.match(text.strip())
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"{text!r} is not a duration like 90d, 12h, 30m, 2w or 45s")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def check_rate(text: str) -> str:
    """One limit such as ``2000/second``, ``100/minute`` or ``5 per 10 seconds`` (the
    ``limits`` library's syntax, as Flask-Limiter's)."""
    try:
        parsed = parse_many(text)
    except ValueError as error:
        raise ValueError(f"{text!r} is not a rate like 2000/second or 100/minute") from error
    if len(parsed) != 1:
        raise ValueError(f"{text!r} is not one rate like 2000/second or 100/minute")
    return text.strip()


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise ValueError(
            f"{name!r} is not a key name: 1-64 letters, digits, '.', '_', '@' or '-',"
            " starting with a letter or digit"
        )
    return name


def _row(row: tuple[Any, ...]) -> ApiKey:
    key_id, name, owner, created_by, scopes, digest, rate, created, expires, revoked, used = row
    return ApiKey(key_id, name, owner, created_by, frozenset(scopes), bytes(digest), rate,
                  created, expires, revoked, used)  # fmt: skip


def create_key(
    conn: Any,
    name: str,
    scopes: str | list[str],
    created_by: str,
    owner: str = "",
    expires_in: timedelta | None = None,
    rate_limit: str | None = None,
) -> NewKey:
    """A new key; the token is in the answer and nowhere else. ``created_by`` is the
    verified actor who made it (``key:<name>`` or ``cli:<user>``)."""
    check_name(name)
    scope_set = parse_scopes(scopes)
    rate = check_rate(rate_limit) if rate_limit else None
    key_id, token = new_token()
    row = conn.execute(
        "INSERT INTO api_keys (key_id, name, owner, created_by, scopes, token_sha256, rate_limit,"
        f" expires_at) VALUES (%s, %s, %s, %s, %s, %s, %s, now() + %s) RETURNING {_COLUMNS}",
        (key_id, name, owner, created_by, sorted(scope_set), token_digest(token), rate, expires_in),
    ).fetchone()
    return NewKey(_row(row), token)


def list_keys(conn: Any, include_revoked: bool = False) -> list[ApiKey]:
    where = "" if include_revoked else " WHERE revoked_at IS NULL"
    rows = conn.execute(f"SELECT {_COLUMNS} FROM api_keys{where} ORDER BY name, created_at")
    return [_row(row) for row in rows.fetchall()]


def all_keys(conn: Any) -> list[ApiKey]:
    """Every key, revoked ones included (what each serving process caches)."""
    return [_row(row) for row in conn.execute(f"SELECT {_COLUMNS} FROM api_keys").fetchall()]


def find_key(conn: Any, key_id: str) -> ApiKey | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE key_id = %s", (key_id,)).fetchone()
    return _row(row) if row else None


def key_id_of(reference: str) -> str:
    """A key id, or the id inside a whole token (so a leaked token can be revoked as pasted)."""
    return parse_token(reference.strip()) or reference.strip()


def revoke_key(conn: Any, key_id: str) -> ApiKey | None:
    """Revoke now (a second revocation keeps the first time); None if there is no such key."""
    row = conn.execute(
        f"UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE key_id = %s"
        f" RETURNING {_COLUMNS}",
        (key_id_of(key_id),),
    ).fetchone()
    return _row(row) if row else None


def rotate_key(
    conn: Any, name: str, grace: timedelta, created_by: str
) -> tuple[NewKey, list[ApiKey]]:
    """A new key like the newest active key named ``name``; the old ones expire after
    ``grace``, so the client can switch over while both work."""
    with conn.transaction():
        active = [
            key
            for key in conn.execute(
                f"SELECT {_COLUMNS} FROM api_keys WHERE name = %s AND revoked_at IS NULL"
                " AND (expires_at IS NULL OR expires_at > now()) ORDER BY created_at FOR UPDATE",
                (name,),
            ).fetchall()
        ]
        if not active:
            raise LookupError(f"no active key named {name!r}")
        template = _row(active[-1])
        new = create_key(conn, name, sorted(template.scopes), created_by, template.owner, None,
                         template.rate_limit)  # fmt: skip
        rows = conn.execute(
            f"UPDATE api_keys SET expires_at = least(coalesce(expires_at, 'infinity'),"
            f" now() + %s) WHERE key_id = ANY(%s) RETURNING {_COLUMNS}",
            (grace, [row[0] for row in active]),
        ).fetchall()
    return new, [_row(row) for row in rows]


def record_use(conn: Any, used: dict[str, float]) -> None:
    """Last use per key, batched by the serving processes off the request path."""
    if not used:
        return
    ids = list(used)
    moments = [datetime.fromtimestamp(used[key_id], UTC) for key_id in ids]
    conn.execute(
        "UPDATE api_keys AS k SET last_used_at = greatest(k.last_used_at, u.at)"
        " FROM unnest(%s::text[], %s::timestamptz[]) AS u(key_id, at) WHERE k.key_id = u.key_id",
        (ids, moments),
    )


def describe(key: ApiKey, now: datetime | None = None) -> dict[str, Any]:
    """A key as ``abx keys list`` and ``GET /v1/keys`` show it: never its secret."""
    moment = now or datetime.now(UTC)

    def iso(value: datetime | None) -> str | None:
        return value.isoformat() if value else None

    return {
        "key_id": key.key_id,
        "prefix": f"{TOKEN_PREFIX}{key.key_id}_…",
        "name": key.name,
        "actor": key.actor,
        "owner": key.owner,
        "scopes": sorted(key.scopes),
        "rate_limit": key.rate_limit,
        "state": key.state(moment),
        "created_by": key.created_by,
        "created_at": iso(key.created_at),
        "expires_at": iso(key.expires_at),
        "revoked_at": iso(key.revoked_at),
        "last_used_at": iso(key.last_used_at),
    }
