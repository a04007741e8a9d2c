"""``/v1/predict`` on the logistic model against ``/v1/assign``, same gunicorn server, via wrk.

Part ``http`` of ``benchmarks/predict.py``: one server (``AbxServer``'s settings), an
experiment whose variants all serve ``churn_logreg.onnx``, units cycling through a pool of
1,000 per wrk thread, and alternating runs of the two endpoints. Target: predict >= 0.8x.
A second server, whose model runs replay their first outputs (``no_inference/sitecustomize.py``),
takes turns with it round by round: what ``/v1/predict`` costs with everything but inference,
so the ratio's gap splits into the model's part and the rest. Every round is printed, with
the server's CPU time per request (master and workers) beside its requests/s.

Part ``http-batching``: the heavy MLP (four 1024-wide layers) over HTTP with 64 wrk
connections and 32 request threads in each of two workers, so that 64 single-row requests
can be in flight at once; micro-batching off, then on, each on a fresh server.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import psutil
import psycopg
import requests

ROOT = Path(__file__).resolve().parents[1]
ADMIN_URL = os.environ.get("ABX_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
LUA = r"""
local counter = 0
local headers = {["Content-Type"] = "application/json"}
local path = os.getenv("BENCH_PATH")
local extra = os.getenv("BENCH_EXTRA") or ""
function request()
  counter = counter + 1
  local body = string.format(
    '{"experiment":"checkout_ranker","unit":"u-%d","attributes":{"country":"US","app_version":"2.1.0"}%s}',
    counter %% 1000, extra)
  return wrk.format("POST", path, headers, body)
end
"""
FEATURES = ",".join(f"{0.1 * i:.1f}" for i in range(20))


class Run(NamedTuple):
    rate: float
    """Requests/s."""
    p50_ms: float
    p99_ms: float
    server_cpu_us: float
    """CPU time of the server's processes per request."""


def _cpu_seconds(server: psutil.Process) -> float:
    total = 0.0
    for process in (server, *server.children(recursive=True)):
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def _wrk(
    server: Server, path: str, extra: str, seconds: float, script: Path, connections: int = 16
) -> Run:
    """One wrk run against ``server``."""
    env = {**os.environ, "BENCH_PATH": path, "BENCH_EXTRA": extra}
    cpu_before = _cpu_seconds(server.process)
    out = subprocess.run(
        [
            "wrk",
            "-t2",
            f"-c{connections}",
            f"-d{seconds:.0f}s",
            "--latency",
            "-s",
            str(script),
            server.base,
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"errors from {path}:\n{out}")
    cpu = _cpu_seconds(server.process) - cpu_before
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert match, out
    rate = float(match.group(1))
    cpu_us = cpu / (rate * seconds) * 1e6
    return Run(rate, _percentile(out, "50%"), _percentile(out, "99%"), cpu_us)


def _percentile(wrk_output: str, label: str) -> float:
    """A latency percentile from wrk's ``--latency`` table, in ms."""
    match = re.search(rf"^\s+{re.escape(label)}\s+([\d.]+)(us|ms|s)\s*$", wrk_output, re.M)
    assert match, wrk_output
    value, unit = float(match.group(1)), match.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


class Server(NamedTuple):
    base: str
    process: psutil.Process


@contextmanager
def _server(experiments: Path, **env_overrides: str) -> Iterator[Server]:
    """``abx serve`` on a fresh migrated database."""
    from service.storage.migrations import apply_migrations

    name = f"abx_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = psycopg.conninfo.make_conninfo(ADMIN_URL, dbname=name)
    apply_migrations(url, ROOT / "migrations")
    with socket.socket() as probe:  # a free port: two servers may run side by side
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "ABX_DATABASE_URL": url,
        "ABX_EXPERIMENTS": str(experiments),
        "ABX_BIND": f"127.0.0.1:{port}",
        "ABX_RELOAD_POLL_SECONDS": "0",
        **env_overrides,
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--no-migrate"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                if requests.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.3)
        yield Server(base, psutil.Process(server.pid))
    finally:
        server.terminate()
        server.wait(30)
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _script(folder: Path) -> Path:
    script = folder / "bench.lua"
    script.write_text(LUA.replace("%%", "%"))
    return script


PREDICT_EXTRA = ',"inputs":{"features":[[' + FEATURES + "]]}"


NO_INFERENCE = str(ROOT / "benchmarks" / "no_inference")


def http(seconds: float, rounds: int = 3) -> None:
    from benchmarks.predict import experiment_file

    if shutil.which("wrk") is None:
        print("http: skipped (wrk not installed)")
        return
    folder = Path(tempfile.mkdtemp())
    experiment_file(folder / "experiments", "churn_logreg.onnx", False, False)
    script = _script(folder)
    path = os.pathsep.join(filter(None, [NO_INFERENCE, os.environ.get("PYTHONPATH")]))
    labels = ("http", "http, no inference")
    with (
        _server(folder / "experiments") as real,
        _server(folder / "experiments", PYTHONPATH=path) as replayed,
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
    from benchmarks.predict import experiment_file

    if shutil.which("wrk") is None:
        print("http-batching: skipped (wrk not installed)")
        return
    results = {}
    for batching in (False, True):
        folder = Path(tempfile.mkdtemp())
        experiment_file(folder / "experiments", "mlp_heavy.onnx", batching, False)
        threads = str(connections // 2)  # two workers on two cores
        with _server(folder / "experiments", ABX_WORKERS="2", ABX_THREADS=threads) as server:
            script = _script(folder)
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
