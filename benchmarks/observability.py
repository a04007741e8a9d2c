"""What metrics and logging cost: ``/v1/assign`` and ``/v1/predict`` with them on and off, and
the time of one ``/metrics`` scrape.

Three servers run side by side on the same database, experiments (the repository's five) and
gunicorn settings (2 workers by default):

* ``on``: the defaults. ``/metrics`` served by the master from the workers' multiprocess
  files, every counter and histogram written to them, one JSON access-log line per request.
* ``metrics``: the metrics as ``on``, the access log off (what each of the two costs).
* ``off``: ``ABX_METRICS_BIND=""`` (no multiprocess files, no exporter) and
  ``ABX_ACCESS_LOG=false``. The instrumentation calls still run, on prometheus-client's
  in-memory values, so this measures what the export and the access log add, not the
  increments themselves (a few hundred nanoseconds each).

Each round runs ``wrk`` against ``off``, ``metrics`` then ``on`` (same connections, same seconds) for
each endpoint; the medians over rounds give the ratios, along with the server CPU time per
request (which moves less than req/s when other work shares the cores). Then the ``on``
server's ``/metrics`` is scraped ``--scrapes`` times after the traffic (every series
present): its latency is reported against the 50 ms target, with each worker's VmRSS.

Needs PostgreSQL (a scratch database is created and dropped) and ``wrk``.

Run: ``python benchmarks/observability.py [--rounds 3] [--duration 10] [--connections 16]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from common import (
    DEFAULT_ADMIN_URL,
    ROOT,
    Server,
    abx_command,
    bench_database,
    code_version,
    cpu_seconds,
    free_port,
    load_average,
    percentile,
    print_header,
    print_rss,
    rss_mib,
    run_wrk,
    serving,
    write_wrk_script,
)

TARGET_THROUGHPUT = 0.9
TARGET_P99 = 1.1
TARGET_SCRAPE_MS = 50.0

REQUEST_LUA = r"""
local headers = {["Content-Type"] = "application/json"}
local path = os.getenv("BENCH_PATH")
local extra = os.getenv("BENCH_EXTRA") or ""
function request()
  counter = counter + 1
  local body = string.format(
    '{"experiment":"checkout_ranker","unit":"u-%d","attributes":{"country":"US","app_version":"2.1.0"}%s}',
    counter % 5000, extra)
  return wrk.format("POST", path, headers, body)
end
"""
FEATURES = ",".join(f"{0.1 * i:.1f}" for i in range(20))
ENDPOINTS = {
    "/v1/assign": "",
    "/v1/predict": ',"inputs":{"features":[[' + FEATURES + "]]}",
}


@dataclass(frozen=True)
class Run:
    round: int
    server: str
    path: str
    rate: float
    p99_ms: float
    errors: int
    cpu_us: float


def measure(
    wrk: str, script: Path, server: Server, path: str, args: argparse.Namespace, round_: int
) -> Run:
    env = {**os.environ, "BENCH_PATH": path, "BENCH_EXTRA": ENDPOINTS[path]}
    run_wrk(wrk, script, server.url, args.connections, 2, args.warmup, env)
    before = cpu_seconds(server.pids)
    run = run_wrk(wrk, script, server.url, args.connections, 2, args.duration, env)
    used = cpu_seconds(server.pids) - before
    return Run(round_, server.name, path, run.requests_per_second, run.p99_ms, run.errors,
               1e6 * used / max(1, run.requests))  # fmt: skip


def scrape_ms(url: str, scrapes: int) -> tuple[list[float], int]:
    times, size = [], 0
    for _ in range(scrapes):
        started = time.perf_counter()
        with urllib.request.urlopen(url, timeout=10) as response:
            size = len(response.read())
        times.append((time.perf_counter() - started) * 1000)
    return times, size


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--scrapes", type=int, default=50)
    parser.add_argument("--database-url", help="an already migrated database to use")
    parser.add_argument("--admin-url", default=DEFAULT_ADMIN_URL)
    args = parser.parse_args(argv)
    wrk = shutil.which("wrk")
    if wrk is None:
        print("needs wrk (apt-get install wrk)", file=sys.stderr)
        return 2
    print(f"code {code_version()}; load average {load_average()}; {os.cpu_count()} cores")
    scratch = Path(tempfile.mkdtemp(prefix="abx-bench-observability-"))
    script = write_wrk_script(scratch / "bench.lua", REQUEST_LUA)
    metrics_port = free_port()
    runs: list[Run] = []
    with bench_database(args.database_url, args.admin_url) as url:
        base = {**os.environ, "ABX_DATABASE_URL": url, "ABX_EXPERIMENTS": str(ROOT / "experiments"),
                "ABX_WORKERS": str(args.workers), "ABX_DATA_DIR": str(scratch / "data"),
                "ABX_LOG_FORMAT": "json", "ABX_WORKER_METRICS_BIND": ""}  # fmt: skip
        off_env = {**base, "ABX_METRICS_BIND": "", "ABX_ACCESS_LOG": "false"}
        metrics_env = {**base, "ABX_METRICS_BIND": f"127.0.0.1:{free_port()}",
                       "ABX_ACCESS_LOG": "false"}  # fmt: skip
        on_env = {**base, "ABX_METRICS_BIND": f"127.0.0.1:{metrics_port}", "ABX_ACCESS_LOG": "true"}
        command = [*abx_command(), "serve", "--no-migrate"]
        with (
            serving("off", command, off_env, scratch, args.workers) as off,
            serving("metrics", command, metrics_env, scratch, args.workers) as only_metrics,
            serving("on", command, on_env, scratch, args.workers) as on,
        ):
            for round_ in range(1, args.rounds + 1):
                for path in ENDPOINTS:
                    for server in (off, only_metrics, on):
                        runs.append(measure(wrk, script, server, path, args, round_))
                        r = runs[-1]
                        print(f"round {round_} {server.name:<7} {path:<12} {r.rate:>8,.0f} req/s"
                              f"  p99 {r.p99_ms:6.2f} ms  {r.cpu_us:6,.0f} µs CPU/req"
                              f"  errors {r.errors}", flush=True)  # fmt: skip
            times, size = scrape_ms(f"http://127.0.0.1:{metrics_port}/metrics", args.scrapes)
            rss = {s.name: [rss_mib(pid) for pid in s.pids] for s in (off, only_metrics, on)}
            on_log = next(scratch.glob("on-*.log")).read_text(errors="replace").splitlines()
    print_header(f"{'endpoint':<12} {'compared':<14} {'throughput':>10} {'p99':>6} {'CPU/req':>8}")
    met = True
    for path in ENDPOINTS:
        mine = {name: [r for r in runs if r.path == path and r.server == name]
                for name in ("off", "metrics", "on")}  # fmt: skip

        def ratio(field: str, name: str, mine: dict[str, list[Run]] = mine) -> float:
            return statistics.median(getattr(r, field) for r in mine[name]) / statistics.median(
                getattr(r, field) for r in mine["off"]
            )

        for name in ("metrics", "on"):
            throughput, p99, cpu = ratio("rate", name), ratio("p99_ms", name), ratio("cpu_us", name)
            verdict = ""
            if name == "on":
                ok = throughput >= TARGET_THROUGHPUT and p99 <= TARGET_P99
                met = met and ok
                verdict = (f"  (targets >= {TARGET_THROUGHPUT}x, <= {TARGET_P99}x: "
                           f"{'met' if ok else 'NOT met'})")  # fmt: skip
            print(f"{path:<12} {name + '/off':<14} {throughput:>9.2f}x {p99:>5.2f}x {cpu:>7.2f}x"
                  f"{verdict}")  # fmt: skip
    scrape_p50, scrape_max = percentile(times, 0.5), max(times)
    scrape_ok = percentile(times, 0.99) < TARGET_SCRAPE_MS
    met = met and scrape_ok
    print(f"\n/metrics of 'on' ({args.workers} workers, 5 experiments, {size:,} bytes): "
          f"p50 {scrape_p50:.1f} ms, p99 {percentile(times, 0.99):.1f} ms, max {scrape_max:.1f} ms "
          f"over {args.scrapes} scrapes (target < {TARGET_SCRAPE_MS:.0f} ms: "
          f"{'met' if scrape_ok else 'NOT met'})")  # fmt: skip
    access = sum('"logger": "abx.access"' in line for line in on_log)
    print(f"access-log lines written by 'on': {access:,}")
    print()
    print_rss(rss)
    print(f"load average at the end {load_average()}")
    shutil.rmtree(scratch, ignore_errors=True)
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
