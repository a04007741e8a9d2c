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
from common import (
    DEFAULT_ADMIN_URL,
    ROOT,
    abx_command,
    bench_database,
    code_version,
    load_average,
    roll_up,
)
from psycopg.types.json import Jsonb

# ``common`` put this tree first on sys.path: ``service`` is imported only inside functions,
# and a child first puts its own tree (``--child``'s TREE) before it, so that the baseline's
# child runs the baseline's ``service`` (``analysis_cycle`` imports ``service``: the same).

COMPARED = (
    "unit_outcomes", "metric_stats", "metric_cohort_stats", "exposure_counts", "segment_values",
    "segment_exposure_counts", "segment_metric_stats", "outcome_counts", "outcomes",
    "rollup_state", "ratio_pairs", "ratio_stats", "ratio_cohort_stats", "bandit_periods",
    "period_exposure_counts", "period_metric_stats", "period_ratio_stats",
)  # fmt: skip
RATIO = (
    "    - {name: revenue_per_session, type: ratio, numerator: revenue, denominator: sessions}\n"
)
BANDIT = """  bandit:
    control_floor: 0.2
    arm_floor: 0.05
"""


def add_designs(folder: Path, count: int) -> list[Any]:
    """Give the generated experiments the rest of what the rollup keeps.

    Every one a ratio metric (revenue per session, with CUPED from the pre-period events);
    every fourth (index 2 mod 4) a 3-day window on the ratio and its parts (cohort sums);
    every tenth (index 5 mod 10) ``method: bandit`` (per-period sums, ``bandit_allocations``).
    """
    from analysis_cycle import experiment_key

    from service.experiments.validation import load_experiments

    for index in range(count):
        path = folder / f"{experiment_key(index)}.yaml"
        text = path.read_text()
        sessions = "    - {name: sessions, type: count, direction: increase}\n"
        text = text.replace(sessions, sessions + RATIO)
        if index % 4 == 2:
            for name in ("revenue", "sessions", "revenue_per_session"):
                start = text.index(f"{{name: {name},")
                end = text.index("}", start)
                text = f"{text[:end]}, window: 3d{text[end:]}"
        if index % 10 == 5:
            text = text.replace("  method: msprt\n", "  method: bandit\n" + BANDIT)
        path.write_text(text)
    checked = subprocess.run([*abx_command(), "validate", str(folder)], capture_output=True,
                             text=True, timeout=120, cwd=ROOT)  # fmt: skip
    if checked.returncode != 0:
        raise SystemExit(f"the experiment files are invalid:\n{checked.stdout}{checked.stderr}")
    return [item.experiment for item in load_experiments([folder]).experiments]


def bandit_allocations(url: str, experiments: Sequence[Any], start: datetime, days: int) -> None:
    """Three allocations per bandit (at the start, a third and two thirds into the exposures):
    its exposures fall into three periods."""
    with psycopg.connect(url, autocommit=True) as conn:
        for experiment in experiments:
            if experiment.policy.method != "bandit":
                continue
            conn.execute(
                "INSERT INTO experiments (key, seed, status, definition, definition_sha256,"
                " source_file) VALUES (%s, %s, 'running', '{}', '', 'bench')",
                (experiment.key, experiment.seed),
            )
            for third in range(3):
                conn.execute(
                    "INSERT INTO allocations (experiment_key, seed, weights, fingerprint,"
                    " effective_at) VALUES (%s, %s, %s, 'bench', %s)",
                    (experiment.key, experiment.seed, Jsonb({"control": 0.5}),
                     start + timedelta(days=days * third / 3)),
                )  # fmt: skip


def child_main(tree: Path, url: str, folder: Path) -> int:
    """Roll ``url`` up until idle with ``tree``'s ``service``; print the result."""
    sys.path[:0] = [str(tree), str(tree / "sdk" / "python")]
    import service
    from service.experiments.validation import load_experiments

    if Path(service.__file__).resolve().parents[1] != tree.resolve():
        raise SystemExit(f"service imported from {service.__file__}, not from {tree}")
    from service.events.periods import configured_bandits_from, settle_guard
    from service.events.ratios import configured_pairs_from
    from service.events.rollup import metric_windows_from, windows_from
    from service.events.segments import segment_specs_from
    from service.settings import Settings

    experiments = {i.experiment.key: i.experiment for i in load_experiments([folder]).experiments}
    settings = Settings()
    grace = timedelta(seconds=settings.attribution_grace_seconds)
    with psycopg.connect(url) as conn:
        (events,) = conn.execute("SELECT count(*) FROM outcomes").fetchone() or (0,)
    result = roll_up(
        url, windows_from(experiments), grace, int(events), 7200.0,
        segment_specs_from(experiments), metric_windows=metric_windows_from(experiments),
        ratio_pairs=configured_pairs_from(experiments),
        bandits=configured_bandits_from(experiments, settle_guard(settings.state_poll_seconds)),
    )  # fmt: skip
    print(json.dumps({
        "service": str(Path(service.__file__).resolve().parent), "events": result.events, "seconds": result.seconds, "complete": result.complete,
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
        [sys.executable, str(Path(__file__).resolve()), "--child", str(tree), url, str(folder)],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": path}, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"the rollup with {tree} failed:\n{done.stderr[-3000:]}")
    found: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if Path(found["service"]) != (tree / "service").resolve():
        raise SystemExit(f"the child for {tree} ran {found['service']}")
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
        print(f"    {table}: {digests[0][0]:,} rows", flush=True)
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
    parser.add_argument(
        "--plain",
        action="store_true",
        help="no ratio metric, metric window or bandit (only segments, CUPED)",
    )
    parser.add_argument("--admin-url", default=DEFAULT_ADMIN_URL)
    parser.add_argument(
        "--child", nargs=3, metavar=("TREE", "URL", "FOLDER"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.child:
        return child_main(Path(args.child[0]), args.child[1], Path(args.child[2]))
    from analysis_cycle import (
        EVENTS_PER_UNIT,
        WINDOW_DAYS,
        Dataset,
        load,
        segments_yaml,
        write_experiments,
    )

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
        if not args.plain:
            experiments = add_designs(folder, args.experiments)
        data = Dataset(
            experiments, datetime.now(UTC) - timedelta(days=args.days + WINDOW_DAYS), args.days,
            args.segment_attributes, args.segment_values,
        )  # fmt: skip
        units = max(len(experiments) * 4, args.events // EVENTS_PER_UNIT)
        print(f"  loaded in {load(url, data, (0, units), (0, args.events)):.0f} s", flush=True)
        bandit_allocations(url, experiments, data.start, args.days)
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
