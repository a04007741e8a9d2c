"""Validate posted outcome events against the experiments that declare their metrics. Pure.

Every event is checked and every problem reported (by index and field); a
request with any problem is refused whole, so nothing of it is written.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from service.events.schema import OutcomeEvent
from service.experiments.schema import Experiment, Metric
from service.storage.values import MAX_JSON_DEPTH, json_problem, text_problem

MAX_PROPERTIES_BYTES = 4096


@dataclass(frozen=True)
class OutcomeRow:
    """One validated event, in the column order of ``outcomes`` staging."""

    experiment_key: str
    seed: str
    event_id: str
    unit_id: str
    metric: str
    aggregation: str
    value: float
    occurred_at: datetime
    received_at: datetime
    properties: str | None

    def as_tuple(self) -> tuple[Any, ...]:
        return (
            self.experiment_key, self.seed, self.event_id, self.unit_id, self.metric,
            self.aggregation, self.value, self.occurred_at, self.received_at, self.properties,
        )  # fmt: skip


OUTCOME_COLUMNS = (
    "experiment_key", "seed", "event_id", "unit_id", "metric",
    "aggregation", "value", "occurred_at", "received_at", "properties",
)  # fmt: skip


@dataclass(frozen=True)
class EventError:
    index: int
    field: str
    message: str

    def as_json(self) -> dict[str, Any]:
        return {"index": self.index, "field": self.field, "message": self.message}


def _value_problem(metric_type: str, value: float | bool) -> str | None:
    if isinstance(value, bool):
        return (
            None
            if metric_type == "binary"
            else f"a {metric_type} metric takes a number, not a boolean"
        )
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an integer of hundreds of digits: no float holds it
        finite = False
    if not finite:
        return "must be a finite number (within ±1.8e308)"
    if metric_type == "binary" and value not in (0, 1):
        return "a binary metric takes 0, 1, true or false"
    if metric_type == "count" and (value < 0 or value != int(value)):
        return "a count metric takes a non-negative integer"
    return None


_UNDUMPABLE = "\\u0000"


def _storable_problem(event: OutcomeEvent, properties: str | None) -> tuple[str, str] | None:
    """The first field PostgreSQL could not store (NUL, lone surrogate, infinity, depth).

    Only ``event_id`` and ``properties`` need it: the unit id is checked where it is parsed
    (``UnitId``), and the experiment and metric must equal declared keys.
    """
    problem = text_problem(event.event_id)
    if problem:
        return "event_id", problem
    if properties is None:
        return None
    # Fast path: the JSON text (ASCII, escaped by json.dumps; non-finite numbers made it
    # raise) shows none of the signs; only when one shows (maybe falsely: an emoji is a
    # surrogate pair) is the value walked. Nesting past the limit needs that many brackets.
    if (
        "\\u0000" not in properties
        and "\\ud" not in properties
        and (
            len(properties) <= 2 * MAX_JSON_DEPTH
            or properties.count("{") + properties.count("[") <= MAX_JSON_DEPTH
        )
    ):
        return None
    found = json_problem(event.properties, "properties")
    if found is None and properties == _UNDUMPABLE:
        return "properties", "cannot be stored as JSON"
    return found


def validate_events(
    raw_events: Sequence[Any],
    experiment_for: Callable[[str], Experiment | None],
    now: datetime,
    max_future: timedelta,
) -> tuple[list[OutcomeRow], list[EventError]]:
    """Return the rows to write, or the list of problems (then nothing may be written)."""
    rows: list[OutcomeRow] = []
    errors: list[EventError] = []
    metrics_of: dict[str, dict[str, Metric]] = {}
    for index, raw in enumerate(raw_events):
        prefix = f"events[{index}]"
        try:
            event = OutcomeEvent.model_validate(raw)
        except ValidationError as error:
            for detail in error.errors(include_url=False):
                loc = ".".join(str(part) for part in detail["loc"])
                field = f"{prefix}.{loc}" if loc else prefix
                errors.append(EventError(index, field, detail["msg"]))
            continue
        experiment = experiment_for(event.experiment)
        if experiment is None:
            errors.append(
                EventError(
                    index, f"{prefix}.experiment", f"unknown experiment {event.experiment!r}"
                )
            )
            continue
        declared = metrics_of.get(experiment.key)
        if declared is None:
            declared = metrics_of[experiment.key] = {
                m.name: m for m in experiment.metrics.all_metrics()
            }
        metric = declared.get(event.metric)
        if metric is None:
            known = ", ".join(m.name for m in experiment.metrics.all_metrics())
            errors.append(
                EventError(
                    index,
                    f"{prefix}.metric",
                    f"experiment {experiment.key!r} has no metric {event.metric!r} (it has: {known})",
                )
            )
            continue
        problem = _value_problem(metric.type, event.value)
        if metric.type == "ratio":
            problem = (f"{metric.name!r} is a ratio metric, computed from per-unit totals of "
                       f"{metric.numerator!r} and {metric.denominator!r}: send those instead")  # fmt: skip
            errors.append(EventError(index, f"{prefix}.metric", problem))
            continue
        if problem is not None:
            errors.append(EventError(index, f"{prefix}.value", problem))
            continue
        occurred_at = event.timestamp or now
        if occurred_at > now + max_future:
            errors.append(
                EventError(index, f"{prefix}.timestamp", f"is more than {max_future} in the future")
            )
            continue
        properties = None
        if event.properties is not None:
            try:
                properties = json.dumps(event.properties, separators=(",", ":"), allow_nan=False)
            except (RecursionError, ValueError):  # too deep, or an infinity / NaN
                properties = _UNDUMPABLE  # never stored: the walk below names the field
        storable = _storable_problem(event, properties)
        if storable is not None:
            errors.append(EventError(index, f"{prefix}.{storable[0]}", storable[1]))
            continue
        if properties is not None and len(properties) > MAX_PROPERTIES_BYTES:
            errors.append(
                EventError(
                    index,
                    f"{prefix}.properties",
                    f"is larger than {MAX_PROPERTIES_BYTES} bytes",
                )
            )
            continue
        rows.append(
            OutcomeRow(
                experiment.key,
                experiment.seed,
                event.event_id,
                event.unit,
                metric.name,
                "max" if metric.type == "binary" else "sum",
                float(event.value),
                occurred_at.astimezone(UTC),
                now,
                properties,
            )
        )
    return rows, errors


def count_batch_duplicates(rows: Sequence[OutcomeRow]) -> int:
    """Events repeated inside one request (same experiment and event id)."""
    return len(rows) - len({(row.experiment_key, row.event_id) for row in rows})


def experiments_lookup(experiments: Mapping[str, Experiment]) -> Callable[[str], Experiment | None]:
    return experiments.get
