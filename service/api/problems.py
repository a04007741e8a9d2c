"""Render every error as RFC 9457 ``application/problem+json``: ours, werkzeug's, and one
handler for an unreachable database, so no route needs its own ``try``.

A client never sees a stack trace: anything unexpected becomes a bare 500 problem and is
logged here with its traceback.
"""

from __future__ import annotations

import logging

import psycopg
from flask import Flask, Response, json
from werkzeug.exceptions import HTTPException

from service.errors import (
    PROBLEM_JSON,
    AbxError,
    BadRequest,
    Conflict,
    Forbidden,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    TooManyRequests,
    Unauthorized,
    UnsupportedMediaType,
)
from service.storage.quarantine import error_text

log = logging.getLogger(__name__)

DATABASE_UNREACHABLE = (psycopg.OperationalError, psycopg.InterfaceError)
"""A connection or server failure (``psycopg_pool.PoolTimeout`` is an ``OperationalError``);
a row PostgreSQL refuses (``DataError``, ``IntegrityError``) is not an outage."""

_HTTP_STATUS: dict[int, type[AbxError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    405: MethodNotAllowed,
    409: Conflict,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    422: InvalidRequest,
    429: TooManyRequests,
    503: ServiceUnavailable,
}


def problem_response(error: AbxError, headers: dict[str, str] | None = None) -> Response:
    response = Response(json.dumps(error.problem()), status=error.status, mimetype=PROBLEM_JSON)
    for name, value in {**error.headers, **(headers or {})}.items():
        response.headers[name] = value
    return response


def init_app(app: Flask) -> None:
    """Render every error, ours or werkzeug's, as a problem document."""

    @app.errorhandler(AbxError)
    def _abx(error: AbxError) -> Response:
        return problem_response(error)

    @app.errorhandler(HTTPException)
    def _http(error: HTTPException) -> Response:
        status = error.code or 500
        kind = _HTTP_STATUS.get(status, AbxError)
        problem = kind(error.description or kind.title)
        response = problem_response(problem)
        response.status_code = status
        if status == 405 and error.response is None:
            allowed = getattr(error, "valid_methods", None)
            if allowed:
                response.headers["Allow"] = ", ".join(sorted(allowed))
        return response

    @app.errorhandler(psycopg.OperationalError)
    @app.errorhandler(psycopg.InterfaceError)
    def _database(error: psycopg.Error) -> Response:
        log.warning("database unreachable: %s: %s", type(error).__name__, error)
        return problem_response(
            ServiceUnavailable(f"The database is not reachable: {type(error).__name__}.")
        )

    @app.errorhandler(psycopg.DataError)
    @app.errorhandler(UnicodeEncodeError)
    def _refused(error: Exception) -> Response:
        # A value the checks before it let through and PostgreSQL refused (a NUL, a lone
        # surrogate, a number out of range): the request is at fault, and its transaction
        # rolled back, so nothing of it was written.
        log.warning("the database refused a value: %s", error_text(error))
        return problem_response(
            InvalidRequest(f"The database refused a value of this request: {error_text(error)}")
        )

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        log.exception("unhandled error")
        return problem_response(AbxError("The server failed to handle this request."))
