"""``/v1/keys``: list, create and revoke API keys (scope ``admin``). ``abx keys`` does the same
from a shell with database access; both record who did it."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app

from service.access.keys import create_key, describe, list_keys, parse_duration, revoke_key
from service.api import auth
from service.api.bodies import KeyRequest
from service.api.body import parse_json_body
from service.errors import InvalidRequest, NotFound

bp = Blueprint("keys", __name__)


def _connection() -> Any:
    return current_app.extensions["abx"].database.pool.connection(timeout=2.0)


@bp.get("/v1/keys")
def list_all() -> dict[str, Any]:
    with _connection() as conn:
        return {"keys": [describe(key) for key in list_keys(conn, include_revoked=True)]}


@bp.post("/v1/keys")
def create() -> tuple[dict[str, Any], int]:
    body = parse_json_body(KeyRequest)
    try:
        expires_in = parse_duration(body.expires_in) if body.expires_in else None
    except ValueError as error:
        raise InvalidRequest(
            str(error), [{"field": "expires_in", "message": str(error)}]
        ) from error
    try:
        with _connection() as conn:
            new = create_key(conn, body.name, body.scopes, auth.current().actor, body.owner,
                             expires_in, body.rate_limit)  # fmt: skip
    except ValueError as error:
        field = "scopes" if "scope" in str(error) else "rate_limit"
        raise InvalidRequest(str(error), [{"field": field, "message": str(error)}]) from error
    return {**describe(new.key), "token": new.token}, 201


@bp.delete("/v1/keys/<key_id>")
def revoke(key_id: str) -> dict[str, Any]:
    with _connection() as conn:
        key = revoke_key(conn, key_id)
    if key is None:
        raise NotFound(f"There is no key {key_id!r}.")
    return describe(key)
