"""Run a variant's model within its latency budget, and fall back when it misbehaves.

A model that failed to load, raises, answers NaN/inf or overruns the
experiment's latency budget is answered by the fallback variant's model
(the control unless configured), and the failure is counted per variant:
a guardrail signal. A run over budget is stopped through onnxruntime's
``RunOptions.terminate``, set by one watchdog thread, so it frees its core.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import onnxruntime as ort

from service.errors import ModelUnavailable
from service.inference.catalog import ExperimentModels, ServingModel
from service.inference.endpoint import EndpointModel
from service.inference.remote import ProcessModel, RemoteFailure
from service.inference.sessions import LoadedModel
from service.inference.signature import all_finite
from service.inference.watchdog import Watchdog
from service.inference.wire import TransportError

Feeds = Mapping[str, np.ndarray]
Outputs = dict[str, np.ndarray]


class ModelFailure(Exception):
    """The variant's model did not give a usable answer; ``reason`` is what is recorded."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class ModelRunner(Protocol):
    def run(
        self,
        served: ServingModel,
        feeds: Feeds,
        rows: int,
        budget: float | None,
        last_resort: bool = False,
    ) -> tuple[Outputs, str]:
        """Outputs of ``served``'s model and the execution provider that computed them;
        raise on error or when ``budget`` seconds pass. ``last_resort``: the fallback's run,
        which must answer if any session can."""


class SessionRunner:
    """The real runner: the inference process when the model is placed there, else the
    model's micro-batcher when it has one, else an inline run.

    A model placed on the inference process that is down, slow or failing raises for the
    assigned variant (``run_with_fallback`` then answers with the fallback's model). For the
    fallback's own run (no budget) the worker's CPU session of the same file answers
    instead: a dead inference process never fails a request.
    """

    def __init__(self, max_batch_rows: int) -> None:
        self._watchdog = Watchdog()
        self._max_batch_rows = max_batch_rows

    def run(
        self,
        served: ServingModel,
        feeds: Feeds,
        rows: int,
        budget: float | None,
        last_resort: bool = False,
    ) -> tuple[Outputs, str]:
        model = served.model
        if model is None:
            raise ModelFailure("load-error", served.load_error or "not loaded")
        if served.remote is not None:
            try:
                return self._run_remote(served, feeds, rows, budget)
            except (TransportError, TimeoutError, RemoteFailure) as error:
                if not last_resort:
                    if isinstance(error, TransportError):
                        raise ModelFailure("unreachable", str(error)) from None
                    if isinstance(error, RemoteFailure):
                        raise ModelFailure(error.reason, str(error)) from None
                    raise
            # the fallback's run: the worker's own session of the same file answers
            return self._run_inline(model, feeds, budget)
        if served.batcher is not None and rows < self._max_batch_rows:
            pending = served.batcher.submit(feeds, rows, _deadline(budget))
            return pending.wait(budget), model.provider
        return self._run_inline(model, feeds, budget)

    def _run_remote(
        self, served: ServingModel, feeds: Feeds, rows: int, budget: float | None
    ) -> tuple[Outputs, str]:
        """Through the inference process; the worker's coalescing batcher joins the rows of
        its threads into one frame when several wait (a lone request goes at once)."""
        remote, batcher = served.remote, served.batcher
        assert remote is not None
        if batcher is None or not isinstance(remote, ProcessModel) or rows >= self._max_batch_rows:
            return remote.run(feeds, budget)
        outputs = batcher.run_if_idle(feeds, rows, lambda f: remote.run(f, budget)[0])
        if outputs is None:
            # Queued behind this worker's frame in flight: the rows go with the next one only
            # if the budget has not passed by then, and the process gets the time left.
            outputs = batcher.submit(feeds, rows, _deadline(budget)).wait(budget)
        return outputs, remote.provider[0]

    def _run_inline(
        self, model: LoadedModel | EndpointModel, feeds: Feeds, budget: float | None
    ) -> tuple[Outputs, str]:
        if budget is None:
            return model.run(feeds), model.provider
        options = ort.RunOptions()
        active = self._watchdog.arm(options, budget)
        try:
            return model.run(feeds, options), model.provider
        finally:
            active[0] = False


def _deadline(budget: float | None) -> float | None:
    return None if budget is None else time.monotonic() + budget


def finite(outputs: Outputs) -> bool:
    return all(all_finite(value) for value in outputs.values() if value.dtype.kind in "fc")


class FailureCounts:
    """Failures by (experiment, variant, reason) in this process (also in ``predictions``)."""

    def __init__(self) -> None:
        self._counts: Counter[tuple[str, str, str]] = Counter()
        self._lock = threading.Lock()

    def add(self, experiment: str, variant: str, reason: str) -> None:
        with self._lock:
            self._counts[(experiment, variant, reason)] += 1

    def snapshot(self) -> dict[str, dict[str, dict[str, int]]]:
        with self._lock:
            result: dict[str, dict[str, dict[str, int]]] = {}
            for (experiment, variant, reason), count in self._counts.items():
                result.setdefault(experiment, {}).setdefault(variant, {})[reason] = count
            return result


@dataclass(frozen=True)
class RunResult:
    outputs: Outputs
    served_by: ServingModel
    provider: str
    """The execution provider that computed ``outputs`` (in the inference process or here)."""
    failure: str | None
    """Why the assigned variant's model did not answer (None: it did)."""


def run_with_fallback(
    runner: ModelRunner,
    models: ExperimentModels,
    variant: ServingModel,
    feeds: Feeds,
    rows: int,
    fallback_feeds: Callable[[ServingModel], Feeds],
    failures: FailureCounts,
) -> RunResult:
    """Answer with ``variant``'s model, else with the fallback's; ModelUnavailable if neither."""
    started = time.perf_counter()
    try:
        outputs, provider = runner.run(variant, feeds, rows, models.budget_seconds)
        if not finite(outputs):
            raise ModelFailure("non-finite", "the model answered NaN or infinity")
        return RunResult(outputs, variant, provider, None)
    except ModelFailure as error:
        reason = error.reason
    except TimeoutError:
        reason = "timeout"
    except Exception:  # onnxruntime errors, including a run stopped by the watchdog
        over = models.budget_seconds is not None
        over = over and time.perf_counter() - started >= models.budget_seconds  # type: ignore[operator]
        reason = "timeout" if over else "error"
    failures.add(models.key, variant.variant, reason)
    fallback = models.variants.get(models.fallback)
    # The fallback's own model in the inference process may still answer from this worker.
    again = fallback is variant and variant.remote is not None
    if fallback is None or (fallback is variant and not again) or fallback.model is None:
        raise ModelUnavailable(
            f"The model of variant {variant.variant!r} failed ({reason}) and the fallback "
            f"{models.fallback!r} has no working model."
        )
    try:
        outputs, provider = runner.run(
            fallback, fallback_feeds(fallback), rows, None, last_resort=True
        )
    except Exception as error:
        failures.add(models.key, fallback.variant, "error")
        raise ModelUnavailable(
            f"The model of variant {variant.variant!r} failed ({reason}); so did the fallback's."
        ) from error
    if not finite(outputs):
        failures.add(models.key, fallback.variant, "non-finite")
        raise ModelUnavailable("The variant's model and the fallback's both answered NaN.")
    return RunResult(outputs, fallback, provider, reason)
