"""The model side of one serving process: sessions, catalog, runner, shadows, hot reload."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import onnxruntime as ort

from service.assignment.registry import Registry
from service.assignment.service import AssignmentService
from service.assignment.sync import StateSync
from service.experiments.model_registry import model_registry
from service.experiments.reload import HotReloader
from service.experiments.schema import Experiment
from service.experiments.validation import LoadResult
from service.inference.catalog import BatchingConfig, ProcessConfig, build_catalog
from service.inference.histograms import DEFAULT_EDGES
from service.inference.install import install_problem, installed_runtime_packages
from service.inference.placement import Placement
from service.inference.records import REGISTRY_VERSIONS, PredictionLog, registry_version_rows
from service.inference.runner import SessionRunner
from service.inference.service import PredictionService
from service.inference.sessions import SessionPool, default_threads
from service.inference.shadow import ShadowRunner
from service.inference.sketches import SketchBook, profile_edges
from service.inference.wire import InferenceClient, TransportError
from service.settings import Settings, default_workers
from service.storage.writer import BatchWriter

log = logging.getLogger(__name__)


@dataclass
class ModelRuntime:
    predictions: PredictionService
    pool: SessionPool
    shadows: ShadowRunner
    reloader: HotReloader
    sketches: SketchBook
    onnxruntime: dict[str, Any]
    """The installed package, its version and providers, and any install problem."""
    process: ProcessConfig

    def close(self) -> None:
        self.reloader.close()
        self.shadows.close()
        self.sketches.close()
        for batcher in self.predictions.catalog.batchers().values():
            batcher.close()

    def _process_status(self) -> dict[str, Any]:
        """What the inference process hosts (or why it does not answer)."""
        client = self.process.client
        if client is None:
            return {}
        try:
            reply, _ = client.call({"op": "status"}, {}, 0.5)
        except (TransportError, TimeoutError) as error:
            return {
                "process": {"state": "unreachable", "detail": str(error), "socket": client.path}
            }
        models = reply.get("models", {})
        state = {"state": "up", "pid": reply.get("pid"), "socket": client.path}
        return {"process": state, "models": models}

    def status(self) -> dict[str, Any]:
        """Per model: provider, calibration and batching; per variant: failures (for /readyz).

        Failures are this worker process's since it started; every worker's are in the
        ``predictions`` table and rolled up into ``model_health``, which the guardrails read.
        """
        catalog = self.predictions.catalog
        batchers = catalog.batchers()
        hosted = self._process_status()
        placements = {
            served.model.sha256: served
            for experiment in catalog.experiments.values()
            for served in experiment.variants.values()
            if served.model is not None
        }

        def where(sha: str) -> dict[str, Any]:
            served = placements[sha]
            if served.remote is None:
                reason = served.placement.reason if served.placement else "not placed: in-worker"
                return {"runs_in": "worker", "placement_reason": reason}
            assert served.placement is not None
            if served.placement.where == "endpoint":
                return {"runs_in": "endpoint", "placement_reason": served.placement.reason}
            in_process = hosted.get("models", {}).get(sha, {})
            return {
                "runs_in": "inference-process",
                "placement_reason": served.placement.reason,
                "process_provider": in_process.get("provider"),
                **(
                    {"process_batching": in_process["batching"]} if "batching" in in_process else {}
                ),
            }

        return {
            "models": {
                model.name: {
                    "sha256": model.sha256,
                    "provider": model.provider,
                    "calibration_ms": model.timings_ms,
                    **({"batching": batchers[sha].stats()} if sha in batchers else {}),
                    **where(sha),
                }
                for sha, model in catalog.models().items()
            },
            **({"inference_process": hosted.get("process")} if self.process.client else {}),
            "onnxruntime": self.onnxruntime,
            "model_failures": self.predictions.failures.snapshot(),
            "worker_pid": os.getpid(),
            "reloads": self.reloader.reloads,
            "reloads_rejected": self.reloader.rejected,
            "shadow_runs_dropped": self.shadows.dropped,
            "sketch_offers_dropped": self.sketches.dropped,
        }


def build_model_runtime(
    settings: Settings,
    registry: Registry,
    state: StateSync,
    writer: BatchWriter,
    assignments: AssignmentService,
) -> ModelRuntime:
    pool = SessionPool(
        default_threads(settings.workers or default_workers(), settings.model_threads)
    )
    batching = BatchingConfig(
        settings.batching, settings.batch_max_size, settings.batch_max_wait_ms / 1000
    )
    process = process_config(settings)
    catalog = build_catalog(
        registry.experiments.values(), settings.models, pool, batching, process=process
    )
    predictions_log = PredictionLog(writer)

    def record_versions(experiments: Iterable[Experiment], loaded_at: datetime) -> None:
        """Which registry version each variant's model is, once per load (lineage)."""
        for row in registry_version_rows(experiments, loaded_at):
            writer.put(REGISTRY_VERSIONS.table, row)

    record_versions(registry.experiments.values(), datetime.now(UTC))
    shadows = ShadowRunner(predictions_log, settings.shadow_queue_size, settings.max_batch_items)
    edges = profile_edges(settings.models, registry.experiments.values())
    sketches = SketchBook(
        writer.put,
        settings.sketch_interval_seconds,
        edges_for=lambda sha, feature: edges.get(sha, {}).get(feature, DEFAULT_EDGES),
    )
    if settings.sketches:
        sketches.start()
    service = PredictionService(
        assignments,
        catalog,
        SessionRunner(settings.batch_max_size),
        predictions_log,
        shadows,
        settings.max_batch_items,
        sketches if settings.sketches else None,
    )

    def apply(loaded: LoadResult) -> None:
        experiments = [item.experiment for item in loaded.experiments]
        loaded_at = datetime.now(UTC)  # before the new models answer: no answer precedes it
        service.catalog = build_catalog(
            experiments, settings.models, pool, batching, previous=service.catalog, process=process
        )
        registry.replace(loaded)
        record_versions(experiments, loaded_at)
        state.resync()
        fresh = profile_edges(settings.models, experiments)
        edges.clear()
        edges.update(fresh)  # new reference bins for answers sketched from now on

    uris = sorted(
        {
            v.model.registry
            for experiment in registry.experiments.values()
            for v in experiment.variants
            if v.model is not None and v.model.registry is not None
        }
    )
    reloader = HotReloader(
        settings.experiments,
        settings.models,
        apply,
        settings.reload_poll_seconds,
        model_registry(settings.mlflow_tracking_uri, settings.models),
        settings.registry_poll_seconds,
        uris,
    )
    reloader.start()
    return ModelRuntime(service, pool, shadows, reloader, sketches, _onnxruntime_status(), process)


def process_config(settings: Settings) -> ProcessConfig:
    """The placements ``abx serve`` measured, and a client when any model runs in the process."""
    placements = {sha: Placement.from_dict(data) for sha, data in settings.placements.items()}
    default = None
    if settings.inference == "process":
        default = Placement("process", "ABX_INFERENCE=process: every model runs in the process")
    used = default is not None or any(p.where == "process" for p in placements.values())
    device = os.getpid() % max(1, settings.inference_devices)  # spreads workers over the GPUs
    client = InferenceClient(settings.inference_socket_for(device)) if used else None
    return ProcessConfig(placements, default, client, settings.inference_timeout_ms / 1000)


def _onnxruntime_status() -> dict[str, Any]:
    packages = installed_runtime_packages()
    providers = ort.get_available_providers()
    problem = install_problem(packages, providers)
    if problem is not None:
        log.error("%s", problem)
    status = {"version": ort.__version__, "packages": packages, "available_providers": providers}
    return {**status, "problem": problem} if problem else status
