"""What the benchmark scripts share: paths, the code measured, processes and the machine's
load read from ``/proc``, a scratch database, ``abx serve`` on a free port, ``wrk`` and the
rollup loop.

The scripts run as ``python benchmarks/<script>.py``, which puts ``benchmarks/`` (and so this
module) on ``sys.path`` but not the repository root; importing this module puts the root there
too, for ``service.*``, ``analysis.*`` and ``dashboards.*``. A script imports its shared
helpers from here only, never from another script.

Only the standard library is imported at module level: ``gpu_check.py`` imports this module
on a bare GPU machine with nothing but onnxruntime and numpy. psycopg and ``service.*`` are
imported inside the functions that need them.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
"""The repository root."""
sys.path.insert(0, str(ROOT))

DEFAULT_ADMIN_URL = os.environ.get(
    "ABX_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
"""Where scratch databases are created and dropped: the tests' PostgreSQL when set."""
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

T = TypeVar("T")


# --- what is measured ----------------------------------------------------------------------


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=10
    ).stdout.strip()


def code_version() -> str:
    """The commit measured, marked when the working tree differs from it."""
    try:
        commit = _git("rev-parse", "--short", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (commit or "unknown") + (" + uncommitted changes" if dirty else "")


def load_average() -> str:
    """The 1-minute load average, as ``/proc/loadavg`` writes it."""
    return Path("/proc/loadavg").read_text().split()[0]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank; NaN when empty."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else math.nan


def timed(action: Callable[[], T], repeats: int) -> tuple[list[float], T]:
    """Milliseconds of each of ``repeats`` calls of ``action``, and the last call's result."""
    times: list[float] = []
    result = None
    for _ in range(max(1, repeats)):
        started = time.perf_counter()
        result = action()
        times.append(1000 * (time.perf_counter() - started))
    return times, result  # type: ignore[return-value]


# --- processes (Linux /proc) ------------------------------------------------------------


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (another program may take it before it is used)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def children_of(pid: int) -> list[int]:
    """The direct children of ``pid`` (gunicorn's workers, Celery's prefork children)."""
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


def _status_mib(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` now (VmRSS), MiB."""
    return _status_mib(pid, "VmRSS")


def peak_rss_mib(pid: int) -> float:
    """The most resident memory ``pid`` has had (VmHWM), MiB."""
    return _status_mib(pid, "VmHWM")


def print_header(header: str) -> None:
    """A table's header after a blank line, ruled underneath."""
    print()
    print(header)
    print("-" * len(header))


def print_rss(rss: Mapping[str, Sequence[float]]) -> None:
    """One line per server: VmRSS of its workers and master (master first in each list)."""
    for name, sizes in rss.items():
        listed = ", ".join(f"{s:.0f}" for s in sizes[1:])
        print(
            f"VmRSS {name}: workers [{listed}] MiB (total {sum(sizes[1:]):.0f} MiB), "
            f"master {sizes[0]:.0f} MiB"
        )


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (gunicorn's graceful stop: abx flushes its buffers), SIGKILL if it hangs."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


# --- the machine's other work ------------------------------------------------------------


def machine_busy_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from the first line of /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # user..steal; guest time is already in user
    return total - idle, total


def wait_for_quiet(threshold: float = 0.15, max_wait: float = 20.0) -> float:
    """Wait (bounded) until the machine is nearly idle for a second; return the busy share seen.

    The servers are idle between runs, so anything busy now is someone else's work, which
    would take cores from the run about to start. Says so when it stayed busy.
    """
    deadline = time.monotonic() + max_wait
    while True:
        busy_before, total_before = machine_busy_ticks()
        time.sleep(1.0)
        busy_after, total_after = machine_busy_ticks()
        busy = (busy_after - busy_before) / max(1, total_after - total_before)
        if busy <= threshold:
            return busy
        if time.monotonic() >= deadline:
            print(
                f"  (machine still {busy:.0%} busy with other work after waiting; measuring anyway)"
            )
            return busy


# --- databases ------------------------------------------------------------------------------


@contextmanager
def bench_database(database_url: str | None, admin_url: str = DEFAULT_ADMIN_URL) -> Iterator[str]:
    """Yield a migrated database: ``database_url`` as given, or a new ``abx_bench_<random>``
    created through ``admin_url``, migrated, and dropped afterwards."""
    if database_url is not None:
        yield database_url
        return
    import psycopg

    from service.settings import Settings
    from service.storage.migrations import apply_migrations

    name = f"abx_bench_{secrets.token_hex(4)}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = psycopg.conninfo.make_conninfo(admin_url, dbname=name)
    try:
        apply_migrations(url, Settings().migrations)
        yield url
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def backend_pids(database_url: str) -> list[int]:
    """PostgreSQL backends serving the benchmark database (abx's connection pools)."""
    import psycopg

    database = psycopg.conninfo.conninfo_to_dict(database_url).get("dbname")
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (database,),
        ).fetchall()
    return [int(row[0]) for row in rows]


@dataclass(frozen=True)
class Rollup:
    events: int
    exposures: int
    seconds: float
    rounds_ms: list[float]
    complete: bool
    client_cpu_seconds: float
    database_cpu_seconds: float

    @property
    def events_per_second(self) -> float:
        return self.events / max(1e-9, self.seconds)

    @property
    def cpu_us_per_event(self) -> float:
        return 1e6 * (self.client_cpu_seconds + self.database_cpu_seconds) / max(1, self.events)


def roll_up(
    url: str,
    windows: Callable[[str], timedelta],
    grace: timedelta,
    expected_events: int,
    timeout: float,
    segment_specs: Callable[[str], Any] | None = None,
    **configuration: Any,
) -> Rollup:
    """``roll_up_once`` from one connection until idle or ``timeout`` seconds, every round timed.

    ``configuration``: ``roll_up_once``'s other keywords (``metric_windows``, ``ratio_pairs``,
    ``bandits``)."""
    import psycopg

    from service.events.rollup import EVENT_CHUNK, EXPOSURE_CHUNK, roll_up_once

    events = exposures = 0
    rounds_ms: list[float] = []
    complete = False
    with psycopg.connect(url, autocommit=True) as conn:
        backend = [conn.info.backend_pid]
        client_before, database_before = time.process_time(), cpu_seconds(backend)
        started = time.perf_counter()
        for _ in range(expected_events // EVENT_CHUNK + expected_events // EXPOSURE_CHUNK + 50):
            round_started = time.perf_counter()
            done = roll_up_once(conn, windows, grace, segment_specs=segment_specs, **configuration)
            if done is None:
                time.sleep(0.1)  # another process holds the rollup lock
                continue
            rounds_ms.append(1000 * (time.perf_counter() - round_started))
            exposures, events = exposures + done[0], events + done[1]
            if len(rounds_ms) % 20 == 0:
                elapsed = time.perf_counter() - started
                print(
                    f"  rolled up {events:,} events in {elapsed:.0f} s ({events / elapsed:,.0f}/s)",
                    flush=True,
                )
            if done[0] < EXPOSURE_CHUNK and done[1] < EVENT_CHUNK:
                complete = True
                break
            if time.perf_counter() - started > timeout:
                break
        return Rollup(
            events=events,
            exposures=exposures,
            seconds=time.perf_counter() - started,
            rounds_ms=rounds_ms,
            complete=complete,
            client_cpu_seconds=time.process_time() - client_before,
            database_cpu_seconds=cpu_seconds(backend) - database_before,
        )


# --- servers --------------------------------------------------------------------------------


def abx_command() -> list[str]:
    """The ``abx`` command of this interpreter's environment (``python -m service.cli`` without
    an installed entry point)."""
    abx = Path(sys.executable).with_name("abx")
    return [str(abx)] if abx.exists() else [sys.executable, "-m", "service.cli"]


@dataclass
class Server:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def workers(self) -> list[int]:
        return children_of(self.process.pid)

    @property
    def pids(self) -> list[int]:
        """Master first, then the workers."""
        return [self.process.pid, *self.workers]


def _answers(port: int, path: str) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", path)
        ok = conn.getresponse().status == 200
        conn.close()
        return ok
    except OSError:
        return False


def _start(
    name: str,
    command: Sequence[str],
    env: Mapping[str, str],
    log_dir: Path,
    workers: int,
    ready_path: str,
    timeout: float,
) -> Server:
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*command, "--bind", f"127.0.0.1:{port}"],
            cwd=ROOT,
            # Servers side by side need metrics binds of their own (unless the caller sets one).
            env={"ABX_METRICS_BIND": f"127.0.0.1:{free_port()}", **env, "PYTHONUNBUFFERED": "1"},
            stdout=log,
            stderr=log,
        )
    server = Server(name, port, process, log_path)
    deadline = time.monotonic() + timeout
    answered = 0
    # Several answers in a row, and every worker started: one answer may come from one worker.
    while answered < 10 or len(server.workers) < workers:
        if process.poll() is not None or time.monotonic() > deadline:
            stop(process)
            # A server without its database logs mostly the pool's warnings: leave them out.
            lines = log_path.read_text(errors="replace").splitlines()
            kept = [
                line for line in lines if "psycopg.pool" not in line and "Is the server" not in line
            ]
            raise RuntimeError(f"{name} did not start on port {port}:\n" + "\n".join(kept[-40:]))
        answered = answered + 1 if _answers(port, ready_path) else 0
        time.sleep(0.1)
    return server


@contextmanager
def serving(
    name: str,
    command: Sequence[str],
    env: Mapping[str, str],
    log_dir: Path,
    workers: int,
    ready_path: str = "/healthz",
    timeout: float = 90.0,
) -> Iterator[Server]:
    """Run ``command --bind 127.0.0.1:<free port>`` (``abx serve`` or ``bare_app.py``) until the
    block ends: yielded once ``ready_path`` answers 200 and ``workers`` workers are up, stopped
    with SIGTERM afterwards. Its output goes to a log in ``log_dir``, quoted if it fails to
    start; a second try takes another port (another program may take the free port first)."""
    try:
        server = _start(name, command, env, log_dir, workers, ready_path, timeout)
    except RuntimeError as error:
        print(f"  {error}\n  (trying once more on another port)", flush=True)
        server = _start(name, command, env, log_dir, workers, ready_path, timeout)
    try:
        yield server
    finally:
        stop(server.process)


# --- wrk --------------------------------------------------------------------------------------

# Appended to every wrk script: prints the summary as one JSON line for ``run_wrk`` to read.
WRK_DONE = r"""
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
class WrkRun:
    requests: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    errors: int
    """Socket errors, timeouts and HTTP statuses >= 400."""
    http_errors: int
    """HTTP statuses >= 400 alone."""
    cpu_seconds: float
    """CPU time of wrk itself (from wait4)."""

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds


WRK_PREAMBLE = r"""
-- One Lua state per wrk thread: setup numbers the threads, so a script that puts thread_id
-- in its unit ids never repeats one across threads; counter counts this thread's requests.
local thread_count = 0
function setup(thread)
  thread:set("thread_id", thread_count)
  thread_count = thread_count + 1
end
local counter = 0
local run_id = os.getenv("ABX_BENCH_RUN") or "run"
"""


def write_wrk_script(path: Path, request_lua: str) -> Path:
    """A wrk script: the shared preamble (``setup``, ``thread_id``, ``counter``, ``run_id``),
    ``request_lua`` (``request``...) and the summary ``done``."""
    path.write_text(WRK_PREAMBLE + request_lua + WRK_DONE)
    return path


def run_wrk(
    wrk: str,
    script: Path,
    url: str,
    connections: int,
    threads: int,
    seconds: float,
    env: Mapping[str, str] | None = None,
) -> WrkRun:
    """Run wrk once with a script from ``write_wrk_script``."""
    command = [
        wrk,
        f"-t{min(threads, connections)}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "5s",
        "-s",
        str(script),
        url,
    ]
    process = subprocess.Popen(
        command,
        env=dict(env) if env is not None else None,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
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
    summary: dict[str, Any] = json.loads(summary_line.removeprefix("WRK_JSON "))
    return WrkRun(
        requests=int(summary["requests"]),
        seconds=summary["duration_us"] / 1e6,
        p50_ms=summary["p50_us"] / 1000,
        p90_ms=summary["p90_us"] / 1000,
        p99_ms=summary["p99_us"] / 1000,
        errors=sum(int(summary[k]) for k in ("connect", "read", "write", "status", "timeout")),
        http_errors=int(summary["status"]),
        cpu_seconds=usage.ru_utime + usage.ru_stime,
    )


def wilson(successes: int, trials: int, digits: int = 3) -> str:
    """``rate [low, high]`` with the 95 % Wilson score interval (``n/a`` for no trials)."""
    if trials == 0:
        return "n/a"
    z, rate = 1.959963984540054, successes / trials
    centre = (rate + z * z / (2 * trials)) / (1 + z * z / trials)
    half = (
        z * math.sqrt(rate * (1 - rate) / trials + z * z / (4 * trials**2)) / (1 + z * z / trials)
    )
    low, high = max(0.0, centre - half), min(1.0, centre + half)
    return f"{rate:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"
