"""What each operation needs, read from the OpenAPI description's security requirements.

The description is the single source: an operation lists the schemes that may carry a key
(``bearer``, ``apiKey``, and ``session`` for the dashboards' cookie) with the one scope it
needs, ``[{}]`` when it is open, or both when a key is optional and only adds detail
(``/readyz``). ``x-abx-rate-limit: sign-in`` marks the sign-in form, whose failures are
throttled per client. Every route the app serves must have an operation that says so; a route
without one stops the app from starting, and ``tests/api/test_access.py`` says what to add.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from service.access.scopes import SCOPES

SCHEMES = ("bearer", "apiKey", "session")
_CONVERTER = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")


@dataclass(frozen=True)
class Requirement:
    operation: str
    """``POST /v1/assign``: what error messages and logs call it."""
    scope: str | None
    """The scope a key needs (None: none can add anything)."""
    open: bool
    """A request without a key is served."""
    session: bool
    """The dashboards' session cookie counts as a key."""
    headers: bool = True
    """A key in ``Authorization: Bearer`` or ``X-API-Key`` counts."""
    sign_in: bool = False


@dataclass(frozen=True)
class Route:
    endpoint: str
    method: str
    path: str
    """The Flask rule written as an OpenAPI path: ``/v1/experiments/{key}``."""


def openapi_path(rule: str) -> str:
    """``/v1/experiments/<key>`` -> ``/v1/experiments/{key}`` (converters dropped)."""
    return _CONVERTER.sub(r"{\1}", rule)


def _how_to_declare(route: Route) -> str:
    return (
        f"{route.method} {route.path} (endpoint {route.endpoint}) has no security declaration"
        f" in service/api/openapi.yaml: add\n  paths:\n    {route.path}:\n"
        f"      {route.method.lower()}:\n        security: [{{bearer: [SCOPE]}}, {{apiKey: [SCOPE]}}]"
        f"\nwith SCOPE one of {', '.join(SCOPES)} (a new scope goes in service/access/scopes.py"
        " first), or `security: [{}]` for a route anyone may call."
    )


def _requirement(route: Route, operation: dict[str, Any]) -> Requirement | str:
    security = operation.get("security")
    name = f"{route.method} {route.path}"
    if not isinstance(security, list) or not security:
        return _how_to_declare(route)
    open_ = False
    scopes: set[str | None] = set()
    schemes: set[str] = set()
    for alternative in security:
        if not isinstance(alternative, dict):
            return f"{name}: each security requirement is an object"
        if not alternative:
            open_ = True
        for scheme, listed in alternative.items():
            if scheme not in SCHEMES:
                return f"{name}: unknown security scheme {scheme!r} (schemes: {', '.join(SCHEMES)})"
            schemes.add(scheme)
            scopes.update(listed or [None])
    unknown = sorted(str(s) for s in scopes if s not in SCOPES)
    if unknown:
        return (
            f"{name}: unknown scope(s) {', '.join(unknown)}; scopes: {', '.join(SCOPES)}"
            " (a new scope goes in service/access/scopes.py)"
        )
    if len(scopes) > 1:
        return f"{name}: every alternative must name the same one scope, not {sorted(map(str, scopes))}"
    return Requirement(
        name,
        next(iter(scopes), None),
        open_,
        session="session" in schemes,
        headers=bool(schemes & {"bearer", "apiKey"}),
        sign_in=operation.get("x-abx-rate-limit") == "sign-in",
    )


def requirements(
    document: dict[str, Any], routes: Iterable[Route]
) -> tuple[dict[tuple[str, str], Requirement], list[str]]:
    """(endpoint, method) -> requirement for every route, and what is wrong or missing."""
    found: dict[tuple[str, str], Requirement] = {}
    problems: list[str] = []
    paths = document.get("paths", {})
    for route in routes:
        operation = paths.get(route.path, {}).get(route.method.lower())
        result = _requirement(route, operation) if isinstance(operation, dict) else None
        if result is None:
            problems.append(_how_to_declare(route))
        elif isinstance(result, str):
            problems.append(result)
        else:
            found[(route.endpoint, route.method)] = result
    return found, problems
