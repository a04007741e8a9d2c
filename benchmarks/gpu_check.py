"""Run the demo models on CUDA and on the CPU: same outputs, and latency/throughput per batch size.

Needs only onnxruntime (``onnxruntime-gpu`` for CUDA), numpy and the model files, so it runs
on a bare GPU machine: ``python benchmarks/gpu_check.py [--models DIR] [--require-cuda]``.
For each model: outputs of CUDA (in full float32, as the runtime runs it) and CPU on the
same random rows must agree within ``--atol``; then median latency and rows/s for batch
sizes 1, 8, 64 and 512 on each provider, and the provider the runtime's calibration (``service/inference/providers.py``, the
same rule) would serve the model on: unbatched it calibrates at one row, micro-batched at
one row and at the default largest batch (64). Without CUDA it measures the CPU alone (and
fails only with ``--require-cuda``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from common import ROOT

from service.inference.providers import CPU, CUDA, choose_provider, session_providers

MODELS = (
    "churn_logreg.onnx",
    "churn_gbm.onnx",
    "churn_mlp.onnx",
    "mlp_heavy.onnx",
    "mlp_heavy_int8.onnx",
)
BATCHES = (1, 8, 64, 512)
CALIBRATIONS = {"unbatched": (1,), "micro-batched": (1, 64)}
"""The batch sizes the runtime calibrates a model at (``service/inference/catalog.py``)."""


def session(path: Path, provider: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    providers = session_providers(list(dict.fromkeys([provider, CPU])))
    return ort.InferenceSession(str(path), options, providers=providers)


def timing(sess: ort.InferenceSession, rows: np.ndarray, budget_s: float) -> float:
    """Median milliseconds per run (warm-up first; at least 5 runs, about ``budget_s``)."""
    name = sess.get_inputs()[0].name
    for _ in range(3):
        sess.run(None, {name: rows})
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < 5 or (time.perf_counter() < deadline and len(times) < 2000):
        started = time.perf_counter()
        sess.run(None, {name: rows})
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--models",
        type=Path,
        default=ROOT / "experiments" / "models",
    )
    parser.add_argument("--atol", type=float, default=1e-4)
    parser.add_argument("--seconds", type=float, default=0.3, help="Time per measurement.")
    parser.add_argument("--require-cuda", action="store_true")
    args = parser.parse_args()
    available = ort.get_available_providers()
    cuda = CUDA in available
    print(f"onnxruntime {ort.__version__}, providers: {', '.join(available)}")
    if not cuda:
        print("CUDA execution provider not available: measuring the CPU only")
        if args.require_cuda:
            return 1
    rng = np.random.default_rng(0)
    failed = False
    for file in MODELS:
        path = args.models / file
        if not path.exists():
            print(f"{file}: missing under {args.models} (abx models demo builds it)")
            failed = True
            continue
        providers = [CPU, CUDA] if cuda else [CPU]
        sessions = {p: session(path, p) for p in providers}
        actual = {p: s.get_providers()[0] for p, s in sessions.items()}
        features = sessions[CPU].get_inputs()[0].shape[-1]
        rows = rng.standard_normal((512, features)).astype(np.float32)
        name = sessions[CPU].get_inputs()[0].name
        if cuda:
            cpu_out = sessions[CPU].run(None, {name: rows})[0]
            gpu_out = sessions[CUDA].run(None, {name: rows})[0]
            difference = float(np.max(np.abs(cpu_out - gpu_out)))
            agree = difference <= args.atol
            failed |= not agree or actual[CUDA] != CUDA
            print(
                f"{file}: CUDA vs CPU largest difference {difference:.2e} ({'ok' if agree else 'MISMATCH'}); CUDA session on {actual[CUDA]}"
            )
        timings: dict[str, dict[int, float]] = {provider: {} for provider in providers}
        for batch in BATCHES:
            line = [f"{file:<22} batch {batch:>4}:"]
            for provider in providers:
                ms = timings[provider][batch] = timing(
                    sessions[provider], rows[:batch], args.seconds
                )
                line.append(f"{provider[:-17]:>4} {ms:8.3f} ms {batch / ms * 1000:>12,.0f} rows/s")
            print("  ".join(line))
        choices = {
            kind: choose_provider({p: {b: timings[p][b] for b in sizes} for p in providers})
            for kind, sizes in CALIBRATIONS.items()
        }
        print(
            f"{file}: the calibration would serve it on "
            + ", ".join(f"{choice[:-17]} {kind}" for kind, choice in choices.items())
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
