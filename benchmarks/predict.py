"""What ``/v1/predict`` costs on top of the model, and what batching and the cache buy.

Four parts, each a ratio measured in one run:

* ``overhead`` (in-process): ``PredictionService.predict`` (assignment, input conversion and
  validation, the run with its fallback checks, the logging hand-off) against a bare
  ``session.run`` of the same logistic model on the same row (with a reused ``RunOptions``,
  the cheapest way to call it). Target: under 25 µs at the median.
* ``http``: requests/s of ``/v1/predict`` on the logistic model against ``/v1/assign``, both on
  one gunicorn server driven by ``wrk``. Target: at least 0.8x. A second server whose model
  runs replay their first outputs takes turns with it: the ratio with inference left out.
* ``batching`` (in-process): 64 threads of single-row requests on the heavy MLP, micro-batching
  on against off. Targets: at least 2x the throughput; p99 within max wait + one batch's run.
  Both p99s are printed: end to end (the client threads' own Python included) and in the
  batcher (submit to answer: queue and run).
* ``cache`` (in-process): the heavy MLP with repeated inputs, cache on against off.
* ``http-batching``: the batching comparison over HTTP (64 wrk connections, 32 request threads
  per worker); see ``predict_http``.

Run: ``python benchmarks/predict.py [--part all|overhead|http|batching|cache|http-batching]
[--seconds S] [--max-wait-ms MS]``.
``http`` needs ``wrk`` and a PostgreSQL at ``ABX_TEST_DATABASE_URL``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import yaml  # noqa: E402

from service.assignment.registry import Registry  # noqa: E402
from service.assignment.service import AssignmentService  # noqa: E402
from service.assignment.sticky import ASSIGNMENTS, EXPOSURES, StickyStore  # noqa: E402
from service.demo.models import build_demo_models  # noqa: E402
from service.experiments.validation import load_experiments  # noqa: E402
from service.inference.catalog import BatchingConfig, build_catalog  # noqa: E402
from service.inference.records import PREDICTIONS, PredictionLog  # noqa: E402
from service.inference.runner import SessionRunner  # noqa: E402
from service.inference.service import PredictionService  # noqa: E402
from service.inference.sessions import SessionPool  # noqa: E402
from service.inference.shadow import ShadowRunner  # noqa: E402
from service.settings import Settings  # noqa: E402
from service.storage.database import Database  # noqa: E402
from service.storage.writer import BatchWriter  # noqa: E402

MODELS = ROOT / "experiments" / "models"
ATTRIBUTES = {"country": "US", "app_version": "2.1.0"}
ROW = [[0.3 * (i % 7) - 1.0 for i in range(20)]]


def experiment_file(folder: Path, model: str, batching: bool, cache: bool) -> Path:
    """checkout_ranker with every variant on ``model``."""
    definition = yaml.safe_load((ROOT / "experiments" / "checkout_ranker.yaml").read_text())
    digest = build_demo_models(MODELS, [model])[model]
    for variant in definition["variants"]:
        variant["model"] = {"path": model, "sha256": digest, "batching": batching}
    definition["serving"] = {"cache": {"max_entries": 1000}} if cache else {}
    definition["coverage"] = 1.0
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "bench.yaml"
    path.write_text(yaml.safe_dump(definition, sort_keys=False))
    return path


def service_for(path: Path, batching: bool, max_rows: int = 64, wait_ms: float = 0.0) -> Any:
    loaded = load_experiments([path], MODELS)
    assert loaded.ok, loaded.problems
    registry = Registry(loaded)
    database = Database("postgresql://unused@127.0.0.1:1/none")  # never reached: no lookups
    streams = {s.table: s for s in (ASSIGNMENTS, EXPOSURES, PREDICTIONS)}
    writer = BatchWriter(database, streams, max_pending=10**9)
    sticky = StickyStore(database, writer, 1_000_000, 0.1)
    assignments = AssignmentService(registry, sticky, lookup_grace=0.1)
    catalog = build_catalog(
        registry.experiments.values(),
        MODELS,
        SessionPool(threads=1),
        BatchingConfig(batching, max_rows, wait_ms / 1000),
    )
    log = PredictionLog(writer)
    return PredictionService(
        assignments, catalog, SessionRunner(max_rows), log, ShadowRunner(log, 10, 1000), 1000
    ), writer


def overhead(seconds: float) -> None:
    import tempfile

    path = experiment_file(Path(tempfile.mkdtemp()), "churn_logreg.onnx", False, False)
    service, writer = service_for(path, batching=False)
    model = next(iter(service.catalog.models().values()))
    feeds = {"features": (np.asarray(ROW, np.float32) - 1) * 0.5}
    units = [f"user-{i}" for i in range(1000)]
    for unit in units:  # first sightings buffer an assignment; measure returning units too
        service.predict("checkout_ranker", unit, ATTRIBUTES, {"features": ROW})
    options = ort.RunOptions()  # reused, as the service does: the cheapest bare run
    full, bare = [], []
    deadline = time.monotonic() + seconds
    i = 0
    while time.monotonic() < deadline:
        unit = units[i % len(units)]
        i += 1
        started = time.perf_counter_ns()
        service.predict("checkout_ranker", unit, ATTRIBUTES, {"features": ROW})
        middle = time.perf_counter_ns()
        model.session.run(None, feeds, options)
        ended = time.perf_counter_ns()
        full.append(middle - started)
        bare.append(ended - middle)
    full_us, bare_us = statistics.median(full) / 1000, statistics.median(bare) / 1000
    print(
        f"overhead: predict {full_us:.1f} µs, bare session.run {bare_us:.1f} µs at the median "
        f"({len(full)} calls): runtime cost {full_us - bare_us:.1f} µs (target < 25 µs)"
    )
    writer.pending_rows()


def _clients(
    service: Any, experiment: str, threads: int, seconds: float, rows: Any
) -> tuple[float, list[float]]:
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client(index: int) -> None:
        mine = []
        n = 0
        while time.monotonic() < stop:
            n += 1
            started = time.perf_counter()
            service.predict(
                experiment, f"u{index}-{n % 50}", ATTRIBUTES, {"features": rows(index, n)}
            )
            mine.append((time.perf_counter() - started) * 1000)
        with lock:
            latencies.extend(mine)

    workers = [threading.Thread(target=client, args=(i,)) for i in range(threads)]
    began = time.monotonic()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return len(latencies) / (time.monotonic() - began), latencies


def p99(values: list[float]) -> float:
    return sorted(values)[int(0.99 * len(values))]


def batching(seconds: float, wait_ms: float) -> None:
    import tempfile

    results = {}
    for enabled in (False, True):
        path = experiment_file(Path(tempfile.mkdtemp()), "mlp_heavy.onnx", True, False)
        service, _ = service_for(path, batching=enabled, wait_ms=wait_ms)
        results[enabled] = _clients(
            service, "checkout_ranker", 64, seconds, lambda i, n: [[float((i + n) % 9)] * 20]
        )
        batcher = next(iter(service.catalog.batchers().values()), None)
        stats = batcher.stats() if batcher is not None else {"mean_rows": 1.0}
        mean_batch = stats["mean_rows"]
        model = next(iter(service.catalog.models().values()))
        feeds = {"features": np.ones((max(1, round(mean_batch)), 20), np.float32)}
        run_ms = statistics.median(
            (lambda t: (model.session.run(None, feeds), (time.perf_counter() - t) * 1000)[1])(
                time.perf_counter()
            )
            for _ in range(50)
        )
        rps, latencies = results[enabled]
        print(
            f"batching {'on ' if enabled else 'off'} ({model.provider.removesuffix('ExecutionProvider')}):"
            f" {rps:,.0f} req/s, p50 {statistics.median(latencies):.2f} ms,"
            f" p99 {p99(latencies):.2f} ms; mean batch {mean_batch:.1f} rows, one such run {run_ms:.2f} ms"
            + (
                f"; p99 bound (max wait + run) {wait_ms + run_ms:.2f} ms; in the batcher"
                f" (submit to answer) p50 {stats['answer_p50_ms']:.2f} ms,"
                f" p99 {stats['answer_p99_ms']:.2f} ms"
                if enabled
                else ""
            )
        )
    print(
        f"batching: throughput on/off = {results[True][0] / results[False][0]:.2f}x (target >= 2x)"
    )


def cache(seconds: float) -> None:
    import tempfile

    rates = {}
    for enabled in (False, True):
        path = experiment_file(Path(tempfile.mkdtemp()), "mlp_heavy.onnx", False, enabled)
        service, _ = service_for(path, batching=False)
        rates[enabled], latencies = _clients(
            service, "checkout_ranker", 1, seconds, lambda i, n: [[float(n % 100)] * 20]
        )
        print(
            f"cache {'on ' if enabled else 'off'}: {rates[enabled]:,.0f} req/s, p50 {statistics.median(latencies) * 1000:.0f} µs (100 distinct inputs, repeated)"
        )
    print(f"cache: throughput on/off = {rates[True] / rates[False]:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--part",
        default="all",
        choices=["all", "overhead", "http", "batching", "cache", "http-batching"],
    )
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument(
        "--max-wait-ms",
        type=float,
        default=Settings.model_fields["batch_max_wait_ms"].default,
        help="the batcher's max wait (default: the service's, ABX_BATCH_MAX_WAIT_MS)",
    )
    args = parser.parse_args()
    if args.part in ("all", "overhead"):
        overhead(args.seconds)
    if args.part in ("all", "batching"):
        batching(args.seconds, args.max_wait_ms)
    if args.part in ("all", "cache"):
        cache(args.seconds)
    if args.part in ("all", "http"):
        from benchmarks.predict_http import http

        http(args.seconds)
    if args.part in ("all", "http-batching"):
        from benchmarks.predict_http import http_batching

        http_batching(args.seconds)


if __name__ == "__main__":
    main()
