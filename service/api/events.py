"""POST /v1/events (JSON or NDJSON) and the per-variant metrics read back from the rollup."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Blueprint, Response, current_app, request

from service.api.body import read_body
from service.api.problems import problem_response
from service.errors import (
    InvalidRequest,
    MalformedJson,
    PayloadTooLarge,
    ServiceUnavailable,
    UnknownExperiment,
    UnsupportedMediaType,
)
from service.events.ingest import IngestRefused, IngestUnavailable
from service.events.sums import metric_stats, outcome_status_counts
from service.events.validation import count_batch_duplicates, validate_events

bp = Blueprint("events", __name__)
NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _read_events(limit_bytes: int) -> list[Any]:
    """Parse the body as {"events": [...]} JSON or as one event per NDJSON line."""
    mimetype = request.mimetype
    raw = read_body(limit_bytes)
    try:
        text = raw.decode("utf-8")
        if mimetype in NDJSON_TYPES:
            return [
                json.loads(line, parse_constant=_reject_constant)
                for line in text.splitlines()
                if line.strip()
            ]
        if request.is_json:
            body = json.loads(text, parse_constant=_reject_constant)
        else:
            raise UnsupportedMediaType(
                'Send application/json ({"events": [...]}) or application/x-ndjson '
                f"(one event per line); got {mimetype or 'no content type'}."
            )
    except (ValueError, UnicodeDecodeError) as error:
        raise MalformedJson(f"The body is not valid JSON: {error}") from error
    except RecursionError as error:  # json.loads keeps C recursion under Python's limit
        raise MalformedJson("The body is not valid JSON: it is nested too deeply.") from error
    if (
        not isinstance(body, dict)
        or set(body) != {"events"}
        or not isinstance(body["events"], list)
    ):
        raise InvalidRequest(
            'The body must be {"events": [...]} with nothing else.',
            [{"field": "events", "message": "required: a list of events"}],
        )
    events: list[Any] = body["events"]
    return events


@bp.post("/v1/events")
def post_events() -> Response:
    runtime = current_app.extensions["abx"]
    settings = runtime.settings
    events = _read_events(settings.max_events_body_bytes)
    if not events:
        raise InvalidRequest(
            "The request holds no events.", [{"field": "events", "message": "empty"}]
        )
    if len(events) > settings.max_events_per_request:
        raise PayloadTooLarge(
            f"A request holds at most {settings.max_events_per_request} events; this one has {len(events)}."
        )
    registry = runtime.registry
    rows, errors = validate_events(
        events,
        # A holdout's metrics are posted under its key, as an experiment's are under theirs.
        lambda key: registry.experiments.get(key) or registry.holdout_experiments.get(key),
        datetime.now(UTC),
        timedelta(seconds=settings.max_future_seconds),
    )
    if errors:
        raise InvalidRequest(
            f"{len(errors)} problem(s) in {len({e.index for e in errors})} event(s); nothing was stored.",
            [e.as_json() for e in errors],
        )
    try:
        result = runtime.events.submit([row.as_tuple() for row in rows])
    except IngestRefused as error:
        raise InvalidRequest(
            f"The database refused an event of this request; nothing was stored: {error}",
            [{"field": "events", "message": str(error)}],
        ) from error
    except IngestUnavailable as error:
        return problem_response(
            ServiceUnavailable(f"The events were not stored: {error}. Retry later."),
            headers={"Retry-After": "5"},
        )
    duplicates = result.duplicates
    if result.spooled:
        duplicates = count_batch_duplicates(rows)
    body = {
        "accepted": len(rows) - duplicates if result.spooled else result.accepted,
        "duplicates": duplicates,
        "durable": "spooled" if result.spooled else "committed",
    }
    return Response(json.dumps(body), status=202, mimetype="application/json")


@bp.get("/v1/experiments/<key>/metrics")
def experiment_metrics(key: str) -> dict[str, Any]:
    runtime = current_app.extensions["abx"]
    experiment = runtime.registry.experiments.get(key)
    if experiment is None:
        raise UnknownExperiment(f"There is no experiment {key!r}.")
    with runtime.database.pool.connection(timeout=2.0) as conn:
        stats = metric_stats(conn, key, experiment.seed)
        counts = outcome_status_counts(conn, key)
    return {
        "experiment": key,
        "seed": experiment.seed,
        "metrics": [
            {
                "variant": s.variant_key,
                "metric": s.metric,
                "units": s.stats.n,
                "sum": s.stats.total,
                "sum_of_squares": s.stats.total_squares,
                "mean": s.stats.mean,
                "covariate_sum": s.stats.covariate_total,
                "covariate_sum_of_squares": s.stats.covariate_total_squares,
                "cross_sum": s.stats.covariate_cross_total,
            }
            for s in stats
        ],
        "outcome_counts": counts,
    }
