"""What the inference process's transport costs: per call, and on ``/v1/predict``.

Two parts, each measured in one run:

* ``round-trip``: one client thread calling an ``abx infer`` core over its Unix socket with
  single rows of the logistic model (``ping``: the transport alone; ``run``: transport,
  checks and the batcher's hand-off), against ``session.run`` of the same row in-process.
* ``http``: ``/v1/predict`` on the logistic model from two ``abx serve`` servers that take
  turns round by round: ``ABX_INFERENCE=worker`` (each worker's own session) and
  ``ABX_INFERENCE=process`` (every run through the inference process). Load comes from
  ``--clients`` Python processes with one keep-alive connection each (``wrk`` may be absent).
  Target: process / worker at least 0.8x. Server CPU per request counts the master, the
  workers and the inference process; VmRSS of each is printed.

Run: ``python benchmarks/transport.py [--part all|round-trip|http] [--seconds S]
[--rounds N] [--clients N]``. ``http`` needs a PostgreSQL at ``ABX_TEST_DATABASE_URL``
(default ``postgresql://postgres@127.0.0.1:5432/postgres``), where it creates and drops
``abx_bench_<random>`` databases.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import yaml
from common import (
    ROOT,
    abx_command,
    bench_database,
    children_of,
    code_version,
    cpu_seconds,
    load_average,
    percentile,
    rss_mib,
    serving,
)

from service.demo.models import build_demo_models
from service.inference.host import file_sha256
from service.inference.wire import InferenceClient, TransportError

MODELS = ROOT / "experiments" / "models"
MODEL = "churn_logreg.onnx"
ROW = [[0.1 * i for i in range(20)]]


def round_trip(seconds: float) -> None:
    build_demo_models(MODELS, [MODEL])
    folder = Path(tempfile.mkdtemp(prefix="abx-t-", dir="/tmp"))
    socket_path = str(folder / "s.sock")
    process = subprocess.Popen(
        [*abx_command(), "infer", "--socket", socket_path, "--model", MODEL,
         "--providers", "cpu", "--threads", "1"],
        env={**os.environ, "ABX_MODELS": str(MODELS), "ABX_LOG_FORMAT": "json"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    client = InferenceClient(socket_path)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                client.call({"op": "ping"}, {}, 1)
                break
            except (TransportError, TimeoutError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        row = np.asarray(ROW, dtype=np.float32)
        sha = file_sha256(MODELS / MODEL)
        run = {"op": "run", "model": sha, "path": MODEL, "timeout": 1.0}
        session = ort.InferenceSession(str(MODELS / MODEL), providers=["CPUExecutionProvider"])
        options = ort.RunOptions()
        calls = {
            "session.run in-process": lambda: session.run(None, {"features": row}, options),
            "socket ping": lambda: client.call({"op": "ping"}, {}, 1),
            "socket run (1 row)": lambda: client.call(run, {"features": row}, 1),
        }
        for name, call in calls.items():
            times = []
            deadline = time.perf_counter() + seconds
            while time.perf_counter() < deadline:
                began = time.perf_counter()
                call()
                times.append((time.perf_counter() - began) * 1e6)
            print(
                f"round-trip {name}: median {statistics.median(times):.0f} µs, "
                f"p99 {percentile(times, 0.99):.0f} µs ({len(times)} calls)",
                flush=True,
            )
    finally:
        client.close()
        process.terminate()
        process.wait(10)


def experiment(folder: Path) -> None:
    definition = yaml.safe_load((ROOT / "experiments" / "checkout_ranker.yaml").read_text())
    digest = build_demo_models(MODELS, [MODEL])[MODEL]
    for variant in definition["variants"]:
        variant["model"] = {"path": MODEL, "sha256": digest}
    definition["serving"] = {}
    definition["coverage"] = 1.0
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bench.yaml").write_text(yaml.safe_dump(definition, sort_keys=False))


def load_client(args: tuple[int, float, float, int]) -> tuple[int, int, list[float]]:
    port, start_at, seconds, seed = args
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Content-Type": "application/json"}
    latencies: list[float] = []
    errors = 0
    counter = seed * 100_000
    time.sleep(max(0.0, start_at - time.time()))
    deadline = time.perf_counter() + seconds
    while (began := time.perf_counter()) < deadline:
        counter += 1
        body = json.dumps({
            "experiment": "checkout_ranker", "unit": f"u-{counter % 1000}",
            "attributes": {"country": "US", "app_version": "2.1.0"}, "inputs": {"features": ROW},
        })  # fmt: skip
        connection.request("POST", "/v1/predict", body, headers)
        response = connection.getresponse()
        response.read()
        errors += response.status != 200
        latencies.append(time.perf_counter() - began)
    connection.close()
    return len(latencies), errors, latencies


def drive(
    pool: multiprocessing.pool.Pool, server: object, clients: int, seconds: float
) -> tuple[float, float, float]:
    pids = [server.process.pid, *server.workers]  # type: ignore[attr-defined]
    pids += [child for pid in pids[1:] for child in children_of(pid)]
    before = cpu_seconds(pids)
    start_at = time.time() + 1.0
    results = pool.map(load_client, [(server.port, start_at, seconds, i) for i in range(clients)])  # type: ignore[attr-defined]
    used = cpu_seconds(pids) - before
    requests = sum(r[0] for r in results)
    errors = sum(r[1] for r in results)
    if errors:
        raise RuntimeError(f"{errors} answers other than 200")
    latencies = sorted(v for r in results for v in r[2])
    return requests / seconds, 1e6 * used / max(1, requests), percentile(latencies, 0.99) * 1000


def http_part(seconds: float, rounds: int, clients: int) -> None:
    with tempfile.TemporaryDirectory(prefix="abx-bench-transport-") as folder:
        scratch = Path(folder)
        experiment(scratch / "experiments")
        runs: dict[str, list[tuple[float, float, float]]] = {"worker": [], "process": []}
        rss: dict[str, list[float]] = {}
        with bench_database(None) as url_worker, bench_database(None) as url_process:
            common = {
                **os.environ, "ABX_EXPERIMENTS": str(scratch / "experiments"),
                "ABX_RELOAD_POLL_SECONDS": "0", "ABX_AUTH": "off", "ABX_WORKERS": "2",
            }  # fmt: skip
            command = [*abx_command(), "serve", "--no-migrate"]
            worker_env = {**common, "ABX_DATABASE_URL": url_worker, "ABX_INFERENCE": "worker"}
            process_env = {
                **common, "ABX_DATABASE_URL": url_process, "ABX_INFERENCE": "process",
                "ABX_INFERENCE_SOCKET": str(Path(tempfile.mkdtemp(prefix="abx-t-", dir="/tmp")) / "s.sock"),
            }  # fmt: skip
            with (
                serving("abx-worker", command, worker_env, scratch, 2, "/readyz") as in_worker,
                serving("abx-process", command, process_env, scratch, 2, "/readyz") as in_process,
                multiprocessing.get_context("spawn").Pool(clients) as pool,
            ):
                for server in (in_worker, in_process):
                    drive(pool, server, clients, 1.0)  # warm-up
                for _ in range(rounds):
                    runs["worker"].append(drive(pool, in_worker, clients, seconds))
                    runs["process"].append(drive(pool, in_process, clients, seconds))
                for name, server in (("worker", in_worker), ("process", in_process)):
                    pids = [server.process.pid, *server.workers]
                    rss[name] = [rss_mib(pid) for pid in pids]
                    rss[name] += [rss_mib(c) for pid in pids[1:] for c in children_of(pid)]
    for name, values in runs.items():
        print(
            f"http {name}: "
            + "; ".join(
                f"{rate:,.0f} req/s ({cpu:.0f} µs server CPU, p99 {p99:.1f} ms)"
                for rate, cpu, p99 in values
            )
        )
    ratios = [p[0] / w[0] for w, p in zip(runs["worker"], runs["process"], strict=True)]
    cpu = [p[1] / w[1] for w, p in zip(runs["worker"], runs["process"], strict=True)]
    print(
        f"http: process / worker throughput = {statistics.median(ratios):.2f}x "
        f"(rounds {', '.join(f'{r:.2f}' for r in ratios)}; target >= 0.8x); "
        f"server CPU per request {statistics.median(cpu):.2f}x"
    )
    for name, sizes in rss.items():
        print(
            f"VmRSS {name}: "
            + ", ".join(f"{s:.0f}" for s in sizes)
            + " MiB (master, workers, inference process)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--part", default="all", choices=["all", "round-trip", "http"])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    print(f"code {code_version()}, load {load_average()}, {os.cpu_count()} cores", flush=True)
    if args.part in ("all", "round-trip"):
        round_trip(args.seconds)
    if args.part in ("all", "http"):
        http_part(args.seconds, args.rounds, args.clients)


if __name__ == "__main__":
    main()
