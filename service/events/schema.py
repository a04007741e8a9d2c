"""One outcome event as a client sends it (the OpenAPI description mirrors it)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, PlainValidator

from service.assignment.units import UnitId


def _outcome_value(value: Any) -> float | bool:
    if isinstance(value, bool | int | float):
        return value
    raise ValueError("must be a number (or true/false for a binary metric)")


OutcomeValue = Annotated[float | bool, PlainValidator(_outcome_value)]


class OutcomeEvent(BaseModel):
    """One outcome: a conversion, a revenue amount, a click, a label."""

    model_config = ConfigDict(extra="forbid", strict=True)

    event_id: Annotated[str, Field(min_length=1, max_length=128)]
    experiment: Annotated[str, Field(min_length=1, max_length=64)]
    unit: UnitId
    metric: Annotated[str, Field(min_length=1, max_length=64)]
    value: OutcomeValue
    timestamp: Annotated[AwareDatetime, Field(strict=False)] | None = None
    properties: dict[str, Any] | None = None
