"""Webhooks: the ``webhook_deliveries`` table, the signed payload, one delivery attempt.

A decision queues its deliveries in its own transaction; Celery tasks deliver them
(``tasks.py``). Each attempt is signed as the Standard Webhooks specification says
(standardwebhooks.com): ``webhook-id`` (the delivery's id, the same on every retry, so a
receiver can drop duplicates), ``webhook-timestamp`` (this attempt, Unix seconds, so a
receiver can refuse old replays) and ``webhook-signature``: ``v1,<base64 HMAC-SHA256 of
"id.timestamp.body">`` for each configured ``whsec_`` secret, space-separated, so receivers
holding the old or the new secret both verify during a rotation. ``docs/webhooks.md`` has a
receiver.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

import requests
from psycopg.types.json import Jsonb
from standardwebhooks.webhooks import Webhook

from service.observability.logging import REQUEST_ID_HEADER, current_request_id

SECRET_PREFIX = "whsec_"
MIN_SECRET_BYTES = 24
MAX_SECRET_BYTES = 64


class WebhookSecretError(ValueError):
    """Webhooks are configured without a usable secret: the process refuses to start."""


def body_bytes(payload: dict[str, Any]) -> bytes:
    """The exact bytes that are signed and sent (compact, keys sorted)."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str).encode()


def secret_problem(secret: str) -> str | None:
    """Why a secret is unusable (None: it is fine). The spec: whsec_ + base64 of 24-64 bytes."""
    if not secret.startswith(SECRET_PREFIX):
        return f"a webhook secret starts with {SECRET_PREFIX!r} (abx webhooks new-secret makes one)"
    try:
        raw = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        return "a webhook secret is whsec_ followed by base64"
    if not MIN_SECRET_BYTES <= len(raw) <= MAX_SECRET_BYTES:
        return (
            f"a webhook secret holds {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} random bytes"
            f" (this one {len(raw)})"
        )
    return None


def check_secrets(secrets: list[str], webhooks_configured: bool) -> None:
    """Refuse to start on a bad secret, or on webhooks with none to sign them."""
    problems = [problem for secret in secrets if (problem := secret_problem(secret))]
    if webhooks_configured and not secrets:
        problems.append("experiments have policy.webhooks but ABX_WEBHOOK_SECRET is empty")
    if problems:
        raise WebhookSecretError(
            "ABX_WEBHOOK_SECRET: "
            + "; ".join(problems)
            + " (generate one with `abx webhooks new-secret`)"
        )


def new_secret() -> str:
    import secrets as random

    return SECRET_PREFIX + base64.b64encode(random.token_bytes(32)).decode()


def signature_headers(
    secrets: list[str], message_id: str, body: bytes, moment: datetime | None = None
) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt, signed with every secret."""
    moment = moment or datetime.now(UTC)
    signatures = " ".join(Webhook(secret).sign(message_id, moment, body) for secret in secrets)
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(moment.timestamp())),
        "webhook-signature": signatures,
    }


def retry_delay_seconds(attempt: int, cap: float = 300.0) -> float:
    """Exponential backoff: 2, 4, 8, ... seconds, capped."""
    return float(min(cap, 2.0 ** max(1, attempt)))


def queue_deliveries(
    conn: Any, decision_id: str, urls: list[str], payload: dict[str, Any]
) -> list[str]:
    """One pending delivery per URL, in the caller's transaction; return their ids.

    Each keeps the id of the request (or task) that caused it, for its ``X-Request-ID``.
    """
    return _queue(conn, "decision_id", decision_id, urls, payload)


def queue_job_deliveries(
    conn: Any, job_id: str, urls: list[str], payload: dict[str, Any]
) -> list[str]:
    """A finished scoring job's announcements: delivered, signed and retried like a decision's."""
    return _queue(conn, "job_id", job_id, urls, payload)


def _queue(
    conn: Any,
    owner: Literal["decision_id", "job_id"],
    owner_id: str,
    urls: list[str],
    payload: dict[str, Any],
) -> list[str]:
    deliveries = []
    request_id = current_request_id()
    for url in urls:
        delivery_id = str(uuid.uuid4())
        conn.execute(
            f"INSERT INTO webhook_deliveries (delivery_id, {owner}, url, payload, request_id)"
            " VALUES (%s, %s, %s, %s, %s)",
            (delivery_id, owner_id, url, Jsonb(payload), request_id),
        )
        deliveries.append(delivery_id)
    return deliveries


def deliver_once(conn: Any, delivery_id: str, secrets: list[str], timeout: float) -> bool | None:
    """POST one pending delivery: True on success, False on failure, None if nothing to do."""
    row = conn.execute(
        "SELECT url, payload, status, request_id FROM webhook_deliveries WHERE delivery_id = %s",
        (delivery_id,),
    ).fetchone()
    if row is None or row[2] != "pending":
        return None
    url, payload, _, request_id = row
    body = body_bytes(payload)
    if not secrets:  # a webhook added to the YAML after this process started without a secret
        ok, error = False, "not sent: ABX_WEBHOOK_SECRET is empty, nothing to sign it with"
    else:
        headers = {"Content-Type": "application/json",
                   **signature_headers(secrets, delivery_id, body)}  # fmt: skip
        request_id = request_id or current_request_id()
        if request_id:
            headers[REQUEST_ID_HEADER] = request_id
        try:
            response = requests.post(url, data=body, headers=headers, timeout=timeout)
            ok, error = response.status_code < 300, f"HTTP {response.status_code}"
        except requests.RequestException as failure:
            ok, error = False, f"{type(failure).__name__}: {failure}"
    conn.execute(
        "UPDATE webhook_deliveries SET attempts = attempts + 1, status = %s, last_error = %s,"
        " updated_at = now() WHERE delivery_id = %s",
        ("delivered" if ok else "pending", None if ok else error, delivery_id),
    )
    return ok


def mark_failed(conn: Any, delivery_id: str) -> None:
    conn.execute(
        "UPDATE webhook_deliveries SET status = 'failed' WHERE delivery_id = %s", (delivery_id,)
    )


def stale_deliveries(conn: Any, max_attempts: int) -> list[str]:
    """Deliveries still pending two minutes on (a worker died between commit and enqueue)."""
    rows = conn.execute(
        "SELECT delivery_id FROM webhook_deliveries WHERE status = 'pending'"
        " AND updated_at < now() - interval '2 minutes' AND attempts < %s",
        (max_attempts,),
    ).fetchall()
    return [str(delivery_id) for (delivery_id,) in rows]
