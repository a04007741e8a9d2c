"""Webhook payloads and their HMAC-SHA256 signature (receivers verify ``X-Abx-Signature``)."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

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
