"""``/v1/predict`` on the logistic model against ``/v1/assign``, same gunicorn server, via wrk.

Part ``http`` of ``benchmarks/predict.py``: one server (``AbxServer``'s settings), an
experiment whose variants all serve ``churn_logreg.onnx``, units cycling through a pool of
1,000 per wrk thread, and alternating runs of the two endpoints. Target: predict >= 0.8x.
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


def _wrk(base: str, path: str, extra: str, seconds: float, script: Path) -> float:
    env = {**os.environ, "BENCH_PATH": path, "BENCH_EXTRA": extra}
    out = subprocess.run(
        ["wrk", "-t2", "-c16", f"-d{seconds:.0f}s", "-s", str(script), base],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"errors from {path}:\n{out}")
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert match, out
    return float(match.group(1))


def http(seconds: float) -> None:
    from benchmarks.predict import experiment_file
    from service.schema_migrations import apply_migrations

    if shutil.which("wrk") is None:
        print("http: skipped (wrk not installed)")
        return
    folder = Path(tempfile.mkdtemp())
    experiment_file(folder / "experiments", "churn_logreg.onnx", False, False)
    name = f"abx_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = psycopg.conninfo.make_conninfo(ADMIN_URL, dbname=name)
    apply_migrations(url, ROOT / "migrations")
    port = 18000 + os.getpid() % 1000
    env = {
        **os.environ,
        "ABX_DATABASE_URL": url,
        "ABX_EXPERIMENTS": str(folder / "experiments"),
        "ABX_BIND": f"127.0.0.1:{port}",
        "ABX_RELOAD_POLL_SECONDS": "0",
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
        script = folder / "bench.lua"
        script.write_text(LUA.replace("%%", "%"))
        predict_extra = ',"inputs":{"features":[[' + FEATURES + "]]}"
        rates: dict[str, list[float]] = {"assign": [], "predict": []}
        for _ in range(2):
            rates["assign"].append(_wrk(base, "/v1/assign", "", seconds, script))
            rates["predict"].append(_wrk(base, "/v1/predict", predict_extra, seconds, script))
        assign, predict = max(rates["assign"]), max(rates["predict"])
        print(
            f"http: /v1/assign {assign:,.0f} req/s, /v1/predict {predict:,.0f} req/s (logistic model):"
            f" {predict / assign:.2f}x (target >= 0.8x)"
        )
    finally:
        server.terminate()
        server.wait(30)
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
