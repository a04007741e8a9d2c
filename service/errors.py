"""Every error a client can get, rendered as RFC 9457 ``application/problem+json``.

    AbxError (500 internal-error)
    ├── BadRequest (400 bad-request)
    │   └── MalformedJson (400 malformed-json)
    ├── Unauthorized (401 unauthorized)  — no key, or one that is unknown, revoked or expired
    ├── Forbidden (403 forbidden)  — a valid key without the operation's scope
    ├── NotFound (404 not-found)
    │   ├── UnknownExperiment (404 unknown-experiment)
    │   └── UnknownHoldout (404 unknown-holdout)
    ├── MethodNotAllowed (405 method-not-allowed)
    ├── Conflict (409 conflict)
    ├── PayloadTooLarge (413 payload-too-large)
    ├── UnsupportedMediaType (415 unsupported-media-type)
    ├── InvalidRequest (422 invalid-request)  — carries one entry per offending field
    │   └── InputMismatch (422 input-mismatch)  — model inputs that do not fit its signature
    ├── TooManyRequests (429 too-many-requests)  — over a rate limit; says when to retry
    └── ServiceUnavailable (503 service-unavailable)
        └── ModelUnavailable (503 model-unavailable)  — neither the variant's model nor the fallback

An error may carry response headers (``WWW-Authenticate``, ``Retry-After``, ``RateLimit-*``).
Exceptions only: ``service/api/problems.py`` renders them (and werkzeug's, and an
unreachable database) for the HTTP API, so the code that raises them needs no Flask.
"""

from __future__ import annotations

from typing import Any, ClassVar

PROBLEM_TYPE_BASE = "https://abx.dev/problems/"
PROBLEM_JSON = "application/problem+json"


class AbxError(Exception):
    status: ClassVar[int] = 500
    slug: ClassVar[str] = "internal-error"
    title: ClassVar[str] = "Internal error"

    def __init__(
        self,
        detail: str,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        self.headers = dict(headers or {})

    def problem(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": PROBLEM_TYPE_BASE + self.slug,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if self.errors is not None:
            body["errors"] = self.errors
        return body


class BadRequest(AbxError):
    status, slug, title = 400, "bad-request", "Bad request"


class MalformedJson(BadRequest):
    slug, title = "malformed-json", "Malformed JSON"


class Unauthorized(AbxError):
    status, slug, title = 401, "unauthorized", "Missing or wrong API key"


class Forbidden(AbxError):
    status, slug, title = 403, "forbidden", "The key lacks the scope this operation needs"


class NotFound(AbxError):
    status, slug, title = 404, "not-found", "Not found"


class UnknownExperiment(NotFound):
    slug, title = "unknown-experiment", "Unknown experiment"


class UnknownHoldout(NotFound):
    slug, title = "unknown-holdout", "Unknown holdout"


class MethodNotAllowed(AbxError):
    status, slug, title = 405, "method-not-allowed", "Method not allowed"


class Conflict(AbxError):
    status, slug, title = 409, "conflict", "Conflict with the current state"


class PayloadTooLarge(AbxError):
    status, slug, title = 413, "payload-too-large", "Payload too large"


class UnsupportedMediaType(AbxError):
    status, slug, title = 415, "unsupported-media-type", "Unsupported media type"


class InvalidRequest(AbxError):
    status, slug, title = 422, "invalid-request", "Invalid request"


class TooManyRequests(AbxError):
    status, slug, title = 429, "too-many-requests", "Rate limit exceeded"


class ServiceUnavailable(AbxError):
    status, slug, title = 503, "service-unavailable", "Service unavailable"


class InputMismatch(InvalidRequest):
    slug, title = "input-mismatch", "Inputs do not match the model"


class ModelUnavailable(ServiceUnavailable):
    slug, title = "model-unavailable", "No working model"
