"""Every request meets its operation's security requirement, read from the OpenAPI description.

Three steps, in this order, for every request:

1. ``_identify``: find the operation of the matched route, and the key (``Authorization:
   Bearer``, ``X-API-Key``, or on the dashboards the session cookie); note any failure.
2. count the request (``service/access/limiting.py``): per key and scope, or per client
   address when there is no valid key; failed sign-ins per client address. Over: 429.
3. raise the failure noted in step 1 (401, 403, or 503 when no copy of the keys could be
   read), so that a flood of bad keys is throttled before it is answered.

A missing, unknown, revoked or expired key gets the same 401: nothing tells whether a key
exists. A valid key without the scope gets 403 naming it. With ``ABX_AUTH=off`` nothing is
checked and nothing is counted.
"""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, Response, g, redirect, request
from flask_cors import CORS
from werkzeug.wrappers import Response as BaseResponse

from service.access.directory import KeyDirectory, KeysUnavailable
from service.access.keys import ApiKey, check_rate
from service.access.limiting import RateCounter, limit_item
from service.access.requirements import Requirement, Route, openapi_path, requirements
from service.access.scopes import DEFAULT_RATES, SCOPES
from service.access.sessions import SESSION_COOKIE, Session, SessionStore
from service.api.openapi import openapi_document
from service.errors import AbxError, Forbidden, ServiceUnavailable, TooManyRequests, Unauthorized
from service.settings import Settings

log = logging.getLogger(__name__)
REALM = 'Bearer realm="abx"'
UNAUTHENTICATED = "unauthenticated"
AUTH_OFF_WARNING = (
    "authentication is off (ABX_AUTH=off): every route is open to anyone who can reach this"
    " server, and the audit log cannot say who acted"
)


class RouteDeclarationError(RuntimeError):
    """A route without a usable security declaration: the app refuses to serve it."""


@dataclass
class Access:
    """What the current request presented and may do (``flask.g.access``)."""

    requirement: Requirement | None
    auth_off: bool = False
    key: ApiKey | None = None
    session: Session | None = None
    failure: AbxError | None = field(default=None, repr=False)
    presented: bool = False

    @property
    def granted(self) -> bool:
        """The key holds the operation's scope (or nothing is checked)."""
        if self.auth_off:
            return True
        scope = self.requirement.scope if self.requirement else None
        return self.key is not None and scope is not None and scope in self.key.scopes

    @property
    def actor(self) -> str:
        """Who the audit log says acted: the key's name, never anything the body says."""
        return self.key.actor if self.key is not None else UNAUTHENTICATED


def current() -> Access:
    access: Access | None = g.get("access")
    return access if access is not None else Access(None)


def route_table(app: Flask) -> dict[tuple[str, str], Requirement]:
    """Every route's requirement; raises naming each route that has none."""
    routes = [
        Route(rule.endpoint, method, openapi_path(rule.rule))
        for rule in app.url_map.iter_rules()
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"})
    ]
    table, problems = requirements(openapi_document(), routes)
    if problems:
        raise RouteDeclarationError("\n\n".join(problems))
    return table


def _presented_token() -> str | None:
    authorization = request.headers.get("Authorization", "")
    if authorization[:7].lower() == "bearer ":
        return authorization[7:].strip()
    return request.headers.get("X-API-Key") or None


def _missing(requirement: Requirement) -> Unauthorized:
    return Unauthorized(
        f"{requirement.operation} needs an API key with the scope '{requirement.scope}': send"
        " it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'.",
        headers={"WWW-Authenticate": f'{REALM}, scope="{requirement.scope}"'},
    )


INVALID = Unauthorized(
    "The API key is not valid: it is unknown, revoked or expired.",
    headers={"WWW-Authenticate": f'{REALM}, error="invalid_token"'},
)


def _unavailable() -> ServiceUnavailable:
    return ServiceUnavailable(
        "Keys cannot be verified now: the database is unreachable and this process has no"
        " copy of the keys yet.",
        headers={"Retry-After": "5"},
    )


class Gate:
    """The HTTP side of access control for one app."""

    def __init__(
        self, app: Flask, settings: Settings, keys: KeyDirectory | None, sessions: SessionStore
    ) -> None:
        self.settings = settings
        self.keys = keys
        self.sessions = sessions
        self.rates = {**DEFAULT_RATES, **settings.rate_limits}
        unknown = sorted(set(self.rates) - SCOPES.keys())
        if unknown:
            raise RouteDeclarationError(
                f"ABX_RATE_LIMITS names unknown scope(s) {', '.join(unknown)};"
                f" scopes: {', '.join(SCOPES)}"
            )
        for rate in [*self.rates.values(), settings.rate_limit_unauthenticated,
                     settings.rate_limit_sign_in]:  # fmt: skip
            check_rate(rate)
        self.table = route_table(app)
        self.counter = self._counter(settings) if settings.auth == "on" else None
        app.before_request(self._check)
        app.after_request(self._after)
        if settings.cors_origins:
            self._cors(app, settings.cors_origins)
        if settings.auth == "off":
            log.warning(AUTH_OFF_WARNING)

    # -- step 1 -------------------------------------------------------------------------------
    def _identify(self) -> None:
        rule = request.url_rule
        method = "GET" if request.method == "HEAD" else request.method
        requirement = None if rule is None else self.table.get((rule.endpoint, method))
        access = Access(requirement, auth_off=self.settings.auth == "off")
        g.access = access
        if requirement is None or access.auth_off:
            return
        token = _presented_token() if requirement.headers else None
        access.presented = token is not None
        try:
            if token is not None:
                access.key = self.keys.verify(token) if self.keys else None
                if access.key is None:
                    access.failure = INVALID
            elif requirement.session and request.cookies.get(SESSION_COOKIE):
                access.presented = True
                self._from_session(access, request.cookies[SESSION_COOKIE])
            else:
                access.failure = _missing(requirement)
        except KeysUnavailable:
            access.failure = _unavailable()
        if access.failure is None and not access.granted and requirement.scope is not None:
            access.failure = Forbidden(
                f"{requirement.operation} needs the scope '{requirement.scope}', which this key"
                " does not have.",
                headers={"WWW-Authenticate":
                         f'{REALM}, error="insufficient_scope", scope="{requirement.scope}"'},
            )  # fmt: skip
        if requirement.open:
            access.failure = None  # a key only adds detail here; without one the route answers

    def _from_session(self, access: Access, cookie: str) -> None:
        try:
            session = self.sessions.find(cookie)
        except Exception as error:  # the database is away: the session cannot be checked
            log.warning("session not checked: %s", error)
            access.failure = _unavailable()
            return
        key = self.keys.active(session.key_id) if session and self.keys else None
        if session is None or key is None:
            access.failure = INVALID
            return
        access.key, access.session = key, session

    # -- step 2 -------------------------------------------------------------------------------
    @staticmethod
    def _counter(settings: Settings) -> RateCounter:
        if settings.redis_url:
            return RateCounter(
                settings.redis_url, {"socket_timeout": 0.25, "socket_connect_timeout": 0.25}
            )
        path = (settings.data_dir / "access" / "rate-limits.bin").resolve()
        return RateCounter(f"abx+file://{path}")

    def _count(self, access: Access) -> None:
        """Count the request against its limit; raise 429 when it is over."""
        requirement = access.requirement
        if self.counter is None or requirement is None:
            return
        client = f"address:{request.remote_addr or 'unknown'}"
        if requirement.sign_in and request.method == "POST":
            # Only failures count (``_after``); a client over the limit may not even try.
            limit = self.settings.rate_limit_sign_in
            if not self.counter.test(limit, client, "sign-in"):
                raise self._too_many(limit, (client, "sign-in"), "this client address")
            return
        if requirement.open:
            return
        if access.key is not None and requirement.scope is not None:
            limit = access.key.rate_limit or self.rates[requirement.scope]
            bucket: tuple[str, ...] = (f"key:{access.key.key_id}", requirement.scope)
            who = "this key"
        else:
            limit = self.settings.rate_limit_unauthenticated
            bucket, who = (client, UNAUTHENTICATED), "this client address"
        if not self.counter.hit(limit, *bucket):
            raise self._too_many(limit, bucket, who)

    def _too_many(self, limit: str, bucket: tuple[str, ...], who: str) -> TooManyRequests:
        assert self.counter is not None
        window = limit_item(limit)
        retry = max(1, math.ceil(self.counter.reset_at(limit, *bucket) - time.time()))
        return TooManyRequests(
            f"More than {window.amount} requests per {window.get_expiry()} s from {who};"
            f" retry in {retry} s.",
            headers={
                "Retry-After": str(retry),
                "RateLimit-Limit": str(window.amount),
                "RateLimit-Remaining": "0",
                "RateLimit-Reset": str(retry),
                "RateLimit-Policy": f"{window.amount};w={window.get_expiry()}",
            },
        )

    def _after(self, response: Response) -> Response:
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        access: Access | None = g.get("access")
        requirement = access.requirement if access is not None else None
        if (
            self.counter is not None
            and requirement is not None
            and requirement.sign_in
            and request.method == "POST"
            and response.status_code == 401
        ):
            client = f"address:{request.remote_addr or 'unknown'}"
            self.counter.hit(self.settings.rate_limit_sign_in, client, "sign-in")
        return response

    # -- step 3 -------------------------------------------------------------------------------
    def _check(self) -> BaseResponse | None:
        self._identify()
        access = current()
        self._count(access)
        if access.failure is None:
            return None
        requirement = access.requirement
        browsing = (  # a person's browser (no key header; maybe an ended session): sign in
            request.method == "GET"
            and _presented_token() is None
            and "text/html" in request.headers.get("Accept", "")
        )
        if requirement is not None and requirement.session and browsing:
            return redirect(f"/dashboards/login?next={request.full_path.rstrip('?')}", code=303)
        raise access.failure

    def _cors(self, app: Flask, origins: list[str]) -> None:
        """Browsers on these origins may call the routes that need ``assign``."""
        paths = sorted({r.operation.split(" ", 1)[1] for r in self.table.values()
                        if r.scope == "assign"})  # fmt: skip
        resources: dict[str | re.Pattern[str], dict[str, Any]] = {
            "^" + re.sub(r"\{[^/{}]+\}", "[^/]+", path) + "$": {"origins": origins}
            for path in paths
        }
        CORS(app, resources=resources, allow_headers=["Authorization", "Content-Type",
             "X-API-Key"], methods=["GET", "POST"], max_age=600)  # fmt: skip
