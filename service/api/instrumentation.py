"""Every request gets a request id, a line in the access log and its place in the metrics.

``X-Request-ID`` is taken from the caller when it is short and plain
(``observability.logging.request_id_from``), else made here, returned on every
response (errors included) and bound to the log context, so every line the request
causes, the Celery tasks it enqueues and the webhooks those send carry it. Routes are
labelled by their URL rule (``/v1/experiments/<key>``), never by the path.

``init_app`` runs first in ``create_app``: its ``before_request`` must run before any
hook that may refuse the request, so that a refusal is counted and logged too.
"""

from __future__ import annotations

import threading
import time

from flask import Flask, Response, g, request

from service.observability import metrics
from service.observability.logging import (
    REQUEST_ID_HEADER,
    end_context,
    log_access,
    request_id_from,
    start_context,
)

_PATH_CHARS = 200


class InFlight:
    """Requests being handled by this process: counted in memory, sampled into the gauge
    (``publish_metrics``) instead of two writes to the metrics file per request."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0

    def enter(self) -> None:
        with self._lock:
            self.count += 1

    def leave(self) -> None:
        with self._lock:
            self.count -= 1


in_flight = InFlight()


def publish_metrics() -> None:
    metrics.HTTP_IN_FLIGHT.set(in_flight.count)


def _route() -> str:
    rule = request.url_rule
    return rule.rule if rule is not None else metrics.UNMATCHED_ROUTE


def init_app(app: Flask, access_log: bool = True) -> None:
    @app.before_request
    def _begin() -> None:
        g.abx_started = time.perf_counter()
        g.abx_request_id = request_id_from(request.headers.get(REQUEST_ID_HEADER))
        start_context(request_id=g.abx_request_id)
        in_flight.enter()
        g.abx_in_flight = True

    @app.after_request
    def _finish(response: Response) -> Response:
        request_id = g.get("abx_request_id") or request_id_from(None)
        response.headers[REQUEST_ID_HEADER] = request_id
        started = g.get("abx_started")
        seconds = time.perf_counter() - started if started is not None else 0.0
        method = request.method if request.method in metrics.METHODS else "other"
        route = _route()
        status = response.status_code
        metrics.HTTP_REQUESTS.labels(method, route, str(status)).inc()
        metrics.HTTP_DURATION.labels(method, route).observe(seconds)
        if access_log:
            log_access(
                method=method,
                route=route,
                path=request.path[:_PATH_CHARS],
                status=status,
                duration_ms=round(seconds * 1000, 3),
            )
        return response

    @app.teardown_request
    def _end(error: BaseException | None) -> None:
        if g.pop("abx_in_flight", False):
            in_flight.leave()
        end_context()
