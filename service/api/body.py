"""Read a JSON request body into a pydantic model, or raise the right problem."""

from __future__ import annotations

import json
from typing import TypeVar

from flask import current_app, request
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import RequestEntityTooLarge

from service.errors import InvalidRequest, MalformedJson, PayloadTooLarge, UnsupportedMediaType
from service.storage.values import json_problem

Model = TypeVar("Model", bound=BaseModel)


def _field(loc: tuple[int | str, ...]) -> str:
    text = ""
    for element in loc:
        text += f"[{element}]" if isinstance(element, int) else (f".{element}" if text else element)
    return text or "(body)"


def invalid_request(error: ValidationError, what: str = "request body") -> InvalidRequest:
    errors = [
        {"field": _field(tuple(e["loc"])), "message": e["msg"], "type": e["type"]}
        for e in error.errors(include_url=False)
    ]
    summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return InvalidRequest(f"The {what} is not valid: {summary}{more}", errors)


def read_body(limit: int) -> bytes:
    """The whole body, or ``PayloadTooLarge`` when it holds more than ``limit`` bytes.

    Exact with or without ``Content-Length``, chunked or not: werkzeug stops reading a
    streamed body *at* its maximum without a word, so a body cut there would look whole.
    Reading against a maximum one byte higher tells "exactly the limit" from "over it".
    """
    if (request.content_length or 0) > limit:
        raise PayloadTooLarge(f"The body is larger than the limit of {limit} bytes.")
    request.max_content_length = limit + 1
    try:
        raw = request.get_data(cache=False)
    except RequestEntityTooLarge as error:
        raise PayloadTooLarge(f"The body is larger than the limit of {limit} bytes.") from error
    if len(raw) > limit:
        raise PayloadTooLarge(f"The body is larger than the limit of {limit} bytes.")
    return raw


def parse_json_body(model: type[Model]) -> Model:
    """Parse and validate the body; nothing is done with a request that fails here."""
    if not request.is_json:
        raise UnsupportedMediaType(
            f"Send the body as application/json (got {request.mimetype or 'no content type'})."
        )
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    raw = read_body(limit) if limit is not None else request.get_data(cache=False)
    try:
        # One pass in pydantic's parser: a third of the time of json.loads then validation.
        return model.model_validate_json(raw)
    except ValidationError as error:
        malformed = [e for e in error.errors(include_url=False) if e["type"] == "json_invalid"]
        if malformed:
            detail = str(malformed[0].get("ctx", {}).get("error", malformed[0]["msg"]))
            if "surrogate" in detail or "hex escape" in detail:
                _refuse_lone_surrogate(raw)
            raise MalformedJson(f"The body is not valid JSON: {detail}") from error
        raise invalid_request(error) from error


def _refuse_lone_surrogate(raw: bytes) -> None:
    """Name the field holding a lone surrogate (422), which pydantic's parser calls bad JSON.

    JSON may escape one (``"\\ud800"``), so the body is valid JSON, but no text PostgreSQL
    stores can hold it: the client is told which field, as ``/v1/events`` tells it.
    """
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return  # malformed indeed
    found = json_problem(value, "")
    if found is not None:
        field, reason = found
        field = field.lstrip(".") or "(body)"
        raise InvalidRequest(
            f"The request body is not valid: {field}: {reason}",
            [{"field": field, "message": reason, "type": "value_error"}],
        )
