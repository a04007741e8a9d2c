"""Events/s through ``POST /v1/events`` against a raw COPY ceiling; reading 10M events' statistics.

Ingest. The ceiling is measured in the same run, on the same tables and
indexes: one psycopg connection runs ``service.events.ingest.ingest_rows``
(COPY into a temporary staging table, then ``INSERT … ON CONFLICT DO NOTHING``
into ``event_ids`` and ``outcomes``: the service's own deduplication SQL), one
transaction per batch of 500 (and, once, 5,000 and 50,000 for reference). The
service is ``abx serve --no-migrate`` (default workers and threads, its rollup
on), driven by ``--connections`` client threads (``http.client`` keep-alive)
posting batches of 500 unique events, once with PostgreSQL up and once with
``ABX_DATABASE_URL`` at a closed port, so that every batch goes to the fsynced
spool. The three alternate for ``--rounds`` rounds, since other work on the
machine comes and goes; targets use the per-round ratios' median. Events are
``checkout_ranker``'s ``checkout_conversion`` (binary) and ``order_value``
(continuous), for units exposed in the last week, so that the server's rollup
attributes them as in production. Each run starts from empty event tables
(TRUNCATE, CHECKPOINT) after waiting (at most 20 s) for a quiet machine.
Reported: events/s, p50/p99 per request (per transaction for COPY), the CPU
taken by the client, the gunicorn processes and the database's backends, and
the workers' VmRSS.

Statistics. A second database gets ``--events`` outcome events (default 10M)
for ``--events``/10 exposed units in 3 variants, generated server-side
(``INSERT … SELECT generate_series``: faster than COPY from Python, since no
row crosses the socket), 10 % of them in the CUPED pre-period. Then
``service.events.rollup.roll_up_once`` runs until idle or ``--rollup-timeout``,
and ``service.events.sums.metric_stats`` is timed (median of 21) against the
raw scan it replaces (per-unit totals from ``outcomes`` joined to first
exposures, GROUP BY; median of 3); when the rollup completed, both answers
are compared.

Both databases are ``abx_bench_<random>``, created, migrated and dropped here.

Run: ``python benchmarks/ingest.py [--duration S] [--events N] [--skip-big]``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from common import (
    DEFAULT_ADMIN_URL,
    ROOT,
    Rollup,
    Server,
    abx_command,
    backend_pids,
    bench_database,
    code_version,
    cpu_seconds,
    load_average,
    machine_busy_ticks,
    percentile,
    print_header,
    print_rss,
    roll_up,
    rss_mib,
    serving,
    timed,
    wait_for_quiet,
)

from service.events.ingest import ingest_rows
from service.events.rollup import EVENT_CHUNK
from service.events.sums import metric_stats
from service.experiments.schema import Experiment
from service.experiments.validation import load_experiments
from service.settings import Settings, default_workers

EXPERIMENT = "checkout_ranker"
BINARY_METRIC = "checkout_conversion"
CONTINUOUS_METRIC = "order_value"
BATCH_EVENTS = 500
REFERENCE_BATCHES = (5_000, 50_000)
TEMPLATES = 16
HTTP_UNITS = 100_000
BIG_EXPOSURE_DAYS = 10
TARGET_CEILING_RATIO = 0.5
TARGET_SPOOL_RATIO = 1.0
TARGET_STATS_MS = 50.0
UNREACHABLE_DATABASE = "postgresql://postgres@127.0.0.1:1/x?connect_timeout=1"
MAX_REQUESTS_PER_CLIENT = 1_000_000
EVENT_TABLES = "event_ids, outcomes, unit_outcomes, metric_stats, outcome_counts"


# --- events ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Template:
    """500 events, as a JSON body and as ``ingest_rows`` rows; ``@B@`` prefixes each event id."""

    body: str
    rows: tuple[tuple[str, str, str, float, datetime], ...]
    """(unit, metric, aggregation, value, occurred_at) per event, in body order."""

    def json_body(self, prefix: str) -> bytes:
        return self.body.replace("@B@", prefix).encode()

    def ingest_rows(self, seed: str, prefix: str, received_at: datetime) -> list[tuple[Any, ...]]:
        """The rows ``validate_events`` makes of ``json_body(prefix)`` (``OutcomeRow.as_tuple``)."""
        return [
            (EXPERIMENT, seed, f"{prefix}-{j}", unit, metric, aggregation, value, at, received_at, None)
            for j, (unit, metric, aggregation, value, at) in enumerate(self.rows)
        ]  # fmt: skip


def make_templates(count: int, units: int, now: datetime) -> list[Template]:
    rng = random.Random(20240601)
    templates = []
    for _ in range(count):
        parts, rows = [], []
        for j in range(BATCH_EVENTS):
            unit = f"unit-{rng.randrange(units)}"
            at = (now - timedelta(seconds=rng.uniform(0, 3600))).replace(microsecond=0)
            if j % 2 == 0:
                converted = rng.random() < 0.1
                value, metric, aggregation = float(converted), BINARY_METRIC, "max"
                literal = "true" if converted else "false"
            else:
                value, metric, aggregation = (
                    round(rng.expovariate(1 / 50), 2),
                    CONTINUOUS_METRIC,
                    "sum",
                )
                literal = repr(value)
            parts.append(
                f'{{"event_id":"@B@-{j}","experiment":"{EXPERIMENT}","unit":"{unit}",'
                f'"metric":"{metric}","value":{literal},"timestamp":"{at.isoformat()}"}}'
            )
            rows.append((unit, metric, aggregation, value, at))
        templates.append(Template('{"events":[' + ",".join(parts) + "]}", tuple(rows)))
    return templates


def load_experiment(key: str) -> Experiment:
    settings = Settings()
    loaded = load_experiments([ROOT / settings.experiments])
    for item in loaded.experiments:
        if item.experiment.key == key:
            return item.experiment
    raise SystemExit(f"experiment {key!r} not found in {settings.experiments}")


def reset_event_tables(url: str) -> None:
    """Empty the tables ingest writes (the rollup's too) and checkpoint, so phases start alike."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {EVENT_TABLES}")
        conn.execute("CHECKPOINT")


def insert_exposures(
    url: str, experiment: Experiment, units: int, start: datetime, days: int
) -> None:
    """One exposure per unit ``unit-<u>``: variant ``u % 3``, over ``days`` days from ``start``."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO exposures (experiment_key, seed, unit_id, variant_key, first_exposed_at)"
            " SELECT %(key)s, %(seed)s, 'unit-' || u, (%(variants)s::text[])[(1 + u %% 3)::int],"
            " %(start)s::timestamptz + (u %% %(days)s) * interval '1 day'"
            " + (u * 7919 %% 86400) * interval '1 second'"
            " FROM generate_series(0, %(units)s::bigint - 1) AS u",
            {
                "key": experiment.key,
                "seed": experiment.seed,
                "variants": [v.key for v in experiment.variants],
                "start": start,
                "units": units,
                "days": days,
            },
        )
        conn.execute("ANALYZE exposures")


# --- COPY ceiling ---------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    name: str
    events: int
    seconds: float
    latencies_ms: list[float]
    client_cpu_seconds: float
    server_cpu_seconds: float
    database_cpu_seconds: float
    machine_busy_fraction: float
    errors: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    round: int = 0

    def in_round(self, index: int) -> Run:
        return replace(self, round=index + 1)

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds

    def cores(self, cpu_seconds: float) -> float:
        return cpu_seconds / self.seconds

    def us_per_event(self, cpu_seconds: float) -> float:
        return 1e6 * cpu_seconds / max(1, self.events)


def copy_ceiling(
    url: str, templates: Sequence[Template], seed: str, batch: int, duration: float
) -> Run:
    """``ingest_rows`` from one connection, one transaction per ``batch`` events, for ``duration`` s."""
    per_batch = batch // BATCH_EVENTS
    with psycopg.connect(url, autocommit=True) as conn:
        backend = [conn.info.backend_pid]
        with conn.transaction():  # creates the temporary staging table outside the measurement
            ingest_rows(conn, templates[0].ingest_rows(seed, "warm", datetime.now(UTC)))
        latencies: list[float] = []
        events = 0
        client_before, database_before = time.process_time(), cpu_seconds(backend)
        busy_before, total_before = machine_busy_ticks()
        started = time.perf_counter()
        deadline = started + duration
        for index in range(MAX_REQUESTS_PER_CLIENT):
            if time.perf_counter() >= deadline:
                break
            received_at = datetime.now(UTC)
            rows = [
                row
                for part in range(per_batch)
                for row in templates[(index * per_batch + part) % len(templates)].ingest_rows(
                    seed, f"copy{batch}-{index}-{part}", received_at
                )
            ]
            request_started = time.perf_counter()
            with conn.transaction():
                fresh = ingest_rows(conn, rows)
            latencies.append(1000 * (time.perf_counter() - request_started))
            if len(fresh) != len(rows):
                raise RuntimeError(f"{len(rows) - len(fresh)} events were taken as duplicates")
            events += len(rows)
        seconds = time.perf_counter() - started
        busy_after, total_after = machine_busy_ticks()
        return Run(
            name=f"COPY + dedup, 1 connection, {batch:,}/tx",
            events=events,
            seconds=seconds,
            latencies_ms=latencies,
            client_cpu_seconds=time.process_time() - client_before,
            server_cpu_seconds=0.0,
            database_cpu_seconds=cpu_seconds(backend) - database_before,
            machine_busy_fraction=(busy_after - busy_before) / max(1, total_after - total_before),
        )


# --- HTTP -----------------------------------------------------------------------------


@contextmanager
def abx_server(
    database_url: str, scratch: Path, name: str, extra: dict[str, str]
) -> Iterator[Server]:
    """``abx serve --no-migrate``, default workers and threads, until the block ends."""
    env = {
        **os.environ,
        "ABX_DATABASE_URL": database_url,
        "ABX_EXPERIMENTS": str(ROOT / "experiments"),
        "ABX_DATA_DIR": str(scratch / f"{name}-data"),
        "ABX_SPOOL_DIR": str(scratch / f"{name}-spool"),
        "ABX_AUTH": "off",  # the clients send no key; benchmarks/access.py measures auth
        **extra,
    }
    for key in ("ABX_API_KEY", "ABX_WORKERS", "ABX_THREADS"):
        env.pop(key, None)
    command = [*abx_command(), "serve", "--no-migrate"]
    with serving(f"abx-serve-{name}", command, env, scratch, default_workers()) as server:
        yield server


@dataclass
class ClientTally:
    latencies_ms: list[float] = field(default_factory=list)
    events: int = 0
    errors: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)


def post_batches(
    port: int,
    templates: Sequence[Template],
    run: str,
    client: int,
    deadline: float,
    tally: ClientTally,
) -> None:
    """Post unique batches over one keep-alive connection until ``deadline``."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/json"}
    try:
        for seq in range(MAX_REQUESTS_PER_CLIENT):
            if time.perf_counter() >= deadline:
                return
            body = templates[(client + seq) % len(templates)].json_body(f"{run}-{client}-{seq}")
            started = time.perf_counter()
            try:
                conn.request("POST", "/v1/events", body, headers)
                response = conn.getresponse()
                payload = response.read()
            except (OSError, http.client.HTTPException):
                tally.errors += 1
                conn.close()
                time.sleep(0.05)
                continue
            tally.latencies_ms.append(1000 * (time.perf_counter() - started))
            if response.status != 202:
                tally.errors += 1
                tally.outcomes[f"HTTP {response.status}"] += 1
                continue
            result = json.loads(payload)
            tally.events += int(result["accepted"])
            tally.outcomes[result["durable"]] += 1
    finally:
        conn.close()


def drive(
    server: Server,
    database_url: str | None,
    templates: Sequence[Template],
    run: str,
    connections: int,
    duration: float,
    name: str,
) -> Run:
    """``connections`` client threads for ``duration`` s; CPU of everything involved over the run."""
    tallies = [ClientTally() for _ in range(connections)]
    pids = server.pids
    backends = backend_pids(database_url) if database_url else []
    client_before = time.process_time()
    server_before, database_before = cpu_seconds(pids), cpu_seconds(backends)
    busy_before, total_before = machine_busy_ticks()
    started = time.perf_counter()
    threads = [
        threading.Thread(
            target=post_batches, args=(server.port, templates, run, i, started + duration, tally)
        )
        for i, tally in enumerate(tallies)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(duration + 60)
    seconds = time.perf_counter() - started
    busy_after, total_after = machine_busy_ticks()
    return Run(
        name=name,
        events=sum(t.events for t in tallies),
        seconds=seconds,
        latencies_ms=[ms for t in tallies for ms in t.latencies_ms],
        client_cpu_seconds=time.process_time() - client_before,
        server_cpu_seconds=cpu_seconds(pids) - server_before,
        database_cpu_seconds=cpu_seconds(backends) - database_before,
        machine_busy_fraction=(busy_after - busy_before) / max(1, total_after - total_before),
        errors=sum(t.errors for t in tallies),
        outcomes=sum((t.outcomes for t in tallies), Counter()),
    )


def http_phase(
    database_url: str,
    reachable: bool,
    scratch: Path,
    templates: Sequence[Template],
    connections: int,
    warmup: float,
    duration: float,
) -> tuple[Run, list[float], int]:
    """Warm up, then measure one server; return the run, [master, workers...] VmRSS (MiB) and
    the events accepted in all (warm-up included)."""
    name = "db" if reachable else "spool"
    url = database_url if reachable else UNREACHABLE_DATABASE
    extra = {} if reachable else {"ABX_SPOOL_MAX_BYTES": str(32 * 2**30)}
    with abx_server(url, scratch, name, extra) as server:
        warm = drive(server, None, templates, f"{name}-warm", connections, warmup, "warm-up")
        wait_for_quiet()
        label = "PostgreSQL up" if reachable else "PostgreSQL down: spool"
        run = drive(
            server,
            database_url if reachable else None,
            templates,
            name,
            connections,
            duration,
            f"POST /v1/events, {label}, {connections} conns",
        )
        rss = [rss_mib(pid) for pid in server.pids]
    return run, rss, warm.events + run.events


# --- statistics of a big experiment ----------------------------------------------------


OUTCOMES_SQL = """
INSERT INTO outcomes (experiment_key, seed, event_id, unit_id, metric, aggregation, value,
                      occurred_at, received_at)
SELECT %(key)s, %(seed)s, 'big-' || g, 'unit-' || u,
       CASE WHEN is_binary THEN %(binary)s ELSE %(continuous)s END,
       CASE WHEN is_binary THEN 'max' ELSE 'sum' END,
       CASE WHEN is_binary THEN (random() < 0.10 + 0.01 * (u %% 3))::int
            ELSE round((-ln(1 - random()) * (50 + u %% 3))::numeric, 2) END,
       %(start)s::timestamptz + (u %% %(days)s) * interval '1 day'
           + (u * 7919 %% 86400) * interval '1 second'
           + (random() * 1.1 - 0.1) * %(window)s::interval,
       now()
FROM (SELECT g, (g / 2) %% %(units)s AS u, g %% 2 = 0 AS is_binary
      FROM generate_series(%(low)s::bigint, %(high)s::bigint) AS g) AS s
"""

# The query metric_stats replaces: every event of the experiment, per unit and metric.
RAW_SCAN_SQL = """
WITH first_exposure AS (
    SELECT DISTINCT ON (unit_id) unit_id, variant_key, first_exposed_at
    FROM exposures WHERE experiment_key = %(key)s AND seed = %(seed)s
    ORDER BY unit_id, first_exposed_at
), unit_totals AS (
    SELECT f.variant_key, o.metric, o.unit_id,
           CASE WHEN o.aggregation = 'max'
                THEN coalesce(max(o.value) FILTER (WHERE o.occurred_at >= f.first_exposed_at), 0)
                ELSE coalesce(sum(o.value) FILTER (WHERE o.occurred_at >= f.first_exposed_at), 0)
           END AS y,
           CASE WHEN o.aggregation = 'max'
                THEN coalesce(max(o.value) FILTER (WHERE o.occurred_at < f.first_exposed_at), 0)
                ELSE coalesce(sum(o.value) FILTER (WHERE o.occurred_at < f.first_exposed_at), 0)
           END AS x
    FROM outcomes o JOIN first_exposure f USING (unit_id)
    WHERE o.experiment_key = %(key)s AND o.seed = %(seed)s
      AND o.occurred_at BETWEEN f.first_exposed_at - %(window)s::interval
                            AND f.first_exposed_at + %(window)s::interval
    GROUP BY f.variant_key, o.metric, o.unit_id, o.aggregation
), units AS (
    SELECT variant_key, count(*) AS n FROM first_exposure GROUP BY variant_key
)
SELECT t.variant_key, t.metric, u.n, sum(y), sum(y * y), sum(x), sum(x * x), sum(x * y)
FROM unit_totals t JOIN units u USING (variant_key)
GROUP BY t.variant_key, t.metric, u.n
ORDER BY t.variant_key, t.metric
"""


@dataclass(frozen=True)
class BigResult:
    events: int
    units: int
    load_seconds: float
    rollup: Rollup
    bucket_rows: int
    """Rows metric_stats reads: metric_stats and exposure_counts of the experiment."""
    metric_stats_ms: list[float]
    raw_scan_ms: list[float]
    answers_match: bool | None


def load_outcomes(
    url: str, experiment: Experiment, events: int, units: int, start: datetime
) -> None:
    chunk = 1_000_000
    window = timedelta(hours=experiment.outcome_window_hours)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT setseed(0.42)")
        for low in range(0, events, chunk):
            high = min(events, low + chunk) - 1
            started = time.perf_counter()
            conn.execute(
                OUTCOMES_SQL,
                {
                    "key": experiment.key,
                    "seed": experiment.seed,
                    "binary": BINARY_METRIC,
                    "continuous": CONTINUOUS_METRIC,
                    "units": units,
                    "start": start,
                    "window": window,
                    "days": BIG_EXPOSURE_DAYS,
                    "low": low,
                    "high": high,
                },
            )
            print(
                f"  loaded {high + 1:,} events ({time.perf_counter() - started:.1f} s for the last chunk)",
                flush=True,
            )
        conn.execute("VACUUM ANALYZE outcomes")


def compare(fast: Sequence[Any], raw: Sequence[Any]) -> bool:
    """True when metric_stats and the raw scan give the same n and sums (relative 1e-6)."""
    expected = {(r[0], r[1]): [float(v) for v in r[2:]] for r in raw}
    got = {
        (s.variant_key, s.metric): [
            float(s.stats.n), s.stats.total, s.stats.total_squares, s.stats.covariate_total,
            s.stats.covariate_total_squares, s.stats.covariate_cross_total,
        ]
        for s in fast
    }  # fmt: skip
    if expected.keys() != got.keys():
        return False
    return all(
        math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6)
        for key in expected
        for a, b in zip(expected[key], got[key], strict=True)
    )


def big_phase(url: str, experiment: Experiment, events: int, rollup_timeout: float) -> BigResult:
    units = max(3, events // 10)
    window = timedelta(hours=experiment.outcome_window_hours)
    start = datetime.now(UTC) - timedelta(days=20)
    started = time.perf_counter()
    insert_exposures(url, experiment, units, start, BIG_EXPOSURE_DAYS)
    load_outcomes(url, experiment, events, units, start)
    load_seconds = time.perf_counter() - started
    print(f"  {events:,} events for {units:,} units loaded in {load_seconds:.0f} s", flush=True)
    grace = timedelta(seconds=Settings().attribution_grace_seconds)
    wait_for_quiet()
    rollup = roll_up(url, lambda _key: window, grace, events, rollup_timeout)
    wait_for_quiet()
    params = {"key": experiment.key, "seed": experiment.seed, "window": window}
    with psycopg.connect(url, autocommit=True) as conn:
        (bucket_rows,) = conn.execute(
            "SELECT (SELECT count(*) FROM metric_stats WHERE experiment_key = %(key)s)"
            " + (SELECT count(*) FROM exposure_counts WHERE experiment_key = %(key)s)",
            params,
        ).fetchone() or (0,)
        metric_stats(conn, experiment.key, experiment.seed)  # warm the connection and cache
        fast_ms, fast = timed(lambda: metric_stats(conn, experiment.key, experiment.seed), 21)
        raw_ms, raw = timed(lambda: conn.execute(RAW_SCAN_SQL, params).fetchall(), 3)
    return BigResult(
        events=events,
        units=units,
        load_seconds=load_seconds,
        rollup=rollup,
        bucket_rows=int(bucket_rows),
        metric_stats_ms=fast_ms,
        raw_scan_ms=raw_ms,
        answers_match=compare(fast, raw) if rollup.complete else None,
    )


# --- report ---------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def paired_ratios(runs: list[Run], numerator: str, denominator: str) -> list[float]:
    """Per round: events/s of the run named ``numerator`` over that of ``denominator``."""
    by_round = {(r.round, r.name): r.events_per_second for r in runs}
    return [
        by_round[(n, numerator)] / by_round[(n, denominator)]
        for n in sorted({r.round for r in runs})
        if (n, numerator) in by_round and (n, denominator) in by_round
    ]


def print_ingest(runs: list[Run], rss: dict[str, list[float]], connections: int) -> bool:
    cores = os.cpu_count() or 1
    print_header(
        f"{'round':>5} {'ingest run':<48} {'events/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} "
        f"| cores: {'client':>6} {'abx':>5} {'pg':>5} {'machine':>7} | µs/event: {'abx':>4} {'pg':>4}"
    )
    for r in runs:
        print(
            f"{r.round or '-':>5} {r.name:<48} {r.events_per_second:>9,.0f} "
            f"{percentile(r.latencies_ms, 0.5):>7.1f} {percentile(r.latencies_ms, 0.99):>7.1f} "
            f"{r.errors:>6} | {'':>6} {r.cores(r.client_cpu_seconds):>6.2f} "
            f"{r.cores(r.server_cpu_seconds):>5.2f} {r.cores(r.database_cpu_seconds):>5.2f} "
            f"{r.machine_busy_fraction * cores:>7.2f} | {'':>9} "
            f"{r.us_per_event(r.server_cpu_seconds):>4.0f} {r.us_per_event(r.database_cpu_seconds):>4.0f}"
        )
    print(
        f"(latency: per request, or per transaction for COPY; cores: CPU seconds per second, of "
        f"{cores}; client: this process (the COPY loop, or the {connections} HTTP threads); abx: "
        "gunicorn master and workers; pg: the backends of the benchmark database; machine: all "
        "busy cores, other sessions' work included)"
    )
    for name in sorted({r.name for r in runs if r.outcomes}):
        answers = sum((r.outcomes for r in runs if r.name == name), Counter())
        print(f"  responses, {name}: {dict(answers)}")
    ceiling, http, spool = (
        next(r.name for r in runs if r.round and key in r.name)
        for key in ("COPY", "PostgreSQL up", "spool")
    )
    print()
    print(
        f"{'target (per-round ratios: median [min..max])':<58} {'measured':>9} {'target':>8}  verdict"
    )
    rows = [
        ("POST /v1/events (PostgreSQL up) / COPY ceiling", http, ceiling, TARGET_CEILING_RATIO),
        ("POST /v1/events (spool) / COPY ceiling", spool, ceiling, TARGET_CEILING_RATIO),
        (
            "POST /v1/events (spool) / POST /v1/events (PostgreSQL up)",
            spool,
            http,
            TARGET_SPOOL_RATIO,
        ),
    ]
    met = True
    for label, numerator, denominator, target in rows:
        ratios = paired_ratios(runs, numerator, denominator)
        value = statistics.median(ratios)
        met = met and value >= target
        spread = f"[{min(ratios):.2f}..{max(ratios):.2f}]"
        print(
            f"{label:<58} {value:>8.2f}x {'>= ' + f'{target:g}' + 'x':>8}  "
            f"{verdict(value >= target)} {spread}"
        )
    print()
    print_rss(rss)
    return met


def print_big(result: BigResult) -> bool:
    fast = statistics.median(result.metric_stats_ms)
    raw = statistics.median(result.raw_scan_ms)
    rollup = result.rollup
    print()
    print(
        f"statistics of {result.events:,} outcome events, {result.units:,} exposed units, 3 variants"
    )
    print(f"  loaded (server-side INSERT … SELECT): {result.load_seconds:,.0f} s")
    state = "complete" if rollup.complete else "STOPPED at --rollup-timeout"
    print(
        f"  rollup ({state}): {rollup.events:,} events in {rollup.seconds:,.0f} s = "
        f"{rollup.events_per_second:,.0f} events/s; CPU {rollup.cpu_us_per_event:.0f} µs/event "
        f"(Python {rollup.client_cpu_seconds:,.0f} s, PostgreSQL {rollup.database_cpu_seconds:,.0f} s)"
    )
    rounds = rollup.rounds_ms
    print(
        f"  rounds of {EVENT_CHUNK:,} events: {len(rounds)}, median ms of the first 5 "
        f"{statistics.median(rounds[:5]):,.0f}, of the last 5 full ones "
        f"{statistics.median(rounds[-6:-1] or rounds[-1:]):,.0f}"
    )
    if not rollup.complete:
        remaining = (result.events - rollup.events) / rollup.events_per_second
        print(f"  extrapolated at that rate: {remaining:,.0f} s more for the rest")
    print(
        f"  metric_stats: median {fast:.2f} ms (min {min(result.metric_stats_ms):.2f}, max "
        f"{max(result.metric_stats_ms):.2f}, 21 runs) reading {result.bucket_rows} bucket rows; "
        f"target < {TARGET_STATS_MS:g} ms: {fast / TARGET_STATS_MS:.3f} of it, "
        f"{verdict(fast < TARGET_STATS_MS)}"
    )
    print(
        f"  raw scan (outcomes JOIN exposures, GROUP BY unit): median {raw:,.0f} ms "
        f"({', '.join(f'{t:,.0f}' for t in result.raw_scan_ms)}); metric_stats {raw / fast:,.0f}x faster"
    )
    match = {
        True: "identical (rel 1e-6)",
        False: "DIFFERENT",
        None: "not compared (rollup incomplete)",
    }
    print(f"  metric_stats vs raw scan: {match[result.answers_match]}")
    return fast < TARGET_STATS_MS and result.answers_match is not False


# --- main -----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--duration", type=float, default=15.0, help="measured seconds per ingest run"
    )
    parser.add_argument(
        "--warmup", type=float, default=3.0, help="unmeasured seconds before HTTP runs"
    )
    parser.add_argument("--connections", type=int, default=8, help="HTTP client threads")
    parser.add_argument("--rounds", type=int, default=3, help="alternate ceiling and service")
    parser.add_argument(
        "--events", type=int, default=10_000_000, help="outcome events for the statistics part"
    )
    parser.add_argument(
        "--rollup-timeout", type=float, default=600.0, help="stop the rollup after this many s"
    )
    parser.add_argument("--skip-big", action="store_true", help="only the ingest part")
    parser.add_argument("--skip-ingest", action="store_true", help="only the statistics part")
    parser.add_argument(
        "--admin-url",
        default=DEFAULT_ADMIN_URL,
        help="where to create (and drop) the benchmark databases",
    )
    args = parser.parse_args(argv)
    if (
        not 1 <= args.duration <= 300
        or not 0 <= args.warmup <= 60
        or not 1 <= args.connections <= 64
    ):
        parser.error("--duration must be 1..300 s, --warmup 0..60 s, --connections 1..64")
    if not 1_000 <= args.events <= 50_000_000 or not 1 <= args.rollup_timeout <= 3600:
        parser.error("--events must be 1,000..50,000,000, --rollup-timeout 1..3600 s")

    experiment = load_experiment(EXPERIMENT)
    print(
        f"{os.cpu_count()} cores; abx serve: {default_workers()} workers x {Settings().threads} threads; "
        f"{args.duration:g} s per ingest run; experiment {experiment.key} (seed {experiment.seed}); "
        f"load average {load_average()}; code {code_version()}",
        flush=True,
    )
    met = True
    if not args.skip_ingest:
        met = ingest_part(args, experiment) and met
    if not args.skip_big:
        with bench_database(None, args.admin_url) as url:
            print(f"\nstatistics part: {args.events:,} events", flush=True)
            met = print_big(big_phase(url, experiment, args.events, args.rollup_timeout)) and met
    return 0 if met else 1


def ingest_part(args: argparse.Namespace, experiment: Experiment) -> bool:
    now = datetime.now(UTC)
    templates = make_templates(TEMPLATES, HTTP_UNITS, now)
    runs: list[Run] = []
    rss: dict[str, list[float]] = {}
    with (
        bench_database(None, args.admin_url) as url,
        tempfile.TemporaryDirectory(prefix="abx-bench-ingest-") as scratch,
    ):
        # Exposed 7 to 1 days ago: events of the last hour fall in the outcome window.
        insert_exposures(url, experiment, HTTP_UNITS, now - timedelta(days=7), days=5)
        # Ceiling and service alternate, so that load from elsewhere hits both alike.
        for round_index in range(args.rounds):
            reset_event_tables(url)
            wait_for_quiet()
            run = copy_ceiling(url, templates, experiment.seed, BATCH_EVENTS, args.duration)
            runs.append(run.in_round(round_index))
            print(f"  {run.name}: {run.events_per_second:,.0f} events/s", flush=True)
            for reachable in (True, False):
                reset_event_tables(url)
                run, rss["db" if reachable else "spool"], accepted = http_phase(
                    url,
                    reachable,
                    Path(scratch, f"r{round_index}"),
                    templates,
                    args.connections,
                    args.warmup,
                    args.duration,
                )
                runs.append(run.in_round(round_index))
                with psycopg.connect(url) as conn:
                    (stored,) = conn.execute("SELECT count(*) FROM event_ids").fetchone() or (0,)
                expected = accepted if reachable else 0
                print(
                    f"  {run.name}: {run.events_per_second:,.0f} events/s; event_ids holds "
                    f"{stored:,} rows afterwards (expected {expected:,})",
                    flush=True,
                )
        for batch in REFERENCE_BATCHES:
            reset_event_tables(url)
            wait_for_quiet()
            runs.append(copy_ceiling(url, templates, experiment.seed, batch, args.duration))
            print(f"  {runs[-1].name}: {runs[-1].events_per_second:,.0f} events/s", flush=True)
    return print_ingest(runs, rss, args.connections)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sys.exit(main())
