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
* ``http-batching``: the batching comparison over HTTP: the heavy MLP with 64 wrk connections
  and 32 request threads in each of two workers, so that 64 single-row requests can be in
  flight at once; micro-batching off, then on, each on a fresh server.

Over HTTP, each server is ``abx serve`` (``AbxServer``'s settings) on a fresh migrated
database, serving an experiment whose variants all serve the one model; wrk's units cycle
through a pool of 1,000 per thread. In ``http`` the two endpoints alternate, and a second
server, whose model runs replay their first outputs (``no_inference/sitecustomize.py``),
takes turns with the first round by round: what ``/v1/predict`` costs with everything but
inference, so the ratio's gap splits into the model's part and the rest. Every round is
printed, with the server's CPU time per request (master and workers) beside its requests/s.

Run: ``python benchmarks/predict.py [--part all|overhead|http|batching|cache|http-batching]
[--seconds S] [--max-wait-ms MS]``.
``http`` and ``http-batching`` need ``wrk`` and a PostgreSQL at ``ABX_TEST_DATABASE_URL``
(default ``postgresql://postgres@127.0.0.1:5432/postgres``), where they create and drop
``abx_bench_<random>`` databases.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import onnxruntime as ort
import yaml
from common import (
    ROOT,
    Server,
    abx_command,
    bench_database,
    cpu_seconds,
    percentile,
    run_wrk,
    serving,
    write_wrk_script,
)

from service.assignment.registry import Registry
from service.assignment.service import AssignmentService
from service.assignment.sticky import ASSIGNMENTS, EXPOSURE_ATTRIBUTES, EXPOSURES, StickyStore
from service.demo.models import build_demo_models
from service.experiments.validation import load_experiments
from service.inference.catalog import BatchingConfig, build_catalog
from service.inference.records import PREDICTIONS, PredictionLog
from service.inference.runner import SessionRunner
from service.inference.service import PredictionService
from service.inference.sessions import SessionPool
from service.inference.shadow import ShadowRunner
from service.settings import Settings, default_workers
from service.storage.database import Database
from service.storage.writer import BatchWriter

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
    streams = {s.table: s for s in (ASSIGNMENTS, EXPOSURES, EXPOSURE_ATTRIBUTES, PREDICTIONS)}
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


def batching(seconds: float, wait_ms: float) -> None:
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
            f" p99 {percentile(latencies, 0.99):.2f} ms; mean batch {mean_batch:.1f} rows, one such run {run_ms:.2f} ms"
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


# --- over HTTP --------------------------------------------------------------------------

REQUEST_LUA = r"""
local headers = {["Content-Type"] = "application/json"}
local path = os.getenv("BENCH_PATH")
local extra = os.getenv("BENCH_EXTRA") or ""
function request()
  counter = counter + 1
  local body = string.format(
    '{"experiment":"checkout_ranker","unit":"u-%d","attributes":{"country":"US","app_version":"2.1.0"}%s}',
    counter % 1000, extra)
  return wrk.format("POST", path, headers, body)
end
"""
FEATURES = ",".join(f"{0.1 * i:.1f}" for i in range(20))
PREDICT_EXTRA = ',"inputs":{"features":[[' + FEATURES + "]]}"
NO_INFERENCE = str(ROOT / "benchmarks" / "no_inference")


class Run(NamedTuple):
    rate: float
    """Requests/s."""
    p50_ms: float
    p99_ms: float
    server_cpu_us: float
    """CPU time of the server's processes per request."""


def _wrk(
    server: Server, path: str, extra: str, seconds: float, script: Path, connections: int = 16
) -> Run:
    """One wrk run (2 threads) against ``server``."""
    env = {**os.environ, "BENCH_PATH": path, "BENCH_EXTRA": extra}
    pids = server.pids
    cpu_before = cpu_seconds(pids)
    run = run_wrk("wrk", script, server.url, connections, 2, seconds, env)
    if run.http_errors:
        raise RuntimeError(f"{run.http_errors} answers >= 400 from {path}")
    cpu = cpu_seconds(pids) - cpu_before
    return Run(run.requests_per_second, run.p50_ms, run.p99_ms, 1e6 * cpu / max(1, run.requests))


@contextmanager
def _server(name: str, scratch: Path, **env_overrides: str) -> Iterator[Server]:
    """``abx serve`` on a fresh migrated database, serving ``scratch/experiments``."""
    with bench_database(None) as url:
        env = {
            **os.environ,
            "ABX_DATABASE_URL": url,
            "ABX_EXPERIMENTS": str(scratch / "experiments"),
            "ABX_RELOAD_POLL_SECONDS": "0",
            "ABX_AUTH": "off",  # wrk sends no key; benchmarks/access.py measures auth
            **env_overrides,
        }
        workers = int(env.get("ABX_WORKERS") or default_workers())
        command = [*abx_command(), "serve", "--no-migrate"]
        with serving(name, command, env, scratch, workers, ready_path="/readyz") as server:
            yield server


def http(seconds: float, rounds: int = 3) -> None:
    """``/v1/predict`` on the logistic model against ``/v1/assign``, same server, via wrk."""
    if shutil.which("wrk") is None:
        print("http: skipped (wrk not installed)")
        return
    with tempfile.TemporaryDirectory(prefix="abx-bench-predict-") as folder:
        scratch = Path(folder)
        experiment_file(scratch / "experiments", "churn_logreg.onnx", False, False)
        script = write_wrk_script(scratch / "bench.lua", REQUEST_LUA)
        path = os.pathsep.join(filter(None, [NO_INFERENCE, os.environ.get("PYTHONPATH")]))
        labels = ("http", "http, no inference")
        with (
            _server("abx", scratch) as real,
            _server("abx-no-inference", scratch, PYTHONPATH=path) as replayed,
        ):
            runs: dict[str, list[tuple[Run, Run]]] = {label: [] for label in labels}
            for _ in range(rounds):  # the two servers take turns, so slow spells hit both
                for label, server in zip(labels, (real, replayed), strict=True):
                    assign = _wrk(server, "/v1/assign", "", seconds, script)
                    predict = _wrk(server, "/v1/predict", PREDICT_EXTRA, seconds, script)
                    runs[label].append((assign, predict))
    for label in labels:
        pairs = runs[label]
        ratios = sorted(predict.rate / assign.rate for assign, predict in pairs)
        cpu = [(assign.server_cpu_us, predict.server_cpu_us) for assign, predict in pairs]
        print(
            f"{label}: /v1/predict / /v1/assign = {statistics.median(ratios):.2f}x"
            f" (rounds {', '.join(f'{r:.2f}' for r in ratios)})"
            + (" (target >= 0.8x)" if label == "http" else " (the floor without the model)")
            + "; req/s and server CPU per request: "
            + "; ".join(
                f"{a.rate:,.0f} ({a_cpu:.0f} µs) vs {p.rate:,.0f} ({p_cpu:.0f} µs)"
                for (a, p), (a_cpu, p_cpu) in zip(pairs, cpu, strict=True)
            )
        )


def http_batching(seconds: float, connections: int = 64) -> None:
    """The heavy MLP over HTTP, batching off then on: enough request threads for 64 in flight."""
    if shutil.which("wrk") is None:
        print("http-batching: skipped (wrk not installed)")
        return
    results = {}
    for batching in (False, True):
        with tempfile.TemporaryDirectory(prefix="abx-bench-predict-") as folder:
            scratch = Path(folder)
            experiment_file(scratch / "experiments", "mlp_heavy.onnx", batching, False)
            script = write_wrk_script(scratch / "bench.lua", REQUEST_LUA)
            threads = str(connections // 2)  # two workers on two cores
            name = f"abx-batching-{'on' if batching else 'off'}"
            with _server(name, scratch, ABX_WORKERS="2", ABX_THREADS=threads) as server:
                _wrk(server, "/v1/predict", PREDICT_EXTRA, 2, script, connections)  # warm-up
                results[batching] = run = _wrk(
                    server, "/v1/predict", PREDICT_EXTRA, seconds, script, connections
                )
        print(
            f"http-batching {'on ' if batching else 'off'}: {run.rate:,.0f} req/s,"
            f" p50 {run.p50_ms:.1f} ms, p99 {run.p99_ms:.1f} ms, {run.server_cpu_us:.0f} µs CPU"
            f" each ({connections} connections, heavy MLP)"
        )
    print(f"http-batching: throughput on/off = {results[True].rate / results[False].rate:.2f}x")


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
        http(args.seconds)
    if args.part in ("all", "http-batching"):
        http_batching(args.seconds)


if __name__ == "__main__":
    main()
