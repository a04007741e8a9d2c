"""Request bodies of the HTTP API, validated strictly (the OpenAPI description mirrors them)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, PlainValidator

MAX_UNIT_LENGTH = 256


def _unit_text(value: Any) -> str:
    """Integers are accepted as unit ids and hashed as their decimal text (docs/hashing.md)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_UNIT_LENGTH:
        raise ValueError(
            f"must be a non-empty string of at most {MAX_UNIT_LENGTH} characters, or an integer"
        )
    return value


UnitId = Annotated[str, PlainValidator(_unit_text)]


class ApiModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class AssignRequest(ApiModel):
    experiment: Annotated[str, Field(min_length=1, max_length=64)]
    unit: UnitId
    attributes: dict[str, Any] = Field(default_factory=dict)


class AssignBatchRequest(ApiModel):
    items: list[AssignRequest] = Field(min_length=1)


def _outcome_value(value: Any) -> float | bool:
    if isinstance(value, bool | int | float):
        return value
    raise ValueError("must be a number (or true/false for a binary metric)")


OutcomeValue = Annotated[float | bool, PlainValidator(_outcome_value)]


class OutcomeEvent(ApiModel):
    """One outcome: a conversion, a revenue amount, a click, a label."""

    event_id: Annotated[str, Field(min_length=1, max_length=128)]
    experiment: Annotated[str, Field(min_length=1, max_length=64)]
    unit: UnitId
    metric: Annotated[str, Field(min_length=1, max_length=64)]
    value: OutcomeValue
    timestamp: Annotated[AwareDatetime, Field(strict=False)] | None = None
    properties: dict[str, Any] | None = None


class OutcomeBatch(ApiModel):
    events: list[Any] = Field(min_length=1)


class PredictRequest(ApiModel):
    experiment: Annotated[str, Field(min_length=1, max_length=64)]
    unit: UnitId
    attributes: dict[str, Any] = Field(default_factory=dict)
    inputs: dict[str, Any]
    """Model input name -> row-major nested list (one row or a batch), or, for an input whose
    ``features`` the experiment names, an object of named values or a list of them."""


class ActionRequest(ApiModel):
    """A human decision: approve, pause, resume, promote or roll back."""

    action: Literal["approve", "pause", "resume", "promote", "rollback"]
    variant: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    actor: Annotated[str, Field(min_length=1, max_length=128)]
    reason: Annotated[str, Field(min_length=1, max_length=2000)]
