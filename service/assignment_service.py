"""The edge around the assignment core: look up experiments, ask the sticky store, log."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from service.api_models import AssignRequest
from service.assignment import Assignment, assign
from service.errors import InvalidRequest, UnknownExperiment
from service.registry import Registry
from service.sticky_store import StickyStore


class AssignmentService:
    def __init__(self, registry: Registry, sticky: StickyStore) -> None:
        self._registry = registry
        self._sticky = sticky

    def assign(
        self, experiment_key: str, unit_id: str, attributes: Mapping[str, Any]
    ) -> Assignment:
        compiled = self._registry.get(experiment_key)
        if compiled is None:
            raise UnknownExperiment(f"There is no experiment {experiment_key!r}.")
        seed = compiled.experiment.seed
        assignment = assign(
            compiled,
            unit_id,
            attributes,
            lambda: self._sticky.stored_variant(experiment_key, seed, unit_id),
        )
        self._sticky.record(assignment, seed, unit_id)
        return assignment

    def assign_many(self, items: Sequence[AssignRequest]) -> list[Assignment]:
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
