"""Analysts' dashboard sessions: the ``dashboard_sessions`` and ``server_secrets`` tables.

The cookie holds a random session id signed with itsdangerous (tamper-evident, with its
age), never the key; PostgreSQL holds the id's SHA-256, the key it was opened with, its CSRF
token and its expiry. Signing out deletes the row; revoking the key ends its sessions too,
since every request checks the key as well as the session.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer

SESSION_COOKIE = "abx_session"
CSRF_COOKIE = "abx_csrf"
SIGN_IN_FORM_SECONDS = 3600


@dataclass(frozen=True)
class Session:
    session_id: str
    key_id: str
    csrf_token: str


def server_secret(conn: Any, name: str) -> bytes:
    """A secret shared by every process, made once by whichever asks first."""
    conn.execute(
        "INSERT INTO server_secrets (name, secret) VALUES (%s, %s) ON CONFLICT DO NOTHING",
        (name, secrets.token_bytes(32)),
    )
    row = conn.execute("SELECT secret FROM server_secrets WHERE name = %s", (name,)).fetchone()
    return bytes(row[0])


class Signer:
    """Signs session cookies and sign-in form tokens."""

    def __init__(self, secret: bytes, lifetime: timedelta) -> None:
        self._sessions = URLSafeTimedSerializer(secret, salt="abx.dashboard-session")
        self._forms = URLSafeTimedSerializer(secret, salt="abx.sign-in-form")
        self.lifetime = lifetime

    def cookie(self, session_id: str) -> str:
        return self._sessions.dumps(session_id)

    def session_id(self, cookie: str) -> str | None:
        try:
            value = self._sessions.loads(cookie, max_age=int(self.lifetime.total_seconds()))
        except BadSignature:
            return None
        return value if isinstance(value, str) else None

    def form_token(self, nonce: str) -> str:
        """The sign-in form's CSRF token, bound to the nonce in the ``abx_csrf`` cookie."""
        return self._forms.dumps(nonce)

    def form_token_matches(self, token: str, nonce: str) -> bool:
        try:
            value = self._forms.loads(token, max_age=SIGN_IN_FORM_SECONDS)
        except BadSignature:
            return False
        return isinstance(value, str) and bool(nonce) and hmac.compare_digest(value, nonce)


def _digest(session_id: str) -> bytes:
    return hashlib.sha256(session_id.encode()).digest()


def open_session(conn: Any, key_id: str, lifetime: timedelta) -> Session:
    session_id, csrf_token = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    with conn.transaction():
        conn.execute("DELETE FROM dashboard_sessions WHERE expires_at < now()")
        conn.execute(
            "INSERT INTO dashboard_sessions (session_sha256, key_id, csrf_token, expires_at)"
            " VALUES (%s, %s, %s, now() + %s)",
            (_digest(session_id), key_id, csrf_token, lifetime),
        )
    return Session(session_id, key_id, csrf_token)


def find_session(conn: Any, session_id: str) -> Session | None:
    row = conn.execute(
        "SELECT key_id, csrf_token FROM dashboard_sessions"
        " WHERE session_sha256 = %s AND expires_at > now()",
        (_digest(session_id),),
    ).fetchone()
    return Session(session_id, row[0], row[1]) if row else None


def end_session(conn: Any, session_id: str) -> None:
    conn.execute("DELETE FROM dashboard_sessions WHERE session_sha256 = %s", (_digest(session_id),))


class SessionStore:
    """The serving process's handle on sessions: its signer (made on first use, from
    ``ABX_SESSION_SECRET`` or the shared generated secret) and the table."""

    def __init__(self, database: Any, configured_secret: str | None, lifetime: timedelta) -> None:
        self._database = database
        self._configured = configured_secret.encode() if configured_secret else None
        self._lifetime = lifetime
        self._signer: Signer | None = None

    def _connection(self) -> Any:
        return self._database.pool.connection(timeout=2.0)

    def signer(self) -> Signer:
        if self._signer is None:
            secret = self._configured
            if secret is None:
                with self._connection() as conn:
                    secret = server_secret(conn, "dashboard-sessions")
            self._signer = Signer(secret, self._lifetime)
        return self._signer

    @property
    def lifetime(self) -> timedelta:
        return self._lifetime

    def open(self, key_id: str) -> tuple[Session, str]:
        """A new session and the cookie value that carries it."""
        with self._connection() as conn:
            session = open_session(conn, key_id, self._lifetime)
        return session, self.signer().cookie(session.session_id)

    def find(self, cookie: str) -> Session | None:
        session_id = self.signer().session_id(cookie)
        if session_id is None:
            return None
        with self._connection() as conn:
            return find_session(conn, session_id)

    def end(self, session: Session) -> None:
        with self._connection() as conn:
            end_session(conn, session.session_id)
