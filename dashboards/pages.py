"""The ``/dashboards/`` blueprint: index, experiment pages, their numbers as JSON, plotly.js.

Protection: when ``ABX_API_KEY`` is set, every page needs the same key, presented as
``Authorization: Bearer`` / ``X-API-Key`` (scripts) or through the sign-in form, which
keeps it in an HttpOnly, SameSite=Strict cookie (people). Without a key the service is
open, pages included, as the API is: for a private network only.
"""

from __future__ import annotations

import hmac
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import plotly
from flask import Blueprint, Response, current_app, redirect, request
from werkzeug.wrappers import Response as BaseResponse

from dashboards.data import experiment_page, index_rows
from dashboards.render import render_experiment, render_index, render_login
from dashboards.report import plotly_source
from service.decisions.results import json_safe
from service.errors import UnknownExperiment

bp = Blueprint("dashboards", __name__, url_prefix="/dashboards")
COOKIE = "abx_dashboard_key"
PLOTLY_URL = f"/dashboards/static/plotly-{plotly.__version__}.min.js"
OPEN_ENDPOINTS = {"dashboards.login", "dashboards.plotly_js"}


def _runtime() -> Any:
    return current_app.extensions["abx"]


def _key_matches(presented: str) -> bool:
    expected = _runtime().settings.api_key or ""
    return hmac.compare_digest(presented.encode(), expected.encode())


def _presented_key() -> str:
    authorization = request.headers.get("Authorization", "")
    if authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return request.headers.get("X-API-Key") or request.cookies.get(COOKIE, "")


def _safe_next(target: str | None) -> str:
    """Only paths on this site (no open redirect)."""
    parts = urlsplit(target or "")
    if parts.scheme or parts.netloc or not parts.path.startswith("/dashboards/"):
        return "/dashboards/"
    return target or "/dashboards/"


@bp.before_request
def _authenticate() -> BaseResponse | None:
    if not _runtime().settings.api_key or request.endpoint in OPEN_ENDPOINTS:
        return None
    if _key_matches(_presented_key()):
        return None
    if request.path.endswith(".json"):
        return Response('{"title": "Unauthorized"}', 401, mimetype="application/json")
    return redirect(f"/dashboards/login?next={request.full_path.rstrip('?')}", code=303)


@bp.route("/login", methods=["GET", "POST"])
def login() -> BaseResponse | str:
    next_url = _safe_next(request.values.get("next"))
    if request.method == "GET":
        return render_login(None, next_url)
    if not _key_matches(request.form.get("key", "")):
        return Response(render_login("That key is not right.", next_url), 401)
    response = redirect(next_url, code=303)
    response.set_cookie(COOKIE, request.form["key"], httponly=True, samesite="Strict",
                        secure=request.is_secure, path="/dashboards/")  # fmt: skip
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
    compiled = _runtime().registry.get(key)
    if compiled is None:
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
    with _connection() as conn:
        rows = index_rows(conn, experiments, datetime.now(UTC))
    return render_index(rows, datetime.now(UTC))


def _page(key: str) -> Any:
    experiment, weights = _experiment(key)
    with _connection() as conn:
        return experiment_page(conn, experiment, weights, datetime.now(UTC))


@bp.get("/<key>")
def experiment(key: str) -> str:
    return render_experiment(_page(key), plotly_src=PLOTLY_URL, index_url="/dashboards/")


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
    }
