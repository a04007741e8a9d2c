"""What client SDKs use: the configuration snapshot, its stream, and their exposures.

``GET /v1/sdk/config`` answers the snapshot (``assignment/snapshot.py``) with its version as
ETag (304 to a matching ``If-None-Match``); ``GET /v1/sdk/stream`` pushes each new version as
a server-sent event. A stream holds one of the worker's threads (gthread), so a worker keeps at
most ``ABX_SDK_MAX_STREAMS`` open (503 beyond: the SDK polls with the ETag instead), and each
ends after ``ABX_SDK_STREAM_SECONDS`` or when the worker stops (the SDK reconnects). A stream
opened with a key ends, with an ``event: revoked``, as soon as this process's copy of the keys
(``access/directory.py``, re-read every ``ABX_KEY_REFRESH_SECONDS``) no longer holds the key
active: revoked or expired keys stop receiving configuration within about a second.
``POST /v1/sdk/exposures`` records what the SDK assigned locally (``assignment/exposures.py``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Blueprint, Flask, Response, current_app, request

from service.access.directory import KeyDirectory
from service.access.keys import ApiKey
from service.api import auth
from service.api.bodies import LocalExposureBatch
from service.api.body import parse_json_body
from service.assignment.exposures import (
    LocalExposure,
    is_current,
    is_current_holdout,
    record_batch,
)
from service.assignment.snapshot import Snapshot, SnapshotCache
from service.errors import InvalidRequest, PayloadTooLarge, ServiceUnavailable
from service.experiments.segments import recorded_attributes
from service.observability import metrics
from service.observability.logging import annotate, get_logger

bp = Blueprint("sdk", __name__)
log = get_logger(__name__)
STREAM_POLL_SECONDS = 0.05
KEEPALIVE_SECONDS = 10.0
OLDEST_EXPOSURE = timedelta(days=30)


class SdkState:
    """One worker's snapshot cache and its budget of open streams."""

    def __init__(self, cache: SnapshotCache, max_streams: int) -> None:
        self.cache = cache
        self.streams = threading.BoundedSemaphore(max_streams) if max_streams else None
        self.worker_alive: Callable[[], bool] = lambda: True
        """Replaced under gunicorn by the worker's own flag, so streams end when it stops."""


def init_app(app: Flask, cache: SnapshotCache, threads: int, max_streams: int | None) -> None:
    app.extensions["abx.sdk"] = SdkState(
        cache, max(1, threads // 2) if max_streams is None else max_streams
    )


def _state() -> SdkState:
    state: SdkState = current_app.extensions["abx.sdk"]
    return state


def _snapshot_response(snapshot: Snapshot) -> Response:
    headers = {"ETag": snapshot.etag, "Cache-Control": "no-cache"}
    if request.if_none_match.contains(snapshot.version):
        return Response(status=304, headers=headers)
    return Response(snapshot.body, mimetype="application/json", headers=headers)


@bp.get("/v1/sdk/config")
def config() -> Response:
    return _snapshot_response(_state().cache.current())


class _Events:
    """The event stream as a WSGI iterable: ``close()`` gives the stream's slot back even
    when the client left before the first event was sent."""

    def __init__(
        self,
        state: SdkState,
        seconds: float,
        last_version: str | None,
        key_active: Callable[[], bool],
    ) -> None:
        self._state = state
        self._seconds = seconds
        self._last_version = last_version
        self._key_active = key_active
        self._closed = False
        metrics.SDK_STREAMS.inc()

    def __iter__(self) -> Iterator[bytes]:
        state, sent = self._state, self._last_version
        deadline = time.monotonic() + self._seconds
        # An SDK counts any line as word from the server, and its snapshot's lease runs out
        # after the settle time without one (docs/sdk.md, "Cut off from the server"): a
        # quiet stream speaks at least three times within it.
        settle = state.cache.settle_seconds
        keepalive = KEEPALIVE_SECONDS if settle is None else min(KEEPALIVE_SECONDS, settle / 3)
        yield b"retry: 1000\n\n"
        quiet_since = time.monotonic()
        while state.worker_alive() and time.monotonic() < deadline:
            if not self._key_active():
                metrics.SDK_STREAMS_REVOKED.inc()
                log.info("sdk stream closed: its key is no longer active")
                yield b"event: revoked\ndata: {}\n\n"
                return
            snapshot = state.cache.current()
            if snapshot.version != sent:
                sent = snapshot.version
                yield b"id: " + sent.encode() + b"\nevent: config\ndata: " + snapshot.body + b"\n\n"
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= keepalive:
                yield b": keep-alive\n\n"
                quiet_since = time.monotonic()
            time.sleep(STREAM_POLL_SECONDS)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            metrics.SDK_STREAMS.dec()
            if self._state.streams is not None:
                self._state.streams.release()


@bp.get("/v1/sdk/stream")
def stream() -> Response:
    state = _state()
    if state.streams is None or not state.streams.acquire(blocking=False):
        metrics.SDK_STREAMS_REFUSED.inc()
        raise ServiceUnavailable(
            "This worker has no room for another stream; poll GET /v1/sdk/config with"
            " If-None-Match instead, and try the stream again later.",
            headers={"Retry-After": "5"},
        )
    runtime = current_app.extensions["abx"]
    events = _Events(
        state,
        runtime.settings.sdk_stream_seconds,
        request.headers.get("Last-Event-ID"),
        _key_check(runtime.keys, auth.current().key),
    )
    return Response(
        events,
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        direct_passthrough=True,
    )


def _key_check(directory: KeyDirectory | None, key: ApiKey | None) -> Callable[[], bool]:
    """Whether the key the stream was opened with is still active (always, without auth)."""
    if directory is None or key is None:
        return lambda: True
    key_id = key.key_id
    return lambda: directory.still_active(key_id)


def _exposed_at(value: float | None, now: datetime, index: int) -> datetime:
    if value is None:
        return now
    future = current_app.extensions["abx"].settings.max_future_seconds
    if not (now - OLDEST_EXPOSURE).timestamp() <= value <= now.timestamp() + future:
        raise InvalidRequest(
            "An exposure time is outside the accepted range; nothing was recorded.",
            [{"field": f"exposures[{index}].exposed_at",
              "message": f"must lie within the last 30 days and at most {future:g} s ahead"}],
        )  # fmt: skip
    return datetime.fromtimestamp(value, UTC)


@bp.post("/v1/sdk/exposures")
def exposures() -> dict[str, Any]:
    body = parse_json_body(LocalExposureBatch)
    runtime = current_app.extensions["abx"]
    limit = runtime.settings.max_batch_items
    if len(body.exposures) > limit:
        raise PayloadTooLarge(
            f"A batch holds at most {limit} exposures; this one has {len(body.exposures)}."
        )
    now = datetime.now(UTC)
    errors, current, holdouts, stale = [], [], [], 0
    for index, item in enumerate(body.exposures):
        holdout = runtime.registry.holdouts.get(item.experiment)
        if holdout is not None:  # the unit reached the holdout's check; variant: its group
            exposure = LocalExposure(item.experiment, item.seed, item.unit, item.variant,
                                     _exposed_at(item.exposed_at, now, index))  # fmt: skip
            if is_current_holdout(holdout, exposure):
                holdouts.append(exposure)
            else:
                stale += 1
            continue
        compiled = runtime.registry.get(item.experiment)
        if compiled is None:
            errors.append({"field": f"exposures[{index}].experiment",
                           "message": f"unknown experiment {item.experiment!r}"})  # fmt: skip
            continue
        if item.variant not in compiled.experiment.variant_keys:
            errors.append({"field": f"exposures[{index}].variant",
                           "message": f"{item.experiment} has no variant {item.variant!r}"})  # fmt: skip
            continue
        exposure = LocalExposure(
            item.experiment,
            item.seed,
            item.unit,
            item.variant,
            _exposed_at(item.exposed_at, now, index),
            recorded_attributes(compiled.experiment, item.attributes or {}, body.client or "sdk"),
        )
        if is_current(compiled, exposure):
            current.append(exposure)
        else:
            stale += 1
    if errors:
        raise InvalidRequest(
            f"{len(errors)} exposure(s) name an unknown experiment or variant; nothing was recorded.",
            errors,
        )
    with runtime.database.pool.connection(timeout=runtime.settings.lookup_timeout_seconds) as conn:
        new = record_batch(conn, body.batch_id, current, holdouts)
    recorded = len(current) + len(holdouts) if new else 0
    metrics.SDK_EXPOSURES.labels("recorded").inc(recorded)
    metrics.SDK_EXPOSURES.labels("duplicate" if not new else "stale").inc(
        len(body.exposures) if not new else stale
    )
    annotate(batch_id=body.batch_id, recorded=recorded, stale=stale, duplicate=not new)
    if stale:
        log.info("stale sdk exposures skipped", batch_id=body.batch_id, stale=stale)
    return {"batch_id": body.batch_id, "recorded": recorded, "stale": stale if new else 0,
            "duplicate": not new}  # fmt: skip
