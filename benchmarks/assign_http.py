"""Requests per second and latency of ``POST /v1/assign`` against a bare Flask endpoint.

Both servers run under the same gunicorn settings (``AbxServer``'s: gthread
workers, threads from ``ABX_THREADS``, keep-alive 5 s), each on a free port on
127.0.0.1, and ``wrk`` drives them with POST bodies whose unit id changes on
every request (a per-thread counter) and whose attributes cycle so that half
the requests pass ``checkout_ranker``'s targeting (40 % are exposed after its
0.8 coverage). By default every unit is new to abx, so each exposed request
buffers an assignment and an exposure row for PostgreSQL: the write-heavy case.
``--unit-pool N`` cycles through N unit ids per wrk thread instead, so that
after the warm-up returning units are answered from the in-process cache.

Per run: a warm-up, then ``--duration`` seconds measured. Reported: requests/s,
p50/p99 latency, errors, the CPU time taken by wrk (from ``wait4``), by the
gunicorn processes and by the whole machine (``/proc/stat``) over the run,
since the load generator shares the machine's cores with the servers and with
PostgreSQL, and each worker's resident memory (``VmRSS``) after the runs.

The script creates a database ``abx_bench_<random>`` (dropped at the end)
and migrates it, unless ``--database-url`` names one already migrated.

Needs ``wrk`` (Debian/Ubuntu: ``apt-get install -y wrk``; macOS: ``brew install wrk``).

Run: ``python benchmarks/assign_http.py [--duration S] [--connections 16 64]``.
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
    Server,
    WrkRun,
    abx_command,
    backend_pids,
    bench_database,
    code_version,
    cpu_seconds,
    load_average,
    machine_busy_ticks,
    print_header,
    print_rss,
    rss_mib,
    run_wrk,
    serving,
    wait_for_quiet,
    write_wrk_script,
)

from service.server import AbxServer
from service.settings import Settings, default_workers

TARGET_THROUGHPUT_RATIO = 0.6
TARGET_P99_RATIO = 1.5

# ``common.write_wrk_script`` adds the preamble (thread_id, counter, run_id) and the summary.
WRK_SCRIPT = r"""

local countries = {"US", "CA", "GB", "DE", "FR", "BR"}
local versions = {"1.9.0", "2.0.0", "2.3.1", "3.0.0"}
local platforms = {"ios", "android", "web"}
local experiment = os.getenv("ABX_BENCH_EXPERIMENT") or "checkout_ranker"
local unit_pool = tonumber(os.getenv("ABX_BENCH_UNIT_POOL") or "0")
local headers = {["Content-Type"] = "application/json"}

function request()
  counter = counter + 1
  local unit = counter
  if unit_pool > 0 then unit = counter % unit_pool end
  local body = string.format(
    '{"experiment":"%s","unit":"%s-%d-%d","attributes":{"country":"%s","app_version":"%s","platform":"%s"}}',
    experiment, run_id, thread_id, unit,
    countries[counter % #countries + 1], versions[counter % #versions + 1],
    platforms[counter % #platforms + 1])
  return wrk.format("POST", "/v1/assign", headers, body)
end
"""


@dataclass(frozen=True)
class LoadResult:
    round: int
    server: str
    connections: int
    wrk: WrkRun
    server_cpu_seconds: float
    database_cpu_seconds: float
    """PostgreSQL backends connected to the benchmark database (abx's pool)."""
    machine_busy_fraction: float

    @property
    def seconds(self) -> float:
        return self.wrk.seconds

    @property
    def wrk_cores(self) -> float:
        """Cores' worth of CPU the load generator used while it ran."""
        return self.wrk.cpu_seconds / self.seconds

    @property
    def server_cpu_us_per_request(self) -> float:
        return 1e6 * self.server_cpu_seconds / max(1, self.wrk.requests)

    @property
    def database_cpu_us_per_request(self) -> float:
        return 1e6 * self.database_cpu_seconds / max(1, self.wrk.requests)

    def other_cores(self, cores: int) -> float:
        """Busy cores not explained by wrk, gunicorn or the benchmark's backends."""
        accounted = self.wrk.cpu_seconds + self.server_cpu_seconds + self.database_cpu_seconds
        return max(0.0, self.machine_busy_fraction * cores - accounted / self.seconds)


# --- load -----------------------------------------------------------------------------


def measure(
    round_index: int,
    server: Server,
    database_url: str,
    wrk: str,
    script: Path,
    connections: int,
    wrk_threads: int,
    warmup: float,
    duration: float,
    env: dict[str, str],
) -> LoadResult:
    wait_for_quiet()
    if warmup > 0:
        run_wrk(wrk, script, server.url, connections, wrk_threads, warmup, env)
    pids = server.pids
    backends = backend_pids(database_url)
    server_cpu_before, database_cpu_before = cpu_seconds(pids), cpu_seconds(backends)
    busy_before, total_before = machine_busy_ticks()
    run = run_wrk(wrk, script, server.url, connections, wrk_threads, duration, env)
    busy_after, total_after = machine_busy_ticks()
    return LoadResult(
        round=round_index + 1,
        server=server.name,
        connections=connections,
        wrk=run,
        server_cpu_seconds=cpu_seconds(pids) - server_cpu_before,
        database_cpu_seconds=cpu_seconds(backends) - database_cpu_before,
        machine_busy_fraction=(busy_after - busy_before) / max(1, total_after - total_before),
    )


# --- report ---------------------------------------------------------------------------


def print_report(
    results: list[LoadResult], rss: dict[str, list[float]], cores: int, workers: int
) -> bool:
    """Print the tables and the verdicts; True when every target is met."""
    print_header(
        f"{'round':>5} {'server':<6} {'conns':>5} {'req/s':>8} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} "
        f"{'errors':>6} | cores used: {'wrk':>5} {'gunicorn':>8} {'pg':>5} {'other':>5} "
        f"| CPU µs/req: {'gunicorn':>8} {'pg':>5}"
    )
    for r in results:
        print(
            f"{r.round:>5} {r.server:<6} {r.connections:>5} {r.wrk.requests_per_second:>8,.0f} {r.wrk.p50_ms:>7.2f} "
            f"{r.wrk.p90_ms:>7.2f} {r.wrk.p99_ms:>7.2f} {r.wrk.errors:>6} | {'':>11} {r.wrk_cores:>5.2f} "
            f"{r.server_cpu_seconds / r.seconds:>8.2f} {r.database_cpu_seconds / r.seconds:>5.2f} "
            f"{r.other_cores(cores):>5.2f} | {'':>11} {r.server_cpu_us_per_request:>8,.0f} "
            f"{r.database_cpu_us_per_request:>5,.0f}"
        )
    print(
        f"(cores used: CPU seconds per second over the measured run, of {cores}; pg: the "
        "PostgreSQL backends of the benchmark database; other: the rest of the machine)"
    )
    print()
    met_all = True
    for connections in sorted({r.connections for r in results}):
        bare = [r for r in results if r.server == "bare" and r.connections == connections]
        ours = [r for r in results if r.server == "abx" and r.connections == connections]
        if not bare or not ours:
            continue
        throughput = statistics.median(r.wrk.requests_per_second for r in ours) / statistics.median(
            r.wrk.requests_per_second for r in bare
        )
        p99 = statistics.median(r.wrk.p99_ms for r in ours) / statistics.median(
            r.wrk.p99_ms for r in bare
        )
        # When the cores are saturated, throughput is inversely proportional to CPU per request;
        # this ratio barely moves when other work steals cores, unlike req/s and p99.
        cpu_ratio = statistics.median(
            r.server_cpu_us_per_request for r in bare
        ) / statistics.median(
            r.server_cpu_us_per_request + r.database_cpu_us_per_request for r in ours
        )
        ok_throughput = throughput >= TARGET_THROUGHPUT_RATIO
        ok_p99 = p99 <= TARGET_P99_RATIO
        met_all = met_all and ok_throughput and ok_p99
        print(
            f"{connections:>3} connections (medians over rounds): abx/bare throughput {throughput:.2f}x "
            f"(target >= {TARGET_THROUGHPUT_RATIO}x: {'met' if ok_throughput else 'NOT met'}), "
            f"p99 {p99:.2f}x (target <= {TARGET_P99_RATIO}x: {'met' if ok_p99 else 'NOT met'}); "
            f"CPU per request bare/(abx + its PostgreSQL) {cpu_ratio:.2f}x"
        )
    wrk_share = statistics.median(r.wrk_cores for r in results) / cores
    print(f"wrk took a median {wrk_share:.0%} of the machine's {cores} cores")
    other = statistics.median(r.other_cores(cores) for r in results)
    if other > 0.15 * cores:
        print(
            f"warning: other work used a median {other:.2f} of {cores} cores during the runs; "
            "req/s and latency are unreliable, prefer the CPU-per-request ratio or rerun"
        )
    print()
    print_rss(rss)
    return met_all


# --- main -----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds before")
    parser.add_argument("--connections", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--rounds", type=int, default=1, help="alternate bare/abx this often")
    parser.add_argument("--workers", type=int, default=None, help="default: as abx serve")
    parser.add_argument("--wrk-threads", type=int, default=2)
    parser.add_argument("--experiment", default="checkout_ranker")
    parser.add_argument(
        "--unit-pool",
        type=int,
        default=0,
        help="cycle through this many unit ids per wrk thread (0: every request a new unit)",
    )
    parser.add_argument("--experiments", type=Path, default=ROOT / "experiments")
    parser.add_argument("--database-url", help="an already migrated database to use")
    parser.add_argument(
        "--admin-url",
        default=DEFAULT_ADMIN_URL,
        help="where to create (and drop) the benchmark database",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.duration <= 300 or not 0 <= args.warmup <= 60 or not 1 <= args.rounds <= 5:
        parser.error("--duration must be 1..300 s, --warmup 0..60 s, --rounds 1..5")

    wrk = shutil.which("wrk")
    if wrk is None:
        print(
            "assign_http.py needs the wrk load generator, which is not on PATH.\n"
            "Install it with:  sudo apt-get update && sudo apt-get install -y wrk   "
            "(Debian/Ubuntu)\n"
            "             or:  brew install wrk   (macOS)",
            file=sys.stderr,
        )
        return 2

    workers = args.workers or default_workers()
    cores = os.cpu_count() or 1
    # The options both servers get, read from AbxServer itself rather than restated here.
    gunicorn = AbxServer(Settings(workers=workers)).cfg
    print(
        f"gunicorn: {gunicorn.worker_class_str}, {gunicorn.workers} workers x {gunicorn.threads} "
        f"threads, keepalive {gunicorn.keepalive} s; "
        f"{cores} cores; load generator: wrk, {args.wrk_threads} threads; "
        f"{args.duration:g} s measured after {args.warmup:g} s warm-up; "
        f"experiment {args.experiment}; load average {load_average()}; "
        f"code {code_version()}"
    )

    results: list[LoadResult] = []
    rss: dict[str, list[float]] = {}
    with (
        bench_database(args.database_url, args.admin_url) as database_url,
        tempfile.TemporaryDirectory(prefix="abx-bench-") as scratch,
    ):
        scratch_dir = Path(scratch)
        script = write_wrk_script(scratch_dir / "assign.lua", WRK_SCRIPT)
        base_env = {
            **os.environ,
            "ABX_DATABASE_URL": database_url,
            "ABX_EXPERIMENTS": str(args.experiments.resolve()),
            "ABX_BENCH_EXPERIMENT": args.experiment,
            "ABX_BENCH_UNIT_POOL": str(max(0, args.unit_pool)),
        }
        base_env.pop("ABX_API_KEY", None)
        base_env["ABX_AUTH"] = "off"  # bare Flask checks no key either; access.py measures auth
        servers = {
            "bare": [sys.executable, str(ROOT / "benchmarks" / "bare_app.py")],
            "abx": [*abx_command(), "serve", "--no-migrate"],
        }
        for round_index in range(args.rounds):
            for name, command in servers.items():
                full_command = [*command, "--workers", str(workers)]
                with serving(name, full_command, base_env, scratch_dir, workers) as server:
                    for connections in args.connections:
                        env = {**base_env, "ABX_BENCH_RUN": f"{name}{round_index}c{connections}"}
                        result = measure(
                            round_index,
                            server,
                            database_url,
                            wrk,
                            script,
                            connections,
                            args.wrk_threads,
                            args.warmup,
                            args.duration,
                            env,
                        )
                        results.append(result)
                        print(
                            f"  {name:<4} c={connections:<3} {result.wrk.requests_per_second:>7,.0f} "
                            f"req/s  p99 {result.wrk.p99_ms:.2f} ms",
                            flush=True,
                        )
                    rss[name] = [rss_mib(pid) for pid in server.pids]
    print_report(results, rss, cores, workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
