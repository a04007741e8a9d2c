"""The edge around the assignment core: look up experiments, ask the sticky store, log."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from service.assignment.core import Assignment, assign
from service.assignment.registry import Registry, ServedExperiment
from service.assignment.sticky import StickyStore
from service.errors import InvalidRequest, UnknownExperiment
from service.experiments.segments import recorded_attributes
from service.observability import metrics


class AssignItem(Protocol):
    """One item of a batch (the API's request body has these fields)."""

    experiment: str
    unit: str
    attributes: dict[str, Any]


class AssignmentService:
    def __init__(self, registry: Registry, sticky: StickyStore, lookup_grace: float) -> None:
        self._registry = registry
        self._sticky = sticky
        self._lookup_grace = lookup_grace

    def assign(
        self, experiment_key: str, unit_id: str, attributes: Mapping[str, Any]
    ) -> Assignment:
        served = self._registry.served(experiment_key)
        if served is None:
            raise UnknownExperiment(f"There is no experiment {experiment_key!r}.")
        compiled = served.at(time.time())
        seed = compiled.experiment.seed
        switching = compiled.allocation.pending_weights is not None

        def stored_variant() -> str | None:
            stored = self._sticky.stored_variant(experiment_key, seed, unit_id)
            if stored is None and switching:
                stored = self._after_grace(served, experiment_key, seed, unit_id)
            return stored

        assignment = assign(compiled, unit_id, attributes, stored_variant)
        self._sticky.record(
            assignment, seed, unit_id, recorded_attributes(compiled.experiment, attributes)
        )
        metrics.ASSIGNMENTS.labels(
            experiment_key, assignment.variant, assignment.reason.value
        ).inc()
        return assignment

    def _after_grace(
        self, served: ServedExperiment, experiment_key: str, seed: str, unit_id: str
    ) -> str | None:
        """Just after a switch, a first assignment may still sit in another process's buffer:
        wait out one flush interval past the switch time, then read again."""
        remaining = served.switch_at_epoch + self._lookup_grace - time.time()
        if remaining <= 0:
            return None
        time.sleep(remaining)
        return self._sticky.stored_variant(experiment_key, seed, unit_id)

    def assign_many(self, items: Sequence[AssignItem]) -> list[Assignment]:
        """All or nothing: an unknown experiment anywhere rejects the batch before any logging."""
        unknown = [
            {
                "field": f"items[{index}].experiment",
                "message": f"unknown experiment {item.experiment!r}",
            }
            for index, item in enumerate(items)
            if self._registry.get(item.experiment) is None
        ]
        if unknown:
            raise InvalidRequest(
                f"{len(unknown)} item(s) name an unknown experiment; nothing was assigned.", unknown
            )
        return [self.assign(item.experiment, item.unit, item.attributes) for item in items]
