"""One beat cycle (``analyze_and_decide`` for every running experiment) on 1M and 10M events.

Setup. ``--experiments`` (default 100) YAML files are written to a temporary
folder and checked with ``abx validate``: 3 variants weighted 0.5/0.25/0.25,
5 metrics each (primary ``conversion``, binary; secondary ``revenue``,
continuous, and ``sessions``, count; guardrails ``latency_ms``, continuous,
relative margin 10 %, and ``error_rate``, binary, absolute margin 0.005), a
policy that may act at once (``min_runtime_hours: 0``, ``min_units: 100``) and
never reaches its horizon (``planned_units`` 1,000,000, ``horizon_days: null``).
Nine in ten use mSPRT, the rest confidence sequences or group-sequential
boundaries. Every fourth experiment's first treatment converts better (+4
points) and every tenth's second treatment is 20 % slower, so the cycle also
promotes and rolls back; the rest are A/A.

Data. One exposed unit per 10 events (units spread over the experiments,
first exposures over ``--days`` days), events spread over the units, the 5
metrics in turn, 90 % within a unit's one-week outcome window after its
exposure and 10 % in the week before it (the CUPED covariate). Exposures and
outcomes (with their ``event_ids`` rows) are generated server-side
(``INSERT … SELECT generate_series``: nothing crosses the socket, faster than
COPY from Python), 1M events per statement. The smaller size (``--small-events``,
default 1M) is loaded first; the larger one adds its units and events to it.
``service.events.rollup.roll_up_once`` then runs until idle (bounded by
``--rollup-timeout``) and is timed: events/s, since the cycle reads only what
the rollup wrote (``metric_stats``, ``exposure_counts``).

Cycle. At each size the decision tables are emptied, the rollup tables are
vacuumed (as autovacuum would have), and a fresh child process (this script
with ``--child``) runs ``service.decisions.cycle.analyze_and_decide`` for every
experiment, sequentially on one connection, ``--cycles`` times; it reports
every cycle's time, the slowest experiments, the decisions taken, and its
VmRSS before and after (VmHWM: the peak). The first cycle creates the
experiments' states and takes the decisions; the later ones are the steady
state of a beat every ``ABX_ANALYSIS_INTERVAL_SECONDS``. One cycle is also run
before the VACUUM, on the tables as the rollup left them. ``--profile`` adds a
cycle under cProfile in the child and prints where its time goes.

Worker (unless ``--no-worker``, or Redis is not reachable at ``--broker-url``):
``abx worker --concurrency 2`` consuming a queue of its own
(``ABX_QUEUE=abx-bench-<random>``); ``abx.analyze_experiment`` is enqueued for
every experiment and the cycle lasts until as many new ``analysis_runs`` rows
exist. One untimed cycle warms the worker up (imports, YAML, pools), then
``--worker-cycles`` are timed. Each task also runs the rollup once first (the
task's own code: nothing left to do here).

Segments (``--segment-attributes``, default 2, of ``--segment-values``, default 10, values
each): every experiment declares ``segments`` with that cap, and each exposed unit has its
recorded attributes (``exposure_attributes``, generated server-side as the exposures, values
spread independently of the arm), so the rollup also fills ``segment_exposure_counts`` and
``segment_metric_stats`` and every analysis reads them and compares every segment. The same
cycles are then run again on copies of the YAML files without ``segments`` (the same data):
the ratio is what segments cost the cycle. ``--segment-attributes 0`` measures without.

The database is ``abx_bench_<random>``, created, migrated and dropped here.

Run: ``python benchmarks/analysis_cycle.py [--events N] [--experiments 100]``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
from common import (
    DEFAULT_ADMIN_URL,
    ROOT,
    Rollup,
    abx_command,
    bench_database,
    children_of,
    code_version,
    cpu_seconds,
    free_port,
    load_average,
    peak_rss_mib,
    print_header,
    roll_up,
    rss_mib,
    stop,
    wait_for_quiet,
)

from service.events.rollup import EVENT_CHUNK, roll_up_once, windows_from
from service.events.segments import segment_specs_from
from service.experiments.schema import Experiment
from service.experiments.validation import load_experiments
from service.settings import Settings

TARGET_CYCLE_SECONDS = 5.0
EVENTS_PER_UNIT = 10
LOAD_CHUNK = 1_000_000
ARMS = ("control", "control", "treatment_a", "treatment_b")  # weights 0.5 / 0.25 / 0.25
METRICS = ("conversion", "revenue", "sessions", "latency_ms", "error_rate")
WINDOW_DAYS = 7  # the default outcome_window_hours (168)
DECISION_TABLES = "experiment_state, decisions, analysis_runs, webhook_deliveries"
ROLLUP_TABLES = "metric_stats, exposure_counts, segment_metric_stats, segment_exposure_counts"
WORKER_CYCLE_TIMEOUT = 300.0


def experiment_key(index: int) -> str:
    return f"cycle_{index:04d}"


def segments_yaml(attributes: int, values: int) -> str:
    if attributes == 0:
        return ""
    items = ", ".join(f"{{attribute: attr{i}, max_values: {values}}}" for i in range(attributes))
    return f"segments: [{items}]\n"


def experiment_yaml(index: int, segments: str = "") -> str:
    method = {8: "confidence_sequence", 9: "group_sequential"}.get(index % 10, "msprt")
    return f"""\
# Written by benchmarks/analysis_cycle.py.
key: {experiment_key(index)}
description: Benchmark experiment {index} of analysis_cycle.py.
owner: bench@example.com
status: running
control: control
variants:
  - {{key: control, weight: 0.5}}
  - {{key: treatment_a, weight: 0.25}}
  - {{key: treatment_b, weight: 0.25}}
metrics:
  primary: {{name: conversion, type: binary, direction: increase}}
  secondary:
    - {{name: revenue, type: continuous, direction: increase}}
    - {{name: sessions, type: count, direction: increase}}
  guardrails:
    - {{name: latency_ms, type: continuous, direction: decrease, margin: 0.10}}
    - {{name: error_rate, type: binary, direction: decrease, margin: 0.005, margin_type: absolute}}
policy:
  method: {method}
  min_units: 100
  min_runtime_hours: 0
  planned_units: 1000000
  horizon_days: null
{segments}"""


def write_experiments(folder: Path, count: int, segments: str = "") -> list[Experiment]:
    """Write the YAML files, check them with ``abx validate``, and load them."""
    for index in range(count):
        (folder / f"{experiment_key(index)}.yaml").write_text(experiment_yaml(index, segments))
    checked = subprocess.run(
        [*abx_command(), "validate", str(folder)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    print(f"  abx validate: {(checked.stdout + checked.stderr).strip()}", flush=True)
    if checked.returncode != 0:
        raise SystemExit("the generated experiment files are invalid")
    loaded = load_experiments([folder])
    return [item.experiment for item in loaded.experiments]


# --- data -----------------------------------------------------------------------------

# Unit u belongs to experiment u % X, arm (u / X) % 4 (control twice: weights 0.5/0.25/0.25)
# and was first exposed at start + (u * 7919 mod days) seconds; the outcome SQL recomputes
# the same from u, so no lookup is needed.
EXPOSURES_SQL = """
INSERT INTO exposures (experiment_key, seed, unit_id, variant_key, first_exposed_at)
SELECT (%(keys)s::text[])[1 + u %% %(x)s], (%(seeds)s::text[])[1 + u %% %(x)s], 'u-' || u,
       (%(arms)s::text[])[1 + (u / %(x)s) %% 4],
       %(start)s::timestamptz + ((u * 7919) %% %(span)s) * interval '1 second'
FROM generate_series(%(low)s::bigint, %(high)s::bigint) AS u
"""


# Unit u's attribute i is value (q / V^i) mod V with q = (u / X) / 4: independent of its
# experiment (u mod X) and its arm ((u / X) mod 4), so every segment sees the configured split.
def exposure_attributes_sql(attributes: int, values: int) -> str:
    pairs = ", ".join(
        f"'attr{i}', 'v' || ((q / {values**i}) %% {values})" for i in range(attributes)
    )
    return f"""
INSERT INTO exposure_attributes (experiment_key, seed, unit_id, attributes, exposed_at)
SELECT (%(keys)s::text[])[1 + u %% %(x)s], (%(seeds)s::text[])[1 + u %% %(x)s], 'u-' || u,
       jsonb_build_object({pairs}),
       %(start)s::timestamptz + ((u * 7919) %% %(span)s) * interval '1 second'
FROM (SELECT u, (u / %(x)s) / 4 AS q
      FROM generate_series(%(low)s::bigint, %(high)s::bigint) AS u) AS s
"""


# Event g goes to unit (g * 2654435761) mod units and metric (g / X) mod 5: not g mod 5, which
# would tie each experiment to one metric whenever X divides the number of units.
OUTCOMES_SQL = """
WITH inserted AS (
    INSERT INTO outcomes (experiment_key, seed, event_id, unit_id, metric, aggregation, value,
                          occurred_at, received_at)
    SELECT (%(keys)s::text[])[1 + u %% %(x)s], (%(seeds)s::text[])[1 + u %% %(x)s],
           'e-' || g, 'u-' || u, (%(metrics)s::text[])[1 + m],
           CASE WHEN m IN (0, 4) THEN 'max' ELSE 'sum' END,
           CASE m
               WHEN 0 THEN (random() < 0.10 + CASE WHEN arm = 2 AND u %% %(x)s %% 4 = 0
                                                   THEN 0.04 ELSE 0 END)::int
               WHEN 1 THEN round((-ln(1 - random()) * 20)::numeric, 2)
               WHEN 2 THEN floor(-ln(1 - random()) * 3)
               WHEN 3 THEN round(((80 + 40 * random())
                                  * CASE WHEN arm = 3 AND u %% %(x)s %% 10 = 1
                                         THEN 1.2 ELSE 1 END)::numeric, 1)
               ELSE (random() < 0.02)::int
           END,
           %(start)s::timestamptz + ((u * 7919) %% %(span)s) * interval '1 second'
               + (random() * 1.1 - 0.1) * %(window)s::interval,
           now()
    FROM (SELECT g, u, (u / %(x)s) %% 4 AS arm, (g / %(x)s) %% 5 AS m
          FROM (SELECT g, (g * 2654435761) %% %(units)s AS u
                FROM generate_series(%(low)s::bigint, %(high)s::bigint) AS g) AS e) AS s
    RETURNING experiment_key, event_id
)
INSERT INTO event_ids (experiment_key, event_id) SELECT experiment_key, event_id FROM inserted
"""


@dataclass(frozen=True)
class Dataset:
    experiments: list[Experiment]
    start: datetime
    days: int
    segment_attributes: int = 0
    segment_values: int = 10

    def params(self) -> dict[str, Any]:
        return {
            "keys": [e.key for e in self.experiments],
            "seeds": [e.seed for e in self.experiments],
            "x": len(self.experiments),
            "arms": list(ARMS),
            "metrics": list(METRICS),
            "start": self.start,
            "span": self.days * 86400,
            "window": timedelta(days=WINDOW_DAYS),
        }


def load(url: str, data: Dataset, units: tuple[int, int], events: tuple[int, int]) -> float:
    """Add units [units[0], units[1]) and events [events[0], events[1]); return seconds."""
    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT setseed(0.42)")
        conn.execute(
            EXPOSURES_SQL, {**data.params(), "low": units[0], "high": units[1] - 1}
        )  # fmt: skip
        if data.segment_attributes:
            conn.execute(
                exposure_attributes_sql(data.segment_attributes, data.segment_values),
                {**data.params(), "low": units[0], "high": units[1] - 1},
            )  # fmt: skip
        for low in range(events[0], events[1], LOAD_CHUNK):
            high = min(events[1], low + LOAD_CHUNK) - 1
            chunk_started = time.perf_counter()
            conn.execute(
                OUTCOMES_SQL, {**data.params(), "units": units[1], "low": low, "high": high}
            )
            print(
                f"  loaded events up to {high + 1:,} "
                f"({time.perf_counter() - chunk_started:.1f} s for the last {high + 1 - low:,})",
                flush=True,
            )
        conn.execute("VACUUM ANALYZE exposures, exposure_attributes, outcomes, event_ids")
    return time.perf_counter() - started


def execute(url: str, *statements: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def scalars(url: str, sql: str) -> tuple[Any, ...]:
    with psycopg.connect(url, autocommit=True) as conn:
        return tuple(conn.execute(sql).fetchone() or ())


# --- the cycle, in a child process -------------------------------------------------------


def child_main(url: str, folder: Path, cycles: int, profile: bool) -> int:
    """Run ``cycles`` cycles; print one ``CYCLE_JSON`` line (and a profile when asked)."""
    from service.decisions.cycle import analyze_and_decide

    experiments = [
        item.experiment
        for item in load_experiments([folder]).experiments
        if item.experiment.status == "running"
    ]
    report: dict[str, Any] = {
        "cycles": [],
        "cpu": [],
        "backend_cpu": [],
        "decisions": [],
        "slowest_ms": [],
    }
    failed: dict[str, str] = {}
    with psycopg.connect(url, autocommit=True) as conn:  # autocommit, as the worker's pool
        conn.execute("SELECT 1")
        backend = [conn.info.backend_pid]
        report["rss_before_mib"] = rss_mib(os.getpid())
        for _ in range(cycles):
            per_experiment: list[tuple[float, str]] = []
            decisions: Counter[str] = Counter()
            cpu_before, backend_before = time.process_time(), cpu_seconds(backend)
            started = time.perf_counter()
            for experiment in experiments:
                one_started = time.perf_counter()
                try:
                    kind = analyze_and_decide(conn, experiment).decision.kind
                except Exception as error:  # as in a worker: this task fails, the others run
                    kind = f"error ({type(error).__name__})"
                    message = " ".join(str(error).splitlines()[:2])  # the message and DETAIL
                    failed[experiment.key] = f"{type(error).__name__}: {message}"
                per_experiment.append((time.perf_counter() - one_started, experiment.key))
                decisions[kind] += 1
            report["cycles"].append(time.perf_counter() - started)
            report["cpu"].append(time.process_time() - cpu_before)
            report["backend_cpu"].append(cpu_seconds(backend) - backend_before)
            report["decisions"].append(dict(decisions))
            times = sorted(seconds for seconds, _ in per_experiment)
            report["median_ms"] = 1000 * statistics.median(times)
            report["slowest_ms"] = [(1000 * s, key) for s, key in sorted(per_experiment)[-3:]]
        # What every abx.analyze_experiment task does first (analyze_now): a rollup round,
        # here with nothing left to do.
        windows = windows_from({e.key: e for e in experiments})
        specs = segment_specs_from({e.key: e for e in experiments})
        grace = timedelta(seconds=Settings().attribution_grace_seconds)
        idle_ms = []
        for _ in range(5):
            idle_started = time.perf_counter()
            roll_up_once(conn, windows, grace, segment_specs=specs)
            idle_ms.append(1000 * (time.perf_counter() - idle_started))
        report["idle_rollup_ms"] = statistics.median(idle_ms)
        report["failed"] = failed
        report["rss_after_mib"] = rss_mib(os.getpid())
        report["hwm_mib"] = peak_rss_mib(os.getpid())
        if profile:
            profiler = cProfile.Profile()
            profiler.enable()
            for experiment in experiments:
                if experiment.key not in failed:
                    analyze_and_decide(conn, experiment)
            profiler.disable()
            text = io.StringIO()
            stats = pstats.Stats(profiler, stream=text).strip_dirs()
            stats.sort_stats("cumulative").print_stats(30)
            stats.sort_stats("tottime").print_stats(15)
            print(text.getvalue())
    print("CYCLE_JSON " + json.dumps(report), flush=True)
    return 0


@dataclass(frozen=True)
class Cycles:
    seconds: list[float]
    cpu_seconds: list[float]
    """CPU of the cycle process per cycle (Python: psycopg, the analysis, the rules)."""
    backend_cpu_seconds: list[float]
    """CPU of its PostgreSQL backend per cycle (the queries)."""
    decisions: list[dict[str, int]]
    median_ms: float
    slowest_ms: list[tuple[float, str]]
    rss_before_mib: float
    rss_after_mib: float
    hwm_mib: float
    failed: dict[str, str]
    """Experiments whose analysis raised, with the error."""
    idle_rollup_ms: float
    """One ``roll_up_once`` with nothing to do, as each worker task runs before analysing."""

    @property
    def steady(self) -> list[float]:
        """The cycles after the first (which creates the states and takes the decisions)."""
        return self.seconds[1:] or self.seconds

    @property
    def steady_cpu(self) -> list[float]:
        return self.cpu_seconds[1:] or self.cpu_seconds

    @property
    def steady_backend_cpu(self) -> list[float]:
        return self.backend_cpu_seconds[1:] or self.backend_cpu_seconds


def run_cycles(
    url: str, folder: Path, cycles: int, profile: bool = False, quiet: bool = True
) -> Cycles:
    if quiet:
        wait_for_quiet()
    command = [sys.executable, __file__, "--child", url, str(folder), str(cycles)]
    if profile:
        command.append("--profile")
    result = subprocess.run(command, capture_output=True, text=True, timeout=1800, cwd=ROOT)
    lines = result.stdout.splitlines()
    for line in lines:
        if not line.startswith("CYCLE_JSON "):
            print("    " + line)
    found = [line for line in lines if line.startswith("CYCLE_JSON ")]
    if result.returncode != 0 or not found:
        raise RuntimeError(
            f"the cycle child failed ({result.returncode}):\n{result.stderr[-3000:]}"
        )
    report = json.loads(found[-1].removeprefix("CYCLE_JSON "))
    return Cycles(
        seconds=report["cycles"],
        cpu_seconds=report["cpu"],
        backend_cpu_seconds=report["backend_cpu"],
        decisions=report["decisions"],
        median_ms=report["median_ms"],
        slowest_ms=[(ms, key) for ms, key in report["slowest_ms"]],
        rss_before_mib=report["rss_before_mib"],
        rss_after_mib=report["rss_after_mib"],
        hwm_mib=report["hwm_mib"],
        failed=report["failed"],
        idle_rollup_ms=report["idle_rollup_ms"],
    )


# --- the cycle through a real worker ---------------------------------------------------


@dataclass(frozen=True)
class WorkerCycles:
    warmup_seconds: float
    seconds: list[float]
    rss_mib: list[float]
    """Master first, then the prefork children."""


def redis_reachable(broker_url: str) -> bool:
    parts = urlsplit(broker_url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), 2):
            return True
    except OSError:
        return False


def analysis_runs(conn: psycopg.Connection[Any]) -> int:
    (count,) = conn.execute("SELECT count(*) FROM analysis_runs").fetchone() or (0,)
    return int(count)


def worker_cycle(
    client: Any, conn: psycopg.Connection[Any], keys: Sequence[str], queue: str, worker: Any
) -> float:
    """Enqueue one task per experiment; seconds until as many new analysis_runs rows exist."""
    target = analysis_runs(conn) + len(keys)
    started = time.perf_counter()
    for key in keys:
        client.send_task("abx.analyze_experiment", args=[key], queue=queue)
    while analysis_runs(conn) < target:
        if worker.poll() is not None:
            raise RuntimeError("the worker exited")
        if time.perf_counter() - started > WORKER_CYCLE_TIMEOUT:
            raise RuntimeError(f"no {len(keys)} analyses within {WORKER_CYCLE_TIMEOUT:g} s")
        time.sleep(0.005)
    return time.perf_counter() - started


def run_worker_cycles(
    url: str, folder: Path, keys: Sequence[str], cycles: int, broker_url: str, scratch: Path
) -> WorkerCycles:
    from celery import Celery

    queue = f"abx-bench-{secrets.token_hex(4)}"
    env = {
        **os.environ,
        "ABX_DATABASE_URL": url,
        "ABX_EXPERIMENTS": str(folder),
        "ABX_DATA_DIR": str(scratch / "worker-data"),
        "ABX_BROKER_URL": broker_url,
        "ABX_QUEUE": queue,
        "ABX_WORKER_METRICS_BIND": f"127.0.0.1:{free_port()}",
        "PYTHONUNBUFFERED": "1",
    }
    log_path = scratch / f"{queue}.log"
    client = Celery("abx-bench", broker=broker_url)
    client.conf.broker_connection_retry_on_startup = True
    with log_path.open("wb") as log:
        worker = subprocess.Popen(
            [*abx_command(), "worker", "--concurrency", "2"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=log,
        )
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            warmup = worker_cycle(client, conn, keys, queue, worker)
            wait_for_quiet()
            seconds = [worker_cycle(client, conn, keys, queue, worker) for _ in range(cycles)]
        rss = [rss_mib(pid) for pid in [worker.pid, *children_of(worker.pid)]]
        return WorkerCycles(warmup, seconds, rss)
    except RuntimeError as error:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{error}; worker log:\n{tail}") from error
    finally:
        stop(worker)
        client.close()
        import redis

        with redis.Redis.from_url(broker_url) as broker:
            broker.delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")


# --- one size ---------------------------------------------------------------------------


@dataclass
class SizeResult:
    events: int
    units: int
    load_seconds: float
    rollup: Rollup
    metric_stats_rows: int
    exposure_counts_rows: int
    dead_metric_stats_rows: int
    unvacuumed: Cycles
    cycles: Cycles
    worker: WorkerCycles | None = None
    worker_skipped: str | None = None
    notes: list[str] = field(default_factory=list)
    segment_metric_stats_rows: int = 0
    plain: Cycles | None = None
    """The same cycles on the experiments without ``segments`` (the same data)."""


def measure_size(
    url: str,
    data: Dataset,
    folder: Path,
    before: tuple[int, int],
    events: int,
    args: argparse.Namespace,
    scratch: Path,
) -> SizeResult:
    units = max(len(data.experiments) * 4, events // EVENTS_PER_UNIT)
    print(f"\n{events:,} events, {units:,} units", flush=True)
    load_seconds = load(url, data, (before[1], units), (before[0], events))
    print(f"  loaded {events - before[0]:,} more events in {load_seconds:.0f} s", flush=True)
    wait_for_quiet()
    windows = windows_from({e.key: e for e in data.experiments})
    grace = timedelta(seconds=Settings().attribution_grace_seconds)
    specs = segment_specs_from({e.key: e for e in data.experiments})
    rollup = roll_up(url, windows, grace, events - before[0], args.rollup_timeout, specs)
    state = "complete" if rollup.complete else "STOPPED at --rollup-timeout"
    print(
        f"  rollup ({state}): {rollup.events:,} events in {rollup.seconds:.0f} s "
        f"({rollup.events_per_second:,.0f} events/s)",
        flush=True,
    )
    (dead,) = scalars(
        url, "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'metric_stats'"
    )
    execute(url, f"TRUNCATE {DECISION_TABLES}")
    unvacuumed = run_cycles(url, folder, 1, quiet=False)
    print(f"  cycle as the rollup left the tables: {unvacuumed.seconds[0]:.2f} s", flush=True)
    execute(url, f"TRUNCATE {DECISION_TABLES}", f"VACUUM ANALYZE {ROLLUP_TABLES}")
    cycles = run_cycles(url, folder, args.cycles, args.profile)
    print(
        "  sequential cycles: " + ", ".join(f"{s:.2f}" for s in cycles.seconds) + " s", flush=True
    )
    stats_rows, count_rows, segment_rows = scalars(
        url,
        "SELECT (SELECT count(*) FROM metric_stats), (SELECT count(*) FROM exposure_counts),"
        " (SELECT count(*) FROM segment_metric_stats)",
    )
    result = SizeResult(
        events, units, load_seconds, rollup, stats_rows, count_rows, dead, unvacuumed, cycles
    )
    result.segment_metric_stats_rows = segment_rows
    if data.segment_attributes:
        execute(url, f"TRUNCATE {DECISION_TABLES}")
        result.plain = run_cycles(url, folder.with_name("plain"), args.cycles)
        print(
            "  the same cycles without segments: "
            + ", ".join(f"{s:.2f}" for s in result.plain.seconds)
            + " s",
            flush=True,
        )
    if args.no_worker:
        result.worker_skipped = "--no-worker"
    elif not redis_reachable(args.broker_url):
        result.worker_skipped = f"Redis not reachable at {args.broker_url}"
    else:
        execute(url, f"TRUNCATE {DECISION_TABLES}")
        # An analysis that raises writes no analysis_runs row: wait only for the others.
        keys = [e.key for e in data.experiments if e.key not in cycles.failed]
        result.worker = run_worker_cycles(
            url, folder, keys, args.worker_cycles, args.broker_url, scratch
        )
        print(
            f"  worker cycles: warm-up {result.worker.warmup_seconds:.2f} s, then "
            + ", ".join(f"{s:.2f}" for s in result.worker.seconds)
            + " s",
            flush=True,
        )
    return result


# --- report ---------------------------------------------------------------------------


def print_report(results: list[SizeResult], experiments: int, cycles: int) -> bool:
    print_header(
        f"{'events':>11} {'units':>9} {'load s':>7} {'rollup s':>8} {'rollup ev/s':>11} "
        f"{'stats rows':>10} | {'cycle s: 1st':>12} {'median':>7} {'unvac.':>7} "
        f"{'ms/exp':>6} {'cpu py':>6} {'pg':>5} | {'worker s':>8} | {'RSS MiB':>7} {'peak':>5}"
    )
    for r in results:
        worker = f"{statistics.median(r.worker.seconds):>8.2f}" if r.worker else f"{'-':>8}"
        print(
            f"{r.events:>11,} {r.units:>9,} {r.load_seconds:>7.0f} {r.rollup.seconds:>8.0f} "
            f"{r.rollup.events_per_second:>11,.0f} {r.metric_stats_rows:>10,} | "
            f"{r.cycles.seconds[0]:>12.2f} {statistics.median(r.cycles.steady):>7.2f} "
            f"{r.unvacuumed.seconds[0]:>7.2f} {r.cycles.median_ms:>6.1f} "
            f"{statistics.median(r.cycles.steady_cpu):>6.2f} "
            f"{statistics.median(r.cycles.steady_backend_cpu):>5.2f} | {worker} | "
            f"{r.cycles.rss_after_mib:>7.0f} {r.cycles.hwm_mib:>5.0f}"
        )
    print(
        f"(cycle: analyze_and_decide for {experiments} experiments, sequentially, one connection, "
        f"a fresh process; 1st: from empty decision tables (creates the states, takes the "
        f"decisions); median: of cycles 2..{cycles}; unvac.: one cycle before VACUUM of the "
        "rollup tables; ms/exp: median per experiment in the last cycle; cpu py, pg: median CPU "
        "seconds per cycle (2..) of the cycle process and of its PostgreSQL backend, which "
        "other work on the machine does not inflate as it does wall time; worker: median of the "
        "timed cycles through abx worker --concurrency 2; RSS: VmRSS of the cycle process after "
        "its cycles, peak: its VmHWM)"
    )
    for r in results:
        print(f"\n{r.events:,} events:")
        if not r.rollup.complete:
            remaining = r.events - r.rollup.events
            print(
                f"  rollup STOPPED at --rollup-timeout: {remaining:,} events not rolled up "
                f"(~{remaining / max(1.0, r.rollup.events_per_second):,.0f} s more at this rate)"
            )
        rounds = r.rollup.rounds_ms
        print(
            f"  rollup: {r.rollup.events:,} events + {r.rollup.exposures:,} exposures in "
            f"{len(rounds)} rounds; median round of {EVENT_CHUNK:,} events: first 5 "
            f"{statistics.median(rounds[:5]):,.0f} ms, last 5 "
            f"{statistics.median(rounds[-6:-1] or rounds[-1:]):,.0f} ms"
        )
        print(
            f"  rollup tables: metric_stats {r.metric_stats_rows:,} rows "
            f"({r.dead_metric_stats_rows:,} dead before VACUUM), "
            f"exposure_counts {r.exposure_counts_rows:,} rows"
        )
        print(
            f"  cycle before VACUUM: {r.unvacuumed.seconds[0]:.2f} s (CPU: cycle process "
            f"{r.unvacuumed.cpu_seconds[0]:.2f} s, its backend "
            f"{r.unvacuumed.backend_cpu_seconds[0]:.2f} s); first cycle after: "
            f"{r.cycles.seconds[0]:.2f} s ({r.cycles.cpu_seconds[0]:.2f} s, "
            f"{r.cycles.backend_cpu_seconds[0]:.2f} s)"
        )
        print("  decisions per cycle: " + "; ".join(map(str, r.cycles.decisions)))
        by_error: dict[str, list[str]] = {}
        for key, error in sorted(r.cycles.failed.items()):
            by_error.setdefault(error.split(":")[0], []).append(key)
        for kind, keys in by_error.items():
            more = f" and {len(keys) - 4} more" if len(keys) > 4 else ""
            print(
                f"  analysis FAILED with {kind} for {len(keys)} experiments "
                f"({', '.join(keys[:4])}{more}), e.g. {r.cycles.failed[keys[0]][:300]}"
            )
        print(
            "  slowest experiments (last cycle): "
            + ", ".join(f"{key} {ms:.1f} ms" for ms, key in r.cycles.slowest_ms)
        )
        print(
            f"  cycle process VmRSS: {r.cycles.rss_before_mib:.0f} MiB before the cycles, "
            f"{r.cycles.rss_after_mib:.0f} MiB after, peak {r.cycles.hwm_mib:.0f} MiB"
        )
        print(
            f"  an idle roll_up_once (each worker task runs one before analysing): "
            f"{r.cycles.idle_rollup_ms:.1f} ms"
        )
        if r.worker:
            rss = ", ".join(f"{s:.0f}" for s in r.worker.rss_mib[1:])
            print(
                f"  worker: warm-up cycle {r.worker.warmup_seconds:.2f} s, timed "
                + ", ".join(f"{s:.2f}" for s in r.worker.seconds)
                + f" s; VmRSS master {r.worker.rss_mib[0]:.0f} MiB, children [{rss}] MiB"
            )
        else:
            print(f"  worker: skipped ({r.worker_skipped})")
    for r in results:
        if r.plain is not None:
            with_segments = statistics.median(r.cycles.steady)
            without = statistics.median(r.plain.steady)
            print(
                f"\n{r.events:,} events: segments: segment_metric_stats {r.segment_metric_stats_rows:,}"
                f" rows; cycle median with segments {with_segments:.2f} s, without "
                f"{without:.2f} s ({with_segments / without:.2f}x); CPU py + pg with "
                f"{statistics.median(r.cycles.steady_cpu):.2f} + "
                f"{statistics.median(r.cycles.steady_backend_cpu):.2f} s, without "
                f"{statistics.median(r.plain.steady_cpu):.2f} + "
                f"{statistics.median(r.plain.steady_backend_cpu):.2f} s"
            )
    largest = results[-1]
    steady = statistics.median(largest.cycles.steady)
    met = steady < TARGET_CYCLE_SECONDS and largest.cycles.seconds[0] < TARGET_CYCLE_SECONDS
    print()
    if len(results) > 1:
        first = results[0]
        growth = steady / statistics.median(first.cycles.steady)
        growth_first = largest.cycles.seconds[0] / first.cycles.seconds[0]
        print(
            f"growth {first.events:,} -> {largest.events:,} events "
            f"({largest.events / first.events:.0f}x): cycle median {growth:.2f}x, "
            f"first cycle {growth_first:.2f}x"
            + (
                f", worker {statistics.median(largest.worker.seconds) / statistics.median(first.worker.seconds):.2f}x"
                if largest.worker and first.worker
                else ""
            )
        )
    print(
        f"target: one cycle over {experiments} experiments and {largest.events:,} events "
        f"< {TARGET_CYCLE_SECONDS:g} s: first {largest.cycles.seconds[0]:.2f} s, median "
        f"{steady:.2f} s: {'met' if met else 'NOT met'}"
        + ("" if largest.rollup.complete else " (rollup incomplete: see above)")
    )
    return met


# --- main -----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000, help="outcome events in all")
    parser.add_argument(
        "--small-events", type=int, default=1_000_000, help="the smaller size measured first"
    )
    parser.add_argument("--experiments", type=int, default=100)
    parser.add_argument("--days", type=int, default=14, help="days over which units are exposed")
    parser.add_argument("--cycles", type=int, default=5, help="sequential cycles per size")
    parser.add_argument("--worker-cycles", type=int, default=3, help="timed worker cycles")
    parser.add_argument("--no-worker", action="store_true", help="skip the Celery worker part")
    parser.add_argument("--profile", action="store_true", help="profile one cycle (cProfile)")
    parser.add_argument(
        "--rollup-timeout", type=float, default=3600.0, help="stop the rollup after this many s"
    )
    parser.add_argument(
        "--segment-attributes", type=int, default=2, help="segment attributes per experiment"
    )
    parser.add_argument("--segment-values", type=int, default=10, help="values per attribute")
    parser.add_argument("--broker-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument(
        "--admin-url",
        default=DEFAULT_ADMIN_URL,
        help="where to create (and drop) the benchmark database",
    )
    parser.add_argument(
        "--child", nargs=3, metavar=("URL", "FOLDER", "CYCLES"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.child:
        url, folder, cycles = args.child
        return child_main(url, Path(folder), int(cycles), args.profile)
    if not 1_000 <= args.events <= 50_000_000 or not 1 <= args.experiments <= 1_000:
        parser.error("--events must be 1,000..50,000,000 and --experiments 1..1,000")
    if not 1 <= args.days <= 60 or not 1 <= args.cycles <= 50 or not 1 <= args.worker_cycles <= 20:
        parser.error("--days must be 1..60, --cycles 1..50, --worker-cycles 1..20")
    if not 0 <= args.segment_attributes <= 5 or not 1 <= args.segment_values <= 50:
        parser.error("--segment-attributes must be 0..5 and --segment-values 1..50")
    if not 1 <= args.rollup_timeout <= 7200:
        parser.error("--rollup-timeout must be 1..7200 s")
    sizes = sorted({min(args.small_events, args.events), args.events})

    with psycopg.connect(args.admin_url, autocommit=True) as admin:
        version = admin.execute("SHOW server_version").fetchone()
        buffers = admin.execute("SHOW shared_buffers").fetchone()
    print(
        f"{os.cpu_count()} cores; PostgreSQL {version[0] if version else '?'}, shared_buffers "
        f"{buffers[0] if buffers else '?'}; {args.experiments} experiments x 3 variants x 5 "
        f"metrics; sizes {', '.join(f'{s:,}' for s in sizes)} events; exposures over "
        f"{args.days} days; load average {load_average()}; "
        f"code {code_version()}",
        flush=True,
    )
    results: list[SizeResult] = []
    with (
        bench_database(None, args.admin_url) as url,
        tempfile.TemporaryDirectory(prefix="abx-bench-cycle-") as scratch,
    ):
        folder = Path(scratch, "experiments")
        folder.mkdir()
        segments = segments_yaml(args.segment_attributes, args.segment_values)
        experiments = write_experiments(folder, args.experiments, segments)
        if segments:
            plain = Path(scratch, "plain")
            plain.mkdir()
            write_experiments(plain, args.experiments)
        data = Dataset(
            experiments, datetime.now(UTC) - timedelta(days=args.days + WINDOW_DAYS), args.days,
            args.segment_attributes, args.segment_values,
        )  # fmt: skip
        before = (0, 0)
        for events in sizes:
            result = measure_size(url, data, folder, before, events, args, Path(scratch))
            results.append(result)
            before = (events, result.units)
    return 0 if print_report(results, args.experiments, args.cycles) else 1


if __name__ == "__main__":
    sys.exit(main())
