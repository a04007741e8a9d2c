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
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from psycopg.conninfo import conninfo_to_dict, make_conninfo  # noqa: E402

from service.server import AbxServer  # noqa: E402
from service.settings import Settings, default_workers  # noqa: E402
from service.storage.migrations import apply_migrations  # noqa: E402

TARGET_THROUGHPUT_RATIO = 0.6
TARGET_P99_RATIO = 1.5
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# One Lua state per wrk thread: ``setup`` numbers the threads so unit ids never repeat
# across threads; ``done`` prints the summary as one JSON line for the script to read.
WRK_SCRIPT = r"""
local thread_count = 0
function setup(thread)
  thread:set("thread_id", thread_count)
  thread_count = thread_count + 1
end

local counter = 0
local countries = {"US", "CA", "GB", "DE", "FR", "BR"}
local versions = {"1.9.0", "2.0.0", "2.3.1", "3.0.0"}
local platforms = {"ios", "android", "web"}
local experiment = os.getenv("ABX_BENCH_EXPERIMENT") or "checkout_ranker"
local run_id = os.getenv("ABX_BENCH_RUN") or "run"
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

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"max_us":%d,"mean_us":%f,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


@dataclass(frozen=True)
class LoadResult:
    round: int
    server: str
    connections: int
    requests: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    errors: int
    wrk_cpu_seconds: float
    server_cpu_seconds: float
    database_cpu_seconds: float
    """PostgreSQL backends connected to the benchmark database (abx's pool)."""
    machine_busy_fraction: float

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds

    @property
    def wrk_cores(self) -> float:
        """Cores' worth of CPU the load generator used while it ran."""
        return self.wrk_cpu_seconds / self.seconds

    @property
    def server_cpu_us_per_request(self) -> float:
        return 1e6 * self.server_cpu_seconds / max(1, self.requests)

    @property
    def database_cpu_us_per_request(self) -> float:
        return 1e6 * self.database_cpu_seconds / max(1, self.requests)

    def other_cores(self, cores: int) -> float:
        """Busy cores not explained by wrk, gunicorn or the benchmark's backends."""
        accounted = self.wrk_cpu_seconds + self.server_cpu_seconds + self.database_cpu_seconds
        return max(0.0, self.machine_busy_fraction * cores - accounted / self.seconds)


def code_version() -> str:
    """The commit measured, marked when the working tree differs from it."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (commit or "unknown") + (" + uncommitted changes" if dirty else "")


# --- processes ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # Field 4 (ppid) follows the command name, which may hold spaces: split after ")".
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return sorted(found)


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU of live processes (all their threads), from /proc/<pid>/stat."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / CLOCK_TICKS


def machine_busy_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from the first line of /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # user..steal; guest time is already in user
    return total - idle, total


def wait_for_quiet(threshold: float = 0.15, max_wait: float = 20.0) -> float:
    """Wait (bounded) until the machine is nearly idle for a second; return the busy share seen.

    The servers are idle between runs, so anything busy now is someone else's work,
    which would take cores from the run about to start.
    """
    deadline = time.monotonic() + max_wait
    while True:
        busy_before, total_before = machine_busy_ticks()
        time.sleep(1.0)
        busy_after, total_after = machine_busy_ticks()
        busy = (busy_after - busy_before) / max(1, total_after - total_before)
        if busy <= threshold or time.monotonic() >= deadline:
            return busy


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Server:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def workers(self) -> list[int]:
        return children_of(self.process.pid)


def wait_until_serving(server: Server, experiment: str, timeout: float = 60.0) -> None:
    """Poll with a real assignment until the server answers 200, or fail with its log."""
    body = json.dumps({"experiment": experiment, "unit": "warm-0", "attributes": {}})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            break
        try:
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=2)
            conn.request("POST", "/v1/assign", body, {"Content-Type": "application/json"})
            status = conn.getresponse().status
            conn.close()
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    log = server.log_path.read_text(errors="replace")[-3000:]
    raise RuntimeError(f"{server.name} did not start serving on port {server.port}:\n{log}")


@contextmanager
def running_server(
    name: str, command: list[str], port: int, env: dict[str, str], log_dir: Path, experiment: str
) -> Iterator[Server]:
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)
    server = Server(name, port, process, log_path)
    try:
        wait_until_serving(server, experiment)
        # Every worker must be up before measuring: one request may have reached only one.
        expected = int(env.get("ABX_BENCH_WORKERS", "0"))
        deadline = time.monotonic() + 30
        while len(server.workers) < expected and time.monotonic() < deadline:
            time.sleep(0.2)
        yield server
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (gunicorn's graceful stop: abx flushes its buffers), SIGKILL if it hangs."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


# --- load -----------------------------------------------------------------------------


def run_wrk(
    wrk: str,
    script: Path,
    port: int,
    connections: int,
    threads: int,
    seconds: float,
    env: dict[str, str],
) -> tuple[dict[str, float], float]:
    """Run wrk once; return its summary and the CPU seconds it used (from wait4)."""
    command = [
        wrk,
        f"-t{min(threads, connections)}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "5s",
        "-s",
        str(script),
        f"http://127.0.0.1:{port}",
    ]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    # wrk stops itself after -d; the watchdog only guards against a hang.
    watchdog = threading.Timer(seconds + 30, process.kill)
    watchdog.start()
    try:
        assert process.stdout is not None
        output = process.stdout.read().decode(errors="replace")
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    finally:
        watchdog.cancel()
        process.stdout.close()  # type: ignore[union-attr]
    summary_line = next(
        (line for line in output.splitlines() if line.startswith("WRK_JSON ")), None
    )
    if process.returncode != 0 or summary_line is None:
        raise RuntimeError(f"wrk failed (exit {process.returncode}):\n{output}")
    return json.loads(summary_line.removeprefix("WRK_JSON ")), usage.ru_utime + usage.ru_stime


def backend_pids(database_url: str) -> list[int]:
    """PostgreSQL backends serving the benchmark database (abx's connection pools)."""
    database = conninfo_to_dict(database_url).get("dbname")
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (database,),
        ).fetchall()
    return [int(row[0]) for row in rows]


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
    busy = wait_for_quiet()
    if busy > 0.15:
        print(f"  (machine still {busy:.0%} busy with other work after waiting; measuring anyway)")
    if warmup > 0:
        run_wrk(wrk, script, server.port, connections, wrk_threads, warmup, env)
    pids = [server.process.pid, *server.workers]
    backends = backend_pids(database_url)
    server_cpu_before, database_cpu_before = cpu_seconds(pids), cpu_seconds(backends)
    busy_before, total_before = machine_busy_ticks()
    summary, wrk_cpu = run_wrk(wrk, script, server.port, connections, wrk_threads, duration, env)
    busy_after, total_after = machine_busy_ticks()
    server_cpu = cpu_seconds(pids) - server_cpu_before
    database_cpu = cpu_seconds(backends) - database_cpu_before
    errors = sum(int(summary[k]) for k in ("connect", "read", "write", "status", "timeout"))
    return LoadResult(
        round=round_index + 1,
        server=server.name,
        connections=connections,
        requests=int(summary["requests"]),
        seconds=summary["duration_us"] / 1e6,
        p50_ms=summary["p50_us"] / 1000,
        p90_ms=summary["p90_us"] / 1000,
        p99_ms=summary["p99_us"] / 1000,
        errors=errors,
        wrk_cpu_seconds=wrk_cpu,
        server_cpu_seconds=server_cpu,
        database_cpu_seconds=database_cpu,
        machine_busy_fraction=(busy_after - busy_before) / max(1, total_after - total_before),
    )


# --- database -------------------------------------------------------------------------


@contextmanager
def bench_database(database_url: str | None, admin_url: str) -> Iterator[str]:
    """Yield a migrated database: the given one, or a new one dropped afterwards."""
    if database_url is not None:
        yield database_url
        return
    name = f"abx_bench_{secrets.token_hex(4)}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = make_conninfo(admin_url, dbname=name)
    try:
        apply_migrations(url, Settings().migrations)
        yield url
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- report ---------------------------------------------------------------------------


def print_report(
    results: list[LoadResult], rss: dict[str, list[float]], cores: int, workers: int
) -> bool:
    """Print the tables and the verdicts; True when every target is met."""
    print()
    header = (
        f"{'round':>5} {'server':<6} {'conns':>5} {'req/s':>8} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} "
        f"{'errors':>6} | cores used: {'wrk':>5} {'gunicorn':>8} {'pg':>5} {'other':>5} "
        f"| CPU µs/req: {'gunicorn':>8} {'pg':>5}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.round:>5} {r.server:<6} {r.connections:>5} {r.requests_per_second:>8,.0f} {r.p50_ms:>7.2f} "
            f"{r.p90_ms:>7.2f} {r.p99_ms:>7.2f} {r.errors:>6} | {'':>11} {r.wrk_cores:>5.2f} "
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
        throughput = statistics.median(r.requests_per_second for r in ours) / statistics.median(
            r.requests_per_second for r in bare
        )
        p99 = statistics.median(r.p99_ms for r in ours) / statistics.median(r.p99_ms for r in bare)
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
    for name, sizes in rss.items():
        listed = ", ".join(f"{s:.1f}" for s in sizes[1:])
        print(
            f"VmRSS {name}: workers [{listed}] MiB (total {sum(sizes[1:]):.1f} MiB), "
            f"master {sizes[0]:.1f} MiB"
        )
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
        default="postgresql://postgres@127.0.0.1:5432/postgres",
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
        f"experiment {args.experiment}; load average {Path('/proc/loadavg').read_text().split()[0]}; "
        f"code {code_version()}"
    )

    results: list[LoadResult] = []
    rss: dict[str, list[float]] = {}
    with (
        bench_database(args.database_url, args.admin_url) as database_url,
        tempfile.TemporaryDirectory(prefix="abx-bench-") as scratch,
    ):
        scratch_dir = Path(scratch)
        script = scratch_dir / "assign.lua"
        script.write_text(WRK_SCRIPT)
        base_env = {
            **os.environ,
            "ABX_DATABASE_URL": database_url,
            "ABX_EXPERIMENTS": str(args.experiments.resolve()),
            "ABX_BENCH_WORKERS": str(workers),
            "ABX_BENCH_EXPERIMENT": args.experiment,
            "ABX_BENCH_UNIT_POOL": str(max(0, args.unit_pool)),
            "PYTHONUNBUFFERED": "1",
        }
        base_env.pop("ABX_API_KEY", None)  # the load has no key to send
        servers = {
            "bare": [sys.executable, str(ROOT / "benchmarks" / "bare_app.py")],
            "abx": [sys.executable, "-m", "service.cli", "serve", "--no-migrate"],
        }
        for round_index in range(args.rounds):
            for name, command in servers.items():
                port = free_port()
                full_command = [*command, "--bind", f"127.0.0.1:{port}", "--workers", str(workers)]
                with running_server(
                    name, full_command, port, base_env, scratch_dir, args.experiment
                ) as server:
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
                            f"  {name:<4} c={connections:<3} {result.requests_per_second:>7,.0f} "
                            f"req/s  p99 {result.p99_ms:.2f} ms",
                            flush=True,
                        )
                    rss[name] = [rss_mib(server.process.pid)] + [
                        rss_mib(pid) for pid in server.workers
                    ]
    print_report(results, rss, cores, workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
