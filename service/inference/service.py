"""``/v1/predict`` end to end: assign the unit, check the inputs, run (or fall back), log.

Holds the current model catalog; a hot reload swaps it in one assignment and
each request keeps the snapshot it started with.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from service.assignment.core import Assignment
from service.assignment.service import AssignmentService
from service.errors import InvalidRequest
from service.experiments.schema import RegistryVersion
from service.inference.cache import input_digest
from service.inference.catalog import Catalog
from service.inference.endpoint import EndpointModel
from service.inference.records import PredictionLog, PredictionRecord
from service.inference.runner import FailureCounts, ModelRunner, run_with_fallback
from service.inference.sessions import LoadedModel
from service.inference.shadow import ShadowJob, ShadowRunner
from service.inference.signature import convert_inputs
from service.inference.sketches import SketchBook
from service.observability import metrics


@dataclass(frozen=True)
class Prediction:
    assignment: Assignment
    model: LoadedModel | EndpointModel
    outputs: dict[str, Any]
    """Response name -> nested lists."""
    latency_ms: float
    failure: str | None
    cached: bool
    provider: str
    """The execution provider that computed the outputs (in the inference process or here)."""
    registry: RegistryVersion | None = None
    """The registry version of the model that answered (None: a file or an endpoint)."""


def start_series(catalog: Catalog) -> None:
    """Create every variant's prediction and fallback series at zero.

    ``rate()`` counts nothing for a series until its second sample, so a fallback
    series born with the first failures would hide them from the fallback alert.
    """
    for models in catalog.experiments.values():
        for variant, serving in models.variants.items():
            fallback = models.variants.get(models.fallback)
            for served in (serving, fallback):
                if served is not None and served.model is not None:
                    metrics.PREDICTIONS.labels(
                        models.key, variant, served.model.name, served.model.provider
                    )
            for cause in metrics.FALLBACK_CAUSES:
                metrics.FALLBACKS.labels(models.key, variant, cause)


class PredictionService:
    def __init__(
        self,
        assignments: AssignmentService,
        catalog: Catalog,
        runner: ModelRunner,
        predictions: PredictionLog,
        shadows: ShadowRunner,
        max_rows: int,
        sketches: SketchBook | None = None,
    ) -> None:
        self._catalog = catalog
        start_series(catalog)
        self.failures = FailureCounts()
        self._assignments = assignments
        self._runner = runner
        self._predictions = predictions
        self._shadows = shadows
        self._max_rows = max_rows
        self._sketches = sketches

    @property
    def catalog(self) -> Catalog:
        return self._catalog

    @catalog.setter
    def catalog(self, catalog: Catalog) -> None:
        """A hot reload's new models (requests keep the snapshot they started with)."""
        start_series(catalog)
        self._catalog = catalog

    def predict(
        self,
        experiment_key: str,
        unit_id: str,
        attributes: Mapping[str, Any],
        inputs: Mapping[str, Any],
    ) -> Prediction:
        models = self.catalog.get(experiment_key)  # this request's snapshot
        assignment = self._assignments.assign(experiment_key, unit_id, attributes)
        if models is None:
            raise InvalidRequest(
                f"Experiment {experiment_key!r} serves no models: ask /v1/assign instead."
            )
        variant = models.variants.get(assignment.variant)
        fallback = models.variants.get(models.fallback)
        if variant is None:  # removed by a reload between the two snapshots
            assert fallback is not None
            self.failures.add(experiment_key, assignment.variant, "variant-unavailable")
            variant = fallback
        checked_by = variant if variant.model is not None or fallback is None else fallback
        feeds, rows = convert_inputs(inputs, checked_by.plans, self._max_rows)
        cache, digest, outputs = models.cache, b"", None
        started = time.perf_counter()
        if cache is not None and variant.model is not None:
            digest = input_digest(feeds)
            outputs = cache.get(variant.model.sha256, digest)
            metrics.CACHE_LOOKUPS.labels(experiment_key, "miss" if outputs is None else "hit").inc()
        cached = outputs is not None
        provider = ""
        if outputs is not None:
            served, failure = variant, None
        else:
            result = run_with_fallback(
                self._runner,
                models,
                variant,
                feeds,
                rows,
                lambda other: (
                    feeds
                    if other is checked_by
                    else convert_inputs(inputs, other.plans, self._max_rows)[0]
                ),
                self.failures,
            )
            served, failure, outputs = result.served_by, result.failure, result.outputs
            provider = result.provider
            if cache is not None and failure is None and variant.model is not None:
                cache.put(variant.model.sha256, digest, outputs)
        seconds = time.perf_counter() - started
        latency_ms = seconds * 1000
        model = served.model
        assert model is not None
        provider = provider or model.provider
        if variant is not models.variants.get(assignment.variant):
            failure = "variant-unavailable"  # answered by the fallback without trying
        assigned = assignment.variant
        metrics.PREDICTIONS.labels(experiment_key, assigned, model.name, provider).inc()
        metrics.MODEL_RUN_DURATION.labels(experiment_key, assigned).observe(seconds)
        if failure is not None:
            metrics.FALLBACKS.labels(experiment_key, assigned, failure).inc()
        renamed = served.renamed(outputs)
        self._predictions.record(
            PredictionRecord(
                experiment_key,
                unit_id,
                assignment.variant,
                assignment.reason.value,
                assignment.exposed,
                served.variant,
                model.sha256,
                provider,
                rows,
                latency_ms,
                failure is not None,
                failure,
                cached,
                False,
                None,
                None,
                datetime.now(UTC),
            )
        )
        if self._sketches is not None and failure is None and not cached:
            # The variant's own model answered: its inputs and outputs join its sketches.
            self._sketches.offer(experiment_key, assigned, model.sha256, feeds, outputs)
        for shadow in models.shadows:
            if shadow.variant == assigned:  # a graduated shadow is served, not compared with itself
                continue
            self._shadows.offer(ShadowJob(experiment_key, unit_id, shadow, inputs, renamed))
        return Prediction(
            assignment,
            model,
            {name: value.tolist() for name, value in renamed.items()},
            latency_ms,
            failure,
            cached,
            provider,
            served.ref.resolved,
        )
