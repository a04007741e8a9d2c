"""The scopes a key can hold. Each operation in ``service/api/openapi.yaml`` names one."""

from __future__ import annotations

SCOPES: dict[str, str] = {
    "assign": "assign units to variants (POST /v1/assign, /v1/assign/batch)",
    "predict": "assign and answer with the variant's model (POST /v1/predict)",
    "events:write": "record outcome events (POST /v1/events)",
    "experiments:read": "read definitions, metrics, analyses, decisions and readiness details",
    "decisions:write": "approve, pause, resume, promote or roll back (POST .../actions)",
    "dashboards:read": "sign in to and read the analyst dashboards",
    "admin": "create, list and revoke keys (/v1/keys)",
    "jobs": "submit, follow and cancel batch scoring jobs (/v1/jobs)",
}
"""Scope -> what it allows. A new scope is added here, then named in the OpenAPI description."""

DEFAULT_RATES: dict[str, str] = {
    "assign": "5000/second",
    "predict": "2000/second",
    "events:write": "1000/second",
    "experiments:read": "100/second",
    "decisions:write": "10/second",
    "dashboards:read": "50/second",
    "admin": "10/second",
    "jobs": "50/second",
}
"""Requests per key and scope unless ``ABX_RATE_LIMITS`` or the key's own ``--rate`` say
otherwise; generous, since they are there to stop a runaway client, not to meter one."""


def parse_scopes(text: str | list[str]) -> frozenset[str]:
    """``"assign,predict"`` or a list -> the set; an unknown scope is a ``ValueError``."""
    names = text.replace(" ", ",").split(",") if isinstance(text, str) else list(text)
    scopes = frozenset(name.strip() for name in names if name.strip())
    unknown = sorted(scopes - SCOPES.keys())
    if unknown:
        raise ValueError(f"unknown scope(s) {', '.join(unknown)}; scopes: {', '.join(SCOPES)}")
    if not scopes:
        raise ValueError(f"a key needs at least one scope; scopes: {', '.join(SCOPES)}")
    return scopes
