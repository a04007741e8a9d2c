"""POST /v1/assign and its batch form."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app

from service.api.bodies import AssignBatchRequest, AssignRequest
from service.api.body import parse_json_body
from service.assignment.core import Assignment
from service.errors import PayloadTooLarge
from service.observability.logging import annotate

bp = Blueprint("assignments", __name__)


def assignment_json(assignment: Assignment) -> dict[str, Any]:
    body: dict[str, Any] = {
        "experiment": assignment.experiment,
        "variant": assignment.variant,
        "reason": assignment.reason.value,
        "in_experiment": assignment.exposed,
    }
    if assignment.holdout is not None:  # only where a holdout's check was reached
        body["holdout"] = assignment.holdout.holdout
    return body


@bp.post("/v1/assign")
def assign_one() -> dict[str, Any]:
    body = parse_json_body(AssignRequest)
    service = current_app.extensions["abx"].assignments
    assignment = service.assign(body.experiment, body.unit, body.attributes)
    annotate(experiment=body.experiment, variant=assignment.variant, unit=body.unit)
    return assignment_json(assignment)


@bp.post("/v1/assign/batch")
def assign_batch() -> dict[str, Any]:
    body = parse_json_body(AssignBatchRequest)
    runtime = current_app.extensions["abx"]
    limit = runtime.settings.max_batch_items
    if len(body.items) > limit:
        raise PayloadTooLarge(
            f"A batch holds at most {limit} items; this one has {len(body.items)}."
        )
    return {
        "assignments": [assignment_json(a) for a in runtime.assignments.assign_many(body.items)]
    }
