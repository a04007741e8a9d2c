"""``POST /v1/assign`` with scoped keys and rate limits on, against the same server with
``ABX_AUTH=off``: what access control costs.

Both are ``abx serve`` from this checkout on one migrated database, taking turns round by
round; wrk sends the same requests with the same ``Authorization`` header to both (the
``off`` server ignores it). With keys on, every request has its key verified against the
process's copy of the keys table and is counted by Flask-Limiter: on the memory-mapped file
shared by the host's workers (``keys``), and, with ``--redis-url``, on Redis (``redis``).
The key's own rate (``1000000/second``) is far above the load, so nothing is refused and
every request pays for the count.

Reported per server and connection count: requests/s, p50/p99 and the gunicorn CPU per
request; then medians over rounds as ratios against ``off``. Targets (issue 15): throughput
at least 0.9x and p99 at most 1.1x of ``off``. The load generator shares the machine's cores
with the servers, so other work on the machine moves req/s and p99; the CPU-per-request
ratio is the steadier figure.

Run: ``python benchmarks/access.py [--duration S] [--rounds N] [--redis-url URL]``
(needs ``wrk``; creates and drops a scratch database).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from common import (
    DEFAULT_ADMIN_URL,
    ROOT,
    abx_command,
    bench_database,
    code_version,
    cpu_seconds,
    load_average,
    print_header,
    run_wrk,
    serving,
    wait_for_quiet,
    write_wrk_script,
)

TARGET_THROUGHPUT_RATIO = 0.9
TARGET_P99_RATIO = 1.1

WRK_SCRIPT = r"""

local countries = {"US", "CA", "GB", "DE", "FR", "BR"}
local versions = {"1.9.0", "2.0.0", "2.3.1", "3.0.0"}
local unit_pool = tonumber(os.getenv("ABX_BENCH_UNIT_POOL") or "0")
local headers = {["Content-Type"] = "application/json",
                 ["Authorization"] = "Bearer " .. os.getenv("ABX_BENCH_TOKEN")}

function request()
  counter = counter + 1
  local unit = counter
  if unit_pool > 0 then unit = counter % unit_pool end
  local body = string.format(
    '{"experiment":"checkout_ranker","unit":"%s-%d-%d","attributes":{"country":"%s","app_version":"%s"}}',
    run_id, thread_id, unit, countries[counter % #countries + 1], versions[counter % #versions + 1])
  return wrk.format("POST", "/v1/assign", headers, body)
end
"""


@dataclass(frozen=True)
class Result:
    round: int
    server: str
    connections: int
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_us_per_request: float


def _key(database_url: str) -> str:
    import psycopg

    from service.access.keys import create_key

    with psycopg.connect(database_url, autocommit=True) as conn:
        return create_key(conn, "bench", ["assign"], "benchmark", rate_limit="1000000/second").token


def _report(results: list[Result]) -> bool:
    print_header(
        f"{'round':>5} {'server':<6} {'conns':>5} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7}"
        f" {'errors':>6} {'CPU µs/req':>10}"
    )
    for r in results:
        print(
            f"{r.round:>5} {r.server:<6} {r.connections:>5} {r.requests_per_second:>8,.0f}"
            f" {r.p50_ms:>7.2f} {r.p99_ms:>7.2f} {r.errors:>6} {r.cpu_us_per_request:>10,.0f}"
        )
    print()
    met = True
    for connections in sorted({r.connections for r in results}):
        base = [r for r in results if r.server == "off" and r.connections == connections]
        for name in sorted({r.server for r in results} - {"off"}):
            ours = [r for r in results if r.server == name and r.connections == connections]

            def median(rows: list[Result], field: str) -> float:
                return statistics.median(getattr(r, field) for r in rows)

            throughput = median(ours, "requests_per_second") / median(base, "requests_per_second")
            p99 = median(ours, "p99_ms") / median(base, "p99_ms")
            cpu = median(base, "cpu_us_per_request") / median(ours, "cpu_us_per_request")
            ok = throughput >= TARGET_THROUGHPUT_RATIO and p99 <= TARGET_P99_RATIO
            met = met and ok
            print(
                f"{connections:>3} connections, {name}/off (medians): throughput {throughput:.2f}x"
                f" (target >= {TARGET_THROUGHPUT_RATIO}x), p99 {p99:.2f}x (target <="
                f" {TARGET_P99_RATIO}x): {'met' if ok else 'NOT met'}; CPU per request"
                f" off/{name} {cpu:.2f}x"
            )
    return met


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--connections", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--rounds", type=int, default=2, help="servers take turns this often")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--wrk-threads", type=int, default=2)
    parser.add_argument("--unit-pool", type=int, default=0, help="0: every request a new unit")
    parser.add_argument("--redis-url", help="also measure rate-limit counters on this Redis")
    parser.add_argument("--admin-url", default=DEFAULT_ADMIN_URL)
    args = parser.parse_args(argv)
    if not 1 <= args.duration <= 120 or not 1 <= args.rounds <= 5:
        parser.error("--duration must be 1..120 s and --rounds 1..5")
    wrk = shutil.which("wrk")
    if wrk is None:
        print("access.py needs wrk (apt-get install -y wrk, or brew install wrk)", file=sys.stderr)
        return 2
    print(
        f"{os.cpu_count()} cores, {args.workers} gunicorn workers per server, wrk"
        f" {args.wrk_threads} threads, {args.duration:g} s measured after {args.warmup:g} s;"
        f" load average {load_average()}; code {code_version()}"
    )
    results: list[Result] = []
    with (
        bench_database(None, args.admin_url) as database_url,
        tempfile.TemporaryDirectory(prefix="abx-bench-access-") as scratch,
    ):
        scratch_dir = Path(scratch)
        script = write_wrk_script(scratch_dir / "assign.lua", WRK_SCRIPT)
        token = _key(database_url)
        base_env = {
            **os.environ,
            "ABX_DATABASE_URL": database_url,
            "ABX_EXPERIMENTS": str(ROOT / "experiments"),
            "ABX_BENCH_TOKEN": token,
            "ABX_BENCH_UNIT_POOL": str(args.unit_pool),
        }
        for name in ("ABX_API_KEY", "ABX_REDIS_URL", "ABX_AUTH"):
            base_env.pop(name, None)
        servers = {"off": {"ABX_AUTH": "off"}, "keys": {}}
        if args.redis_url:
            servers["redis"] = {"ABX_REDIS_URL": args.redis_url}
        command = [*abx_command(), "serve", "--no-migrate", "--workers", str(args.workers)]
        for round_index in range(args.rounds):
            for name, extra in servers.items():
                env = {**base_env, "ABX_DATA_DIR": str(scratch_dir / f"data-{name}"), **extra}
                with serving(name, command, env, scratch_dir, args.workers) as server:
                    for connections in args.connections:
                        run_env = {**env, "ABX_BENCH_RUN": f"{name}{round_index}c{connections}"}
                        wait_for_quiet()
                        run_wrk(wrk, script, server.url, connections, args.wrk_threads,
                                args.warmup, run_env)  # fmt: skip
                        before = cpu_seconds(server.pids)
                        run = run_wrk(wrk, script, server.url, connections, args.wrk_threads,
                                      args.duration, run_env)  # fmt: skip
                        cpu = cpu_seconds(server.pids) - before
                        result = Result(round_index + 1, name, connections,
                                        run.requests_per_second, run.p50_ms, run.p99_ms,
                                        run.errors, 1e6 * cpu / max(1, run.requests))  # fmt: skip
                        results.append(result)
                        print(f"  {name:<5} c={connections:<3} {run.requests_per_second:>7,.0f}"
                              f" req/s  p99 {run.p99_ms:.2f} ms  errors {run.errors}", flush=True)  # fmt: skip
    met = _report(results)
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
