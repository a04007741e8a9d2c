"""Shadow variants: a sample of requests also runs on a challenger, off the response path.

The shadow never answers anyone. One background thread runs it on the same
request inputs and logs its latency and how far it agrees with the model that
did answer, so a challenger can be judged before it takes traffic. The queue is
bounded: under overload shadow runs are dropped (and counted), never the request.
"""

from __future__ import annotations

import logging
import queue
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from service.background import BackgroundThread
from service.inference.catalog import ServingModel
from service.inference.records import PredictionLog, PredictionRecord
from service.inference.signature import convert_inputs
from service.observability import metrics

log = logging.getLogger(__name__)


def agreement(
    served: Mapping[str, np.ndarray], shadow: Mapping[str, np.ndarray]
) -> tuple[float | None, float | None]:
    """Share of rows whose decision matches, and the largest absolute output difference.

    A decision is ``p > 0.5`` for a one-column output, the arg-max of the last axis otherwise.
    """
    matches: list[np.ndarray] = []
    largest: float | None = None
    for name, value in served.items():
        other = shadow.get(name)
        if other is None or other.shape != value.shape or value.ndim == 0:
            continue
        largest = max(largest or 0.0, float(np.max(np.abs(value.astype(np.float64) - other))))
        if value.shape[-1] == 1:
            matches.append((value[..., 0] > 0.5) == (other[..., 0] > 0.5))
        else:
            matches.append(value.argmax(-1) == other.argmax(-1))
    if not matches:
        return None, largest
    return float(np.mean(np.concatenate([m.ravel() for m in matches]))), largest


def mean_abs_difference(
    served: Mapping[str, np.ndarray], shadow: Mapping[str, np.ndarray]
) -> float | None:
    """The mean absolute difference over every value of the outputs both models give alike."""
    total, count = 0.0, 0
    for name, value in served.items():
        other = shadow.get(name)
        if other is None or other.shape != value.shape or value.size == 0:
            continue
        total += float(np.sum(np.abs(value.astype(np.float64) - other)))
        count += value.size
    return total / count if count else None


@dataclass(frozen=True)
class ShadowJob:
    experiment_key: str
    unit_id: str
    shadow: ServingModel
    inputs: Mapping[str, Any]
    served_outputs: Mapping[str, np.ndarray]
    """Served outputs under their response names."""


class ShadowRunner(BackgroundThread):
    def __init__(self, predictions: PredictionLog, max_queued: int, max_rows: int) -> None:
        super().__init__("abx-shadow")
        self._predictions = predictions
        self._max_rows = max_rows
        self._queue: queue.Queue[ShadowJob | None] = queue.Queue(max_queued)
        self._random = random.Random()
        self.dropped = 0
        self.completed = 0
        self.start()

    def offer(self, job: ShadowJob) -> None:
        """Queue the job with the shadow's sample probability; never blocks."""
        if self._random.random() >= job.shadow.shadow_rate:
            return
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            self.dropped += 1
            metrics.SHADOW_RUNS.labels(job.experiment_key, job.shadow.variant, "dropped").inc()

    def _wake(self) -> None:
        self._queue.put(None)

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            result = "completed"
            try:
                self._run_job(job)
            except Exception as error:  # a shadow's failure is logged, never raised
                result = "failed"
                log.warning(
                    "shadow %s/%s failed: %s", job.experiment_key, job.shadow.variant, error
                )
            metrics.SHADOW_RUNS.labels(job.experiment_key, job.shadow.variant, result).inc()
            self.completed += 1

    def _run_job(self, job: ShadowJob) -> None:
        model = job.shadow.model
        if model is None:
            return
        feeds, rows = convert_inputs(job.inputs, job.shadow.plans, self._max_rows)
        started = time.perf_counter()
        outputs = model.run(feeds)
        latency_ms = (time.perf_counter() - started) * 1000
        renamed = job.shadow.renamed(outputs)
        agree, largest = agreement(job.served_outputs, renamed)
        if agree is not None:
            metrics.SHADOW_AGREEMENT.labels(job.experiment_key, job.shadow.variant).observe(agree)
        self._predictions.record(
            PredictionRecord(
                job.experiment_key,
                job.unit_id,
                job.shadow.variant,
                "shadow",
                False,
                job.shadow.variant,
                model.sha256,
                model.provider,
                rows,
                latency_ms,
                False,
                None,
                False,
                True,
                agree,
                largest,
                datetime.now(UTC),
                mean_abs_difference(job.served_outputs, renamed),
            )
        )
