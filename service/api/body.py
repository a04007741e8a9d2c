"""Read a JSON request body into a pydantic model, or raise the right problem."""

from __future__ import annotations

from typing import TypeVar

from flask import request
from pydantic import BaseModel, ValidationError

from service.errors import InvalidRequest, MalformedJson, PayloadTooLarge, UnsupportedMediaType

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


def parse_json_body(model: type[Model]) -> Model:
    """Parse and validate the body; nothing is done with a request that fails here."""
    if not request.is_json:
        raise UnsupportedMediaType(
            f"Send the body as application/json (got {request.mimetype or 'no content type'})."
        )
    limit = request.max_content_length
    if limit is not None and (request.content_length or 0) > limit:
        raise PayloadTooLarge(f"The body is larger than the limit of {limit} bytes.")
    raw = request.get_data(cache=False)
    try:
        # One pass in pydantic's parser: a third of the time of json.loads then validation.
        return model.model_validate_json(raw)
    except ValidationError as error:
        malformed = [e for e in error.errors(include_url=False) if e["type"] == "json_invalid"]
        if malformed:
            detail = malformed[0].get("ctx", {}).get("error", malformed[0]["msg"])
            raise MalformedJson(f"The body is not valid JSON: {detail}") from error
        raise invalid_request(error) from error
