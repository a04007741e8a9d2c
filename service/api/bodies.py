"""Request bodies of the HTTP API, validated strictly (the OpenAPI description mirrors them)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from service.assignment.units import UnitId
from service.storage.values import text_problem


def _storable(text: str) -> str:
    problem = text_problem(text)
    if problem:
        raise ValueError(problem)
    return text


Storable = AfterValidator(_storable)
"""Text PostgreSQL can store (no NUL, no lone surrogate): refused with the field's name, 422."""


class ApiModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class AssignRequest(ApiModel):
    experiment: Annotated[str, Field(min_length=1, max_length=64)]
    unit: UnitId
    attributes: dict[str, Any] = Field(default_factory=dict)


class AssignBatchRequest(ApiModel):
    items: list[AssignRequest] = Field(min_length=1)


class LocalExposureItem(ApiModel):
    """One answer an SDK gave locally (reason ``hashed``): recorded as /v1/assign records it."""

    experiment: Annotated[str, Field(min_length=1, max_length=64), Storable]
    unit: UnitId
    seed: Annotated[str, Field(min_length=1, max_length=200), Storable]
    variant: Annotated[str, Field(min_length=1, max_length=64), Storable]
    exposed_at: float | None = None
    """When the SDK served it, in seconds since the epoch; default: when the batch arrives."""
    attributes: dict[str, Any] | None = None
    """The attributes the SDK assigned with: those the experiment analyses by (``segments``)
    are recorded with the unit's first exposure."""


class LocalExposureBatch(ApiModel):
    batch_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{8,64}$")]
    """Chosen by the SDK, the same on every resend: a batch seen before is not written again."""
    exposures: list[LocalExposureItem] = Field(min_length=1)
    client: Annotated[str, Field(pattern=r"^[A-Za-z0-9._/+-]{1,64}$")] | None = None
    """The SDK's name and version (``abx-client-python/0.1.0``): recorded with the exposures
    of segmented experiments, so the SRM drill-down can name an SDK version."""


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
    actor: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    """Accepted so that older clients keep working, and ignored: the audit log records the
    key's name (``key:<name>``), never a name the body gives."""
    reason: Annotated[str, Field(min_length=1, max_length=2000)]


class KeyRequest(ApiModel):
    """A new API key (``POST /v1/keys``)."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")]
    scopes: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(min_length=1)
    owner: Annotated[str, Field(max_length=200)] = ""
    expires_in: Annotated[str, Field(min_length=2, max_length=16)] | None = None
    rate_limit: Annotated[str, Field(min_length=3, max_length=100)] | None = None
