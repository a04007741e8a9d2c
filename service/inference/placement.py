"""Where each model runs: in every worker's own CPU session, or in the inference process.

Decided by measuring the deployment, not one worker: with W gunicorn workers of T threads,
in-worker serving is W sessions running side by side (cores / W threads each), each batching
at most its own T concurrent requests; the inference process is one session on the best
provider of the host, batching the requests of all workers (up to W x T rows, at most the
batch limit). ``measure`` times both for a model file; ``decide`` (pure) keeps the process
only when it serves at least ``MARGIN`` times the rows per second, since every request then
pays a socket round trip (``wire.py``). Without CUDA nothing is measured: a CPU session in
the process only moves the same cores' work behind a socket.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from service.inference.providers import CPU, CUDA

CPU_ONLY = [CPU]
MARGIN = 1.2
"""The process must serve this much more than the workers to be worth a round trip."""


@dataclass(frozen=True)
class Placement:
    where: Literal["worker", "process", "endpoint"]
    reason: str
    worker_rows_per_second: float | None = None
    process_rows_per_second: float | None = None
    process_provider: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Placement:
        return cls(**data)


def decide(
    worker_rows_per_second: float, process_rows_per_second: float, provider: str, workers: int
) -> Placement:
    """The process when it serves MARGIN times the rows per second of the W workers."""
    worker, process = round(worker_rows_per_second, 1), round(process_rows_per_second, 1)
    ratio = process_rows_per_second / max(worker_rows_per_second, 1e-9)
    if ratio >= MARGIN:
        reason = (
            f"measured: one inference process on {provider} serves {ratio:.1f}x the rows/s "
            f"of {workers} workers' own CPU sessions"
        )
        return Placement("process", reason, worker, process, provider)
    reason = (
        f"measured: {workers} workers' own CPU sessions serve {1 / ratio:.2f}x the rows/s of "
        f"one inference process on {provider} (it needs {MARGIN}x to be worth a round trip)"
    )
    return Placement("worker", reason, worker, process, provider)


def _rows_per_second(
    sessions: Sequence[Any], feeds: Mapping[str, np.ndarray], seconds: float
) -> float:
    """Rows per second of ``sessions`` each running ``feeds`` in a loop, side by side."""
    rows = next(iter(feeds.values())).shape[0]
    counts = [0] * len(sessions)
    start = threading.Barrier(len(sessions) + 1)

    def loop(index: int) -> None:
        session = sessions[index]
        start.wait()
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            session.run(None, feeds)
            counts[index] += rows

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(len(sessions))]
    for thread in threads:
        thread.start()
    began = time.perf_counter()
    start.wait()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.perf_counter() - began)


def measure(
    path: Path,
    workers: int,
    threads_per_worker: int,
    max_rows: int,
    cores: int,
    process_providers: Sequence[str],
    seconds: float = 0.3,
) -> Placement:
    """Time in-worker CPU serving against one inference process for the model at ``path``.

    Worker sessions run in threads of this process (onnxruntime releases the GIL in ``run``),
    as the W workers' sessions would run in W processes on the same cores.
    """
    import onnxruntime as ort

    from service.inference.providers import session_providers
    from service.inference.sessions import _options, sample_feeds
    from service.inference.signature import tensor_spec

    per_worker = max(1, cores // max(1, workers))
    worker_sessions = [
        ort.InferenceSession(str(path), _options(per_worker), providers=CPU_ONLY)
        for _ in range(workers)
    ]
    inputs = [tensor_spec(i.name, i.type, i.shape) for i in worker_sessions[0].get_inputs()]
    in_worker = _rows_per_second(
        worker_sessions, sample_feeds(inputs, min(threads_per_worker, max_rows)), seconds
    )
    process_session = ort.InferenceSession(
        str(path), _options(cores), providers=session_providers(list(process_providers))
    )
    provider = process_session.get_providers()[0]
    batch = sample_feeds(inputs, min(workers * threads_per_worker, max_rows))
    process_session.run(None, batch)  # warm-up: CUDA allocates on the first run
    in_process = _rows_per_second([process_session], batch, seconds)
    return decide(in_worker, in_process, provider, workers)


def default_process_providers(available: Sequence[str]) -> list[str]:
    return [CUDA, CPU] if CUDA in available else CPU_ONLY


def place_models(
    refs: Sequence[tuple[Path, str, Sequence[str] | None]],
    mode: str,
    workers: int,
    threads_per_worker: int,
    max_rows: int,
    cores: int,
    available: Sequence[str],
) -> dict[str, Placement]:
    """Placement by SHA-256 of every model (``refs``: path, sha256, YAML providers)."""
    placed: dict[str, Placement] = {}
    for path, sha256, providers in refs:
        if sha256 in placed or mode == "worker":
            continue
        if mode == "process":
            placed[sha256] = Placement("process", "ABX_INFERENCE=process: every model runs there")
        elif providers and providers[0] == CUDA and CUDA in available:
            placed[sha256] = Placement(
                "process",
                f"its YAML asks for CUDA: one process owns the GPU for all {workers} workers",
                process_provider=CUDA,
            )
        elif providers:
            placed[sha256] = Placement("worker", f"its YAML asks for {providers[0]}")
        elif CUDA not in available:
            placed[sha256] = Placement(
                "worker",
                "no CUDA on this host: each worker's own CPU session (a CPU session in the "
                "process would only move the same cores' work behind a socket)",
            )
        else:
            try:
                placed[sha256] = measure(
                    path, workers, threads_per_worker, max_rows, cores,
                    default_process_providers(available),
                )  # fmt: skip
            except Exception as error:  # a model that cannot load is the catalog's to report
                placed[sha256] = Placement("worker", f"not measured: {error}")
    return placed
