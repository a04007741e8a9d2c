"""The rollup of this tree against another revision's, on copies of one database, same run.

Data: ``analysis_cycle.py``'s (``--experiments`` experiments of 3 variants and 5 metrics, one
unit per 10 events, ``--segment-attributes`` attributes of ``--segment-values`` values each),
loaded once into ``abx_bench_<random>``. Each run copies that database (``CREATE DATABASE …
TEMPLATE``) and rolls it up until idle in a fresh child process whose ``service`` package is
either this tree's or ``--baseline``'s (``git archive`` of that revision into a temporary
folder): ``benchmarks/common.py``'s ``roll_up``, timed, with the CPU seconds of the child and
of its PostgreSQL backend (steadier than wall time on a shared machine). Runs alternate
(baseline, this tree, this tree, baseline, …) so that a change of load hits both.

After the first pair the two copies' rollup tables are compared row by row, sums included:
the change must write exactly what the baseline writes.

Run: ``python benchmarks/rollup_compare.py [--baseline main] [--events 1000000] [--pairs 1]``.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from analysis_cycle import (
    EVENTS_PER_UNIT,
    WINDOW_DAYS,
    Dataset,
    load,
    segments_yaml,
    write_experiments,
)
from common import DEFAULT_ADMIN_URL, ROOT, bench_database, code_version, load_average, roll_up

COMPARED = (
    "unit_outcomes", "metric_stats", "metric_cohort_stats", "exposure_counts", "segment_values",
    "segment_exposure_counts", "segment_metric_stats", "outcome_counts", "outcomes",
    "rollup_state",
)  # fmt: skip


def child_main(url: str, folder: Path) -> int:
    """Roll ``url`` up until idle with this interpreter's ``service``; print the result."""
    from service.events.rollup import windows_from
    from service.events.segments import segment_specs_from
    from service.experiments.validation import load_experiments
    from service.settings import Settings

    experiments = {i.experiment.key: i.experiment for i in load_experiments([folder]).experiments}
    grace = timedelta(seconds=Settings().attribution_grace_seconds)
    with psycopg.connect(url) as conn:
        (events,) = conn.execute("SELECT count(*) FROM outcomes").fetchone() or (0,)
    result = roll_up(url, windows_from(experiments), grace, int(events), 7200.0,
                     segment_specs_from(experiments))  # fmt: skip
    print(json.dumps({
        "events": result.events, "seconds": result.seconds, "complete": result.complete,
        "client_cpu": result.client_cpu_seconds, "database_cpu": result.database_cpu_seconds,
    }))  # fmt: skip
    return 0


def copy_database(admin_url: str, source: str) -> str:
    name = f"abx_bench_{secrets.token_hex(4)}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{source}"')
    return name


def drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def url_of(url: str, database: str) -> str:
    return psycopg.conninfo.make_conninfo(url, dbname=database)


def run_child(tree: Path, url: str, folder: Path) -> dict[str, Any]:
    path = os.pathsep.join([str(tree), str(tree / "sdk" / "python")])
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", url, str(folder)],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": path}, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"the rollup with {tree} failed:\n{done.stderr[-3000:]}")
    found: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


def differences(url_a: str, url_b: str) -> list[str]:
    """Tables whose rows differ between the two databases, every column exactly.

    Each side is its row count and the sum of a 60-bit digest of every row's text (float8
    prints the shortest text that reads back exactly), so no table is held in memory.
    """
    found = []
    for table in COMPARED:
        digests = []
        for url in (url_a, url_b):
            with psycopg.connect(url) as conn:
                digests.append(conn.execute(
                    "SELECT count(*), coalesce(sum(('x' || left(md5(t::text), 15))::bit(60)"
                    f"::bigint::numeric), 0) FROM {table} t"
                ).fetchone())  # fmt: skip
        if digests[0] != digests[1]:
            found.append(f"{table} ({digests[0][0]:,} vs {digests[1][0]:,} rows)")
    return found


def report(name: str, result: dict[str, Any]) -> None:
    cpu = result["client_cpu"] + result["database_cpu"]
    print(f"  {name}: {result['events']:,} events in {result['seconds']:.1f} s"
          f" ({result['events'] / result['seconds']:,.0f}/s), CPU {result['client_cpu']:.1f} s"
          f" Python + {result['database_cpu']:.1f} s PostgreSQL ="
          f" {1e6 * cpu / max(1, result['events']):.0f} us/event; load average {result['load']}",
          flush=True)  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="main", help="git revision compared with")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--experiments", type=int, default=100)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--segment-attributes", type=int, default=2)
    parser.add_argument("--segment-values", type=int, default=10)
    parser.add_argument("--pairs", type=int, default=1, help="runs of each, alternating")
    parser.add_argument("--admin-url", default=DEFAULT_ADMIN_URL)
    parser.add_argument("--child", nargs=2, metavar=("URL", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child_main(args.child[0], Path(args.child[1]))
    if not 1_000 <= args.events <= 20_000_000 or not 1 <= args.pairs <= 10:
        parser.error("--events must be 1,000..20,000,000 and --pairs 1..10")
    print(f"{os.cpu_count()} cores; {args.events:,} events, {args.experiments} experiments, "
          f"{args.segment_attributes} segment attributes of {args.segment_values} values; "
          f"this tree {code_version()} vs {args.baseline}; load average {load_average()}",
          flush=True)  # fmt: skip
    with (
        bench_database(None, args.admin_url) as url,
        tempfile.TemporaryDirectory(prefix="abx-bench-rollup-") as scratch,
    ):
        baseline = Path(scratch, "baseline")
        baseline.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.baseline],
                                 capture_output=True, check=True).stdout  # fmt: skip
        subprocess.run(["tar", "-x", "-C", str(baseline)], input=archive, check=True)
        folder = Path(scratch, "experiments")
        folder.mkdir()
        segments = segments_yaml(args.segment_attributes, args.segment_values)
        experiments = write_experiments(folder, args.experiments, segments)
        data = Dataset(
            experiments, datetime.now(UTC) - timedelta(days=args.days + WINDOW_DAYS), args.days,
            args.segment_attributes, args.segment_values,
        )  # fmt: skip
        units = max(len(experiments) * 4, args.events // EVENTS_PER_UNIT)
        print(f"  loaded in {load(url, data, (0, units), (0, args.events)):.0f} s", flush=True)
        source = str(psycopg.conninfo.conninfo_to_dict(url)["dbname"])
        order = [("baseline", baseline), ("this tree", ROOT)]
        results: dict[str, list[dict[str, Any]]] = {"baseline": [], "this tree": []}
        for pair in range(args.pairs):
            copies: dict[str, str] = {}
            try:
                for name, tree in order if pair % 2 == 0 else order[::-1]:
                    copies[name] = copy_database(args.admin_url, source)
                    result = run_child(tree, url_of(url, copies[name]), folder)
                    result["load"] = load_average()
                    results[name].append(result)
                    report(name, result)
                if pair == 0:
                    differ = differences(*(url_of(url, copies[n]) for n in results))
                    print("  rollup tables: " + ("identical" if not differ else
                          "DIFFERENT: " + ", ".join(differ)), flush=True)  # fmt: skip
            finally:
                for copy in copies.values():
                    drop_database(args.admin_url, copy)
    for name, runs in results.items():
        wall = sum(r["seconds"] for r in runs)
        cpu = sum(r["client_cpu"] + r["database_cpu"] for r in runs)
        events = sum(r["events"] for r in runs)
        print(
            f"{name}: {events / wall:,.0f} events/s, {1e6 * cpu / events:.0f} us CPU/event "
            f"({sum(r['client_cpu'] for r in runs) / len(runs):.1f} s Python + "
            f"{sum(r['database_cpu'] for r in runs) / len(runs):.1f} s PostgreSQL per run)"
        )
    base, new = results["baseline"], results["this tree"]
    ratio_wall = sum(r["seconds"] for r in base) / sum(r["seconds"] for r in new)
    ratio_cpu = (sum(r["client_cpu"] + r["database_cpu"] for r in base)
                 / sum(r["client_cpu"] + r["database_cpu"] for r in new))  # fmt: skip
    print(f"this tree vs baseline: {ratio_wall:.2f}x faster (wall), {ratio_cpu:.2f}x less CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
