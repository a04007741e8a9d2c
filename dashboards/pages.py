"""The ``/dashboards/`` blueprint: index, experiment pages, their numbers as JSON, plotly.js.

Protection (``service/api/auth.py`` enforces what ``openapi.yaml`` declares): every page needs
a key with ``dashboards:read``, sent as ``Authorization: Bearer``/``X-API-Key`` (scripts) or
through the sign-in form (people). Signing in opens a server-side session: the cookie holds a
signed random id (HttpOnly, SameSite=Lax, Secure behind HTTPS, expiring), never the key. The
sign-in and sign-out forms carry CSRF tokens; pages carry a Content-Security-Policy that lets
only this server's scripts run.
"""

from __future__ import annotations

import hmac
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import plotly
from flask import Blueprint, Response, current_app, g, redirect, request, send_from_directory
from werkzeug.wrappers import Response as BaseResponse

from dashboards.data import experiment_page, index_rows
from dashboards.render import render_experiment, render_index, render_login
from dashboards.report import plotly_source
from service.access.directory import KeysUnavailable
from service.access.sessions import CSRF_COOKIE, SESSION_COOKIE
from service.decisions.results import json_safe
from service.errors import UnknownExperiment

bp = Blueprint("dashboards", __name__, url_prefix="/dashboards")
PLOTLY_URL = f"/dashboards/static/plotly-{plotly.__version__}.min.js"
SCRIPTS = Path(__file__).parent / "static"
POLICY = "; ".join([
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self' 'unsafe-inline'",  # plotly sets styles from script; pages colour swatches
    "img-src 'self' data:",
    "font-src 'self' data:",
    "connect-src 'self'",
    "form-action 'self'",
    "base-uri 'none'",
    "frame-ancestors 'none'",
])  # fmt: skip
REPORT_POLICY = "sandbox; default-src 'none'; frame-ancestors 'none'"
"""A report is a download with its scripts inline; opened from the server it runs nothing."""


def _runtime() -> Any:
    return current_app.extensions["abx"]


def _safe_next(target: str | None) -> str:
    """Only paths on this site (no open redirect)."""
    parts = urlsplit(target or "")
    if parts.scheme or parts.netloc or not parts.path.startswith("/dashboards/"):
        return "/dashboards/"
    if target and (target.startswith("//") or "\\" in target):
        return "/dashboards/"
    return target or "/dashboards/"


def _account() -> dict[str, str] | None:
    """Who is signed in, for the page header's sign-out form (only with a session)."""
    access = g.get("access")
    session = getattr(access, "session", None)
    if access is None or session is None or access.key is None:
        return None
    return {"actor": access.key.actor, "csrf_token": session.csrf_token}


@bp.after_request
def _headers(response: Response) -> Response:
    if response.mimetype == "text/html":
        attachment = "attachment" in response.headers.get("Content-Disposition", "")
        response.headers["Content-Security-Policy"] = REPORT_POLICY if attachment else POLICY
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "same-origin"
    if request.endpoint not in ("dashboards.plotly_js", "dashboards.script"):
        response.headers["Cache-Control"] = "no-store"
    return response


def _sign_in_page(error: str | None, next_url: str, status: int = 200) -> Response:
    """The form with a fresh CSRF token bound to a nonce in a cookie (double submit)."""
    nonce = secrets.token_urlsafe(24)
    try:
        token = _runtime().sessions.signer().form_token(nonce)
    except Exception:  # no database: no secret to sign with
        return Response(render_login("Signing in is not possible right now: the database is"
                                     " unreachable.", next_url, ""), 503)  # fmt: skip
    hours = _runtime().settings.session_hours
    response = Response(render_login(error, next_url, token, hours), status)
    response.set_cookie(CSRF_COOKIE, nonce, max_age=3600, httponly=True, samesite="Strict",
                        secure=request.is_secure, path="/dashboards/")  # fmt: skip
    return response


@bp.route("/login", methods=["GET", "POST"])
def login() -> BaseResponse:
    runtime = _runtime()
    next_url = _safe_next(request.values.get("next"))
    if request.method == "GET":
        return _sign_in_page(None, next_url)
    if runtime.keys is None:  # ABX_AUTH=off: nothing to sign in to
        return redirect(next_url, code=303)
    try:
        signer = runtime.sessions.signer()
    except Exception:
        return _sign_in_page(None, next_url)
    if not signer.form_token_matches(
        request.form.get("csrf_token", ""), request.cookies.get(CSRF_COOKIE, "")
    ):
        return _sign_in_page("The form expired; please sign in again.", next_url, 400)
    try:
        key = runtime.keys.verify(request.form.get("key", "").strip())
    except KeysUnavailable:
        return _sign_in_page("Keys cannot be checked right now; try again shortly.", next_url, 503)
    if key is None:
        return _sign_in_page("That key is not valid.", next_url, 401)
    if "dashboards:read" not in key.scopes:
        return _sign_in_page("That key does not have the dashboards:read scope.", next_url, 403)
    try:
        _, cookie = runtime.sessions.open(key.key_id)
    except Exception:
        return _sign_in_page("Signing in is not possible right now; try again shortly.",
                             next_url, 503)  # fmt: skip
    response = redirect(next_url, code=303)
    response.set_cookie(SESSION_COOKIE, cookie, httponly=True, samesite="Lax",
                        secure=request.is_secure, path="/dashboards/",
                        max_age=int(runtime.sessions.lifetime.total_seconds()))  # fmt: skip
    response.delete_cookie(CSRF_COOKIE, path="/dashboards/")
    return response


@bp.post("/logout")
def logout() -> BaseResponse:
    access = g.get("access")
    session = getattr(access, "session", None)
    if session is None or not hmac.compare_digest(
        request.form.get("csrf_token", ""), session.csrf_token
    ):
        return Response("The sign-out form is not valid; reload the page.", 400,
                        mimetype="text/plain")  # fmt: skip
    _runtime().sessions.end(session)
    response = redirect("/dashboards/login", code=303)
    response.delete_cookie(SESSION_COOKIE, path="/dashboards/")
    return response


@bp.get("/static/js/<name>")
def script(name: str) -> Response:
    response = send_from_directory(SCRIPTS, name, mimetype="text/javascript", max_age=300)
    return response


@bp.get("/static/plotly-<version>.min.js")
def plotly_js(version: str) -> Response:
    response = Response(plotly_source(), mimetype="text/javascript")
    response.cache_control.public = True
    response.cache_control.max_age = 7 * 24 * 3600  # versioned URL: safe to cache
    return response


def _connection() -> Any:
    return _runtime().database.pool.connection(timeout=2.0)


def _experiment(key: str) -> tuple[Any, dict[str, float]]:
    registry = _runtime().registry
    compiled = registry.get(key)
    if compiled is None:
        holdout = registry.holdouts.get(key)
        if holdout is not None:  # a holdout's page: its two groups, as an experiment's
            return registry.holdout_experiments[key], holdout.weights
        raise UnknownExperiment(f"There is no experiment {key!r}.")
    experiment = compiled.experiment
    weights = dict(zip(experiment.variant_keys, compiled.allocation.weights, strict=True))
    return experiment, weights


@bp.get("/")
def index() -> str:
    registry = _runtime().registry
    experiments = []
    for compiled in sorted(registry.all(), key=lambda c: c.experiment.key):
        experiments.append(_experiment(compiled.experiment.key))
    experiments.extend(_experiment(key) for key in sorted(registry.holdouts))
    with _connection() as conn:
        rows = index_rows(conn, experiments, datetime.now(UTC))
    return render_index(rows, datetime.now(UTC), account=_account())


def _page(key: str) -> Any:
    experiment, weights = _experiment(key)
    with _connection() as conn:
        return experiment_page(conn, experiment, weights, datetime.now(UTC))


@bp.get("/<key>")
def experiment(key: str) -> str:
    return render_experiment(
        _page(key), plotly_src=PLOTLY_URL, index_url="/dashboards/", account=_account()
    )


@bp.get("/<key>/report.html")
def report(key: str) -> Response:
    html = render_experiment(_page(key), plotly_src=None, plotly_inline=plotly_source())
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%MZ")
    return Response(html, mimetype="text/html", headers={
        "Content-Disposition": f'attachment; filename="{key}-{stamp}.html"'})  # fmt: skip


@bp.get("/<key>/data.json")
def data(key: str) -> dict[str, Any]:
    page = _page(key)
    return {
        "experiment": key,
        "generated_at": page.generated_at.isoformat(),
        "weights": page.weights,
        "analysis": json_safe(page.analysis),
        "evidence": json_safe(page.evidence),
        "exposures": json_safe(page.exposures),
        "model_health": json_safe(page.health),
        "decisions": json_safe(page.decisions),
        "state": json_safe(page.state),
        "sample_size": json_safe(page.sample_size),
        "models": json_safe(page.lineage),
    }
