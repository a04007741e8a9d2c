"""The edge around the assignment core: look up experiments, ask the sticky store, log."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from service.assignment.batch import REASONS, BatchAssignment, assign_batch
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

    def assign_batch(
        self,
        experiment_key: str,
        unit_ids: Sequence[str],
        attributes: Callable[[], Sequence[Mapping[str, Any]]] | None = None,
    ) -> BatchAssignment:
        """``assign`` for many units of one experiment: one stored-assignment query for the
        units whose history matters, one grace wait for all of them, counters added once.

        ``attributes`` gives every unit's attributes (in ``unit_ids`` order); it is called
        only when the experiment has targeting or records segments.
        """
        served = self._registry.served(experiment_key)
        if served is None:
            raise UnknownExperiment(f"There is no experiment {experiment_key!r}.")
        compiled = served.at(time.time())
        experiment = compiled.experiment
        seed = experiment.seed
        switching = compiled.allocation.pending_weights is not None

        def stored_variants(asked: Sequence[str]) -> Mapping[str, str]:
            found = self._sticky.stored_variants(experiment_key, seed, asked)
            missing = [unit_id for unit_id in asked if unit_id not in found]
            if missing and switching:
                remaining = served.switch_at_epoch + self._lookup_grace - time.time()
                if remaining > 0:
                    time.sleep(remaining)
                    found.update(self._sticky.stored_variants(experiment_key, seed, missing))
            return found

        needed = experiment.targeting is not None or bool(experiment.segment_attributes)
        rows = attributes() if attributes is not None and needed else None
        batch = assign_batch(compiled, unit_ids, rows, stored_variants)

        def segment_attributes(position: int) -> Mapping[str, str] | None:
            return recorded_attributes(experiment, rows[position] if rows is not None else {})

        self._sticky.record_batch(batch, seed, unit_ids, segment_attributes)
        if not len(batch):
            return batch
        # One counter step per (variant, reason) pair: a bincount over pair codes.
        pairs = np.bincount(
            batch.variant_codes.astype(np.int64) * len(REASONS) + batch.reason_codes
        )
        for pair in np.flatnonzero(pairs).tolist():
            variant, reason = divmod(pair, len(REASONS))
            metrics.ASSIGNMENTS.labels(
                experiment_key, batch.variant_keys[variant], REASONS[reason].value
            ).inc(int(pairs[pair]))
        return batch

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
