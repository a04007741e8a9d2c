"""onnxruntime sessions: loaded once per file, warmed up, on the provider that serves best.

Provider choice: a model's YAML may list providers; otherwise, when CUDA is
available, the model is timed on CUDA and on CPU at the batch sizes it will
see and the faster one is kept (small models usually stay on the CPU: a GPU
launch costs more than their whole run). CUDA runs in full float32
(``provider_choice.CUDA_OPTIONS``), so the choice never changes a prediction.
CUDA failing to initialise falls back to ``CPUExecutionProvider``. Intra-op
threads are cores / workers, so gunicorn workers x onnxruntime threads never
oversubscribe the cores.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from service.inference.providers import CPU, CUDA, choose_provider, session_providers
from service.inference.signature import TensorSpec, tensor_spec

log = logging.getLogger(__name__)


def intra_op_threads(cores: int, workers: int, override: int | None = None) -> int:
    """Threads per session such that all workers together use each core about once."""
    return override or max(1, cores // max(1, workers))


@dataclass(frozen=True)
class LoadedModel:
    name: str
    version: str
    sha256: str
    path: Path
    session: ort.InferenceSession = field(repr=False)
    provider: str
    inputs: tuple[TensorSpec, ...]
    output_names: tuple[str, ...]
    timings_ms: dict[str, dict[int, float]] = field(default_factory=dict)

    @cached_property
    def _output_list(self) -> list[str]:
        return list(self.output_names)

    @cached_property
    def _default_options(self) -> ort.RunOptions:
        """Shared by runs without a budget: onnxruntime builds one per call when given None,
        a seventh of a small model's run. Never terminated (the watchdog arms its own)."""
        return ort.RunOptions()

    def run(self, feeds: Mapping[str, np.ndarray], options: Any = None) -> dict[str, np.ndarray]:
        feed = feeds if isinstance(feeds, dict) else dict(feeds)
        values = self.session.run(
            self._output_list, feed, self._default_options if options is None else options
        )
        return dict(zip(self.output_names, values, strict=True))


def _options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def sample_feeds(inputs: Sequence[TensorSpec], rows: int) -> dict[str, np.ndarray]:
    """Zeros of the model's shape, free dimensions set to ``rows``."""
    return {
        spec.name: np.zeros(tuple(rows if d is None else d for d in spec.shape), dtype=spec.dtype)
        for spec in inputs
    }


def _median_ms(session: ort.InferenceSession, feeds: dict[str, np.ndarray], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        session.run(None, feeds)
        times.append((time.perf_counter() - started) * 1000)
    return float(np.median(times))


def _session(path: Path, providers: Sequence[str], threads: int) -> ort.InferenceSession:
    session = ort.InferenceSession(
        str(path), _options(threads), providers=session_providers(providers)
    )
    if providers[0] == CUDA and session.get_providers()[0] != CUDA:
        log.warning("%s: CUDA did not initialise; serving on the CPU", path.name)
    return session


def load_model(
    path: Path,
    sha256: str,
    providers: Sequence[str] | None,
    threads: int,
    batch_sizes: Sequence[int] = (1,),
) -> LoadedModel:
    """Load, calibrate (when no providers are configured and CUDA exists) and warm up."""
    available = ort.get_available_providers()
    timings: dict[str, dict[int, float]] = {}
    if providers is None and CUDA in available:
        sessions = {}
        for provider in (CUDA, CPU):
            try:
                candidate = _session(path, list(dict.fromkeys([provider, CPU])), threads)
            except Exception as error:  # CUDA present but unusable (driver, memory)
                log.warning("%s: %s failed to initialise: %s", path.name, provider, error)
                continue
            actual = candidate.get_providers()[0]
            sample = [tensor_spec(i.name, i.type, i.shape) for i in candidate.get_inputs()]
            timings[actual] = {
                rows: _median_ms(candidate, sample_feeds(sample, rows), repeats=5)
                for rows in batch_sizes
            }
            sessions[actual] = candidate
        session = sessions[choose_provider(timings)]
    else:
        wanted = [p for p in (providers or [CPU]) if p in available] or [CPU]
        try:
            session = _session(path, wanted, threads)
        except Exception as error:
            if wanted == [CPU]:
                raise
            log.warning("%s: %s failed (%s); serving on the CPU", path.name, wanted[0], error)
            session = _session(path, [CPU], threads)
    inputs = tuple(tensor_spec(i.name, i.type, i.shape) for i in session.get_inputs())
    meta = session.get_modelmeta()
    model = LoadedModel(
        name=path.stem,
        version=str(meta.version),
        sha256=sha256,
        path=path,
        session=session,
        provider=session.get_providers()[0],
        inputs=inputs,
        output_names=tuple(o.name for o in session.get_outputs()),
        timings_ms=timings,
    )
    for rows in sorted(set(batch_sizes)):  # warm-up: allocate buffers before traffic comes
        model.run(sample_feeds(inputs, rows))
    return model


class SessionPool:
    """Sessions by file content and provider choice, shared across variants and reloads."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._models: dict[tuple[str, tuple[str, ...] | None, tuple[int, ...]], LoadedModel] = {}
        self._lock = threading.Lock()

    def get(
        self, path: Path, sha256: str, providers: Sequence[str] | None, batch_sizes: tuple[int, ...]
    ) -> LoadedModel:
        key = (sha256, tuple(providers) if providers else None, batch_sizes)
        with self._lock:
            model = self._models.get(key)
            if model is None:
                model = load_model(path, sha256, providers, self.threads, batch_sizes)
                self._models[key] = model
        return model

    def retain(self, sha256s: set[str]) -> None:
        """Forget sessions of files no longer used (in-flight requests keep theirs alive)."""
        with self._lock:
            self._models = {k: m for k, m in self._models.items() if k[0] in sha256s}


def default_threads(workers: int, override: int | None) -> int:
    return intra_op_threads(os.cpu_count() or 1, workers, override)
