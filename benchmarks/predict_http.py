"""``/v1/predict`` on the logistic model against ``/v1/assign``, same gunicorn server, via wrk.

Part ``http`` of ``benchmarks/predict.py``: one server (``AbxServer``'s settings), an
experiment whose variants all serve ``churn_logreg.onnx``, units cycling through a pool of
1,000 per wrk thread, and alternating runs of the two endpoints. Target: predict >= 0.8x.

Part ``http-batching``: the heavy MLP (four 1024-wide layers) over HTTP with 64 wrk
connections and 32 request threads in each of two workers, so that 64 single-row requests
can be in flight at once; micro-batching off, then on, each on a fresh server.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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


def _wrk(
    base: str, path: str, extra: str, seconds: float, script: Path, connections: int = 16
) -> tuple[float, float, float]:
    """Requests/s, p50 and p99 (ms) of one wrk run."""
    env = {**os.environ, "BENCH_PATH": path, "BENCH_EXTRA": extra}
    out = subprocess.run(
        [
            "wrk",
            "-t2",
            f"-c{connections}",
            f"-d{seconds:.0f}s",
            "--latency",
            "-s",
            str(script),
            base,
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"errors from {path}:\n{out}")
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert match, out
    return float(match.group(1)), _percentile(out, "50%"), _percentile(out, "99%")


def _percentile(wrk_output: str, label: str) -> float:
    """A latency percentile from wrk's ``--latency`` table, in ms."""
    match = re.search(rf"^\s+{re.escape(label)}\s+([\d.]+)(us|ms|s)\s*$", wrk_output, re.M)
    assert match, wrk_output
    value, unit = float(match.group(1)), match.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


@contextmanager
def _server(experiments: Path, **env_overrides: str) -> Iterator[str]:
    """``abx serve`` on a fresh migrated database; yields its base URL."""
    from service.schema_migrations import apply_migrations

    name = f"abx_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = psycopg.conninfo.make_conninfo(ADMIN_URL, dbname=name)
    apply_migrations(url, ROOT / "migrations")
    port = 18000 + os.getpid() % 1000
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
        yield base
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


def http(seconds: float) -> None:
    from benchmarks.predict import experiment_file

    if shutil.which("wrk") is None:
        print("http: skipped (wrk not installed)")
        return
    folder = Path(tempfile.mkdtemp())
    experiment_file(folder / "experiments", "churn_logreg.onnx", False, False)
    with _server(folder / "experiments") as base:
        script = _script(folder)
        rates: dict[str, list[float]] = {"assign": [], "predict": []}
        for _ in range(2):
            rates["assign"].append(_wrk(base, "/v1/assign", "", seconds, script)[0])
            rates["predict"].append(_wrk(base, "/v1/predict", PREDICT_EXTRA, seconds, script)[0])
        assign, predict = max(rates["assign"]), max(rates["predict"])
        print(
            f"http: /v1/assign {assign:,.0f} req/s, /v1/predict {predict:,.0f} req/s (logistic model):"
            f" {predict / assign:.2f}x (target >= 0.8x)"
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
        with _server(folder / "experiments", ABX_WORKERS="2", ABX_THREADS=threads) as base:
            script = _script(folder)
            _wrk(base, "/v1/predict", PREDICT_EXTRA, 2, script, connections)  # warm-up
            results[batching] = _wrk(
                base, "/v1/predict", PREDICT_EXTRA, seconds, script, connections
            )
        rate, p50, p99 = results[batching]
        print(
            f"http-batching {'on ' if batching else 'off'}: {rate:,.0f} req/s, p50 {p50:.1f} ms,"
            f" p99 {p99:.1f} ms ({connections} connections, heavy MLP)"
        )
    print(f"http-batching: throughput on/off = {results[True][0] / results[False][0]:.2f}x")
