"""Which model serves each variant of each experiment: one immutable snapshot per config.

Requests read the catalog once and keep that snapshot to the end, so a hot
reload that swaps in a new one never pulls a session from under a request.
A model that fails to load is kept as its error: its variant is answered by
the fallback, never refused.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from service.experiments.model_refs import resolve_model_path
from service.experiments.schema import Experiment, ModelRef
from service.inference.batching import MicroBatcher
from service.inference.cache import PredictionCache
from service.inference.endpoint import EndpointModel, EndpointRunner, load_endpoint
from service.inference.placement import CPU_ONLY, Placement
from service.inference.remote import ProcessModel
from service.inference.sessions import LoadedModel, SessionPool
from service.inference.signature import InputPlan, TensorSpec
from service.inference.wire import InferenceClient
from service.observability import metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServingModel:
    variant: str
    ref: ModelRef
    model: LoadedModel | EndpointModel | None
    load_error: str | None
    plans: tuple[InputPlan, ...]
    batcher: MicroBatcher | None = None
    shadow_rate: float = 0.0
    remote: ProcessModel | EndpointRunner | None = None
    """Set when the model is placed on the inference process (``model`` is then the worker's
    CPU session of the same file, which answers only as a fallback's last resort)."""
    placement: Placement | None = None

    @cached_property
    def response_names(self) -> Mapping[str, str]:
        """Model output name -> response name (built once: it is read on every request)."""
        if self.ref.outputs:
            return self.ref.outputs
        return {name: name for name in (self.model.output_names if self.model else ())}

    def renamed(self, outputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The outputs the response shows, under their response names."""
        names = self.response_names
        return {names[name]: value for name, value in outputs.items() if name in names}


@dataclass(frozen=True)
class ExperimentModels:
    key: str
    variants: Mapping[str, ServingModel]
    fallback: str
    budget_seconds: float | None
    cache: PredictionCache | None
    shadows: tuple[ServingModel, ...]


def _scaling(
    value: float | list[float] | dict[str, float],
    neutral: float,
    features: Sequence[str] | None,
    dtype: Any,
) -> np.ndarray | None:
    """One offset or factor as the array applied to every row (None: nothing to do).

    Per-name values are laid out in the model's column order, ``neutral`` for the
    names not given (the rules refuse a mapping without ``features``).
    """
    if isinstance(value, dict):
        value = [value.get(name, neutral) for name in features or ()]
    elif value == neutral:
        return None
    return np.asarray(value, dtype=dtype)


def input_plans(ref: ModelRef, inputs: Iterable[TensorSpec]) -> tuple[InputPlan, ...]:
    """Request-side names, column names and scaling for every model input (YAML ``inputs``)."""
    by_model_input = {spec.model_input or name: (name, spec) for name, spec in ref.inputs.items()}
    plans = []
    for tensor in inputs:
        name, spec = by_model_input.get(tensor.name, (tensor.name, None))
        if spec is None:
            plans.append(InputPlan(name, tensor))
            continue
        features = tuple(spec.features) if spec.features is not None else None
        offset = _scaling(spec.offset, 0.0, features, tensor.dtype)
        factor = _scaling(spec.factor, 1.0, features, tensor.dtype)
        plans.append(InputPlan(name, tensor, offset, factor, features))
    return tuple(plans)


@dataclass(frozen=True)
class BatchingConfig:
    enabled: bool
    max_rows: int
    max_wait_seconds: float


@dataclass(frozen=True)
class ProcessConfig:
    """Where models run: ``placements`` by SHA-256 (``abx serve`` measured them), and the
    inference process's client for those placed there."""

    placements: Mapping[str, Placement]
    default: Placement | None
    """For models not measured (``ABX_INFERENCE=process``, or loaded by a later reload)."""
    client: InferenceClient | None
    timeout_seconds: float


class Catalog:
    def __init__(self, experiments: Mapping[str, ExperimentModels]) -> None:
        self.experiments = experiments

    def get(self, key: str) -> ExperimentModels | None:
        return self.experiments.get(key)

    def models(self) -> dict[str, LoadedModel | EndpointModel]:
        return {
            served.model.sha256: served.model
            for experiment in self.experiments.values()
            for served in experiment.variants.values()
            if served.model is not None
        }

    def batchers(self) -> dict[str, MicroBatcher]:
        return {
            served.model.sha256: served.batcher
            for experiment in self.experiments.values()
            for served in experiment.variants.values()
            if served.batcher is not None and served.model is not None
        }


def _endpoint_model(
    key: str, ref: ModelRef, rate: float, process: ProcessConfig | None
) -> ServingModel:
    """A variant whose model an Open Inference Protocol server runs (``endpoint.py``)."""
    assert ref.endpoint is not None
    timeout = process.timeout_seconds if process else 1.0
    try:
        model = load_endpoint(ref.endpoint, ref.token_env, timeout)
    except Exception as error:  # down, refusing, or metadata abx cannot feed
        log.error("%s: endpoint %s failed to load: %s", key, ref.endpoint, error)
        return ServingModel(key, ref, None, str(error), ())
    placement = Placement("endpoint", f"the YAML names an endpoint: {ref.endpoint}")
    plans = input_plans(ref, model.inputs)
    return ServingModel(key, ref, model, None, plans, None, rate, EndpointRunner(model), placement)


def build_catalog(
    experiments: Iterable[Experiment],
    models_root: Path,
    pool: SessionPool,
    batching: BatchingConfig,
    previous: Catalog | None = None,
    process: ProcessConfig | None = None,
) -> Catalog:
    """Load every variant's model (reusing sessions, batchers and caches that still apply)."""
    batchers = previous.batchers() if previous else {}
    placements = process.placements if process else {}
    built: dict[str, ExperimentModels] = {}
    for experiment in experiments:
        variants: dict[str, ServingModel] = {}
        for variant in experiment.variants:
            ref = variant.model
            if ref is None:
                continue
            rate = variant.shadow.sample_rate if variant.shadow else 0.0
            if ref.endpoint is not None:
                variants[variant.key] = _endpoint_model(variant.key, ref, rate, process)
                continue
            if ref.path is None or ref.sha256 is None:  # a registry model loaded unresolved
                error = f"{ref.registry} was not resolved (loaded without the models root)"
                variants[variant.key] = ServingModel(variant.key, ref, None, error, ())
                continue
            path = resolve_model_path(models_root, ref.path) or models_root / ref.path
            placement = placements.get(ref.sha256) or (process.default if process else None)
            remote = None
            providers: Sequence[str] | None = ref.providers
            client = process.client if process else None
            if placement is not None and placement.where == "process" and client is not None:
                assert process is not None
                remote = ProcessModel(client, ref.path, ref.sha256, process.timeout_seconds)
                providers = CPU_ONLY  # the worker's copy: the fallback's last resort
            batched = batching.enabled and ref.batching and remote is None
            sizes = (1, batching.max_rows) if batched else (1,)
            try:
                model = pool.get(path, ref.sha256, providers, sizes)
            except Exception as error:
                log.error(
                    "%s/%s: model %s failed to load: %s",
                    experiment.key,
                    variant.key,
                    ref.path,
                    error,
                )
                variants[variant.key] = ServingModel(variant.key, ref, None, str(error), ())
                continue
            batcher = None
            if remote is not None and batching.enabled:  # coalesces this worker's rows
                batcher = batchers.get(model.sha256) or MicroBatcher(
                    remote.run_batch,
                    batching.max_rows,
                    0.0,
                    model.name,
                    metrics.BATCH_SIZE.labels(model.name).observe,
                    run_until=remote.run_until,
                )
                batchers[model.sha256] = batcher
            elif batched:
                batcher = batchers.get(model.sha256) or MicroBatcher(
                    model.run,
                    batching.max_rows,
                    batching.max_wait_seconds,
                    model.name,
                    metrics.BATCH_SIZE.labels(model.name).observe,
                )
                batchers[model.sha256] = batcher
            variants[variant.key] = ServingModel(
                variant.key,
                ref,
                model,
                None,
                input_plans(ref, model.inputs),
                batcher,
                rate,
                remote,
                placement,
            )
        if not variants:
            continue
        old = previous.get(experiment.key) if previous else None
        cache = None
        if experiment.serving.cache is not None:
            spec = experiment.serving.cache
            cache = old.cache if old and old.cache and old.cache.spec == spec else None
            cache = cache or PredictionCache(spec.max_entries, spec.ttl_seconds, spec=spec)
        budget = experiment.serving.latency_budget_ms
        built[experiment.key] = ExperimentModels(
            key=experiment.key,
            variants=variants,
            fallback=experiment.serving.fallback or experiment.control,
            budget_seconds=budget / 1000 if budget else None,
            cache=cache,
            shadows=tuple(
                variants[v.key]
                for v in experiment.variants
                if v.shadow is not None and v.key in variants
            ),
        )
    catalog = Catalog(built)
    kept = catalog.batchers()
    for sha, batcher in batchers.items():
        if kept.get(sha) is not batcher:
            batcher.close()
    pool.retain(set(catalog.models()))
    return catalog
