"""Webhooks: the ``webhook_deliveries`` table, the signed payload, one delivery attempt.

A decision queues its deliveries in its own transaction; Celery tasks deliver them
(``tasks.py``), and receivers verify the HMAC-SHA256 in ``X-Abx-Signature``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from typing import Any

import requests
from psycopg.types.json import Jsonb

from service.observability.logging import REQUEST_ID_HEADER, current_request_id

SIGNATURE_HEADER = "X-Abx-Signature"


def body_bytes(payload: dict[str, Any]) -> bytes:
    """The exact bytes that are signed and sent (compact, keys sorted)."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str).encode()


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str) -> bool:
    return hmac.compare_digest(signature(secret, body), header)


def retry_delay_seconds(attempt: int, cap: float = 300.0) -> float:
    """Exponential backoff: 2, 4, 8, ... seconds, capped."""
    return float(min(cap, 2.0 ** max(1, attempt)))


def queue_deliveries(
    conn: Any, decision_id: str, urls: list[str], payload: dict[str, Any]
) -> list[str]:
    """One pending delivery per URL, in the caller's transaction; return their ids.

    Each keeps the id of the request (or task) that caused it, for its ``X-Request-ID``.
    """
    deliveries = []
    request_id = current_request_id()
    for url in urls:
        delivery_id = str(uuid.uuid4())
        conn.execute(
            "INSERT INTO webhook_deliveries (delivery_id, decision_id, url, payload, request_id)"
            " VALUES (%s, %s, %s, %s, %s)",
            (delivery_id, decision_id, url, Jsonb(payload), request_id),
        )
        deliveries.append(delivery_id)
    return deliveries


def deliver_once(conn: Any, delivery_id: str, secret: str, timeout: float) -> bool | None:
    """POST one pending delivery: True on success, False on failure, None if nothing to do."""
    row = conn.execute(
        "SELECT url, payload, status, request_id FROM webhook_deliveries WHERE delivery_id = %s",
        (delivery_id,),
    ).fetchone()
    if row is None or row[2] != "pending":
        return None
    url, payload, _, request_id = row
    body = body_bytes(payload)
    headers = {"Content-Type": "application/json", SIGNATURE_HEADER: signature(secret, body)}
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
