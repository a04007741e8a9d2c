"""The client SDK: local assignment against GrowthBook's reused client, calls with the server
stopped, and how fast a change reaches connected SDKs through the stream.

One real ``abx serve`` (2 workers, the example experiments, production poll settings:
``ABX_STATE_POLL_SECONDS`` 1, ``ABX_RELOAD_POLL_SECONDS`` 1) on a fresh benchmark database.

1. **Local assign**: ``Client.assign`` on ``checkout_ranker`` (targeting, coverage, 3
   variants; exposures queued and sent by the SDK's own thread meanwhile) against GrowthBook's
   reused client on the same experiment (``run`` and ``eval_feature``, the faster is the
   reference; ``benchmarks/assign_core.py`` explains both), units per second, median of
   ``--repeats``, and each call's latency over ``--units`` calls on all example experiments
   (p50, p99, max). Target: at least 3x GrowthBook, p99 under 50 µs.
2. **Server stopped**: the follower SDKs of (3) are closed (the promise is about one client in
   the application), the server is stopped, then ``--units`` calls of one application thread
   (all examples, the last snapshot in force) are timed one by one. Target: none over 1 ms.
   A machine shared with other work can stall any thread for milliseconds, so each call over
   1 ms is put down to what took most of its time, from the thread's
   ``/proc/thread-self/schedstat`` read before and after it (outside the timed span): its own
   CPU time (the SDK's work, or a stolen virtual CPU), waiting on the run queue for a core,
   or neither (blocked: asleep on a lock or the GIL). A thread woken from a GIL or lock wait
   also queues for a core, so on a loaded machine a wait for another thread of this process
   shows mostly as ``run queue`` too: ``sdk_stall.py`` prints the background threads' CPU to
   tell the two apart. CPU time is counted in scheduler ticks, so ``own CPU`` is approximate;
   the slow calls whose own CPU (``time.thread_time``, exact; waits for a core do not count)
   exceeded 1 ms are counted too, and the garbage collections of the pass by generation (how
   many, the longest) with the young generation's size before and after.
3. **Propagation**: ``--clients`` SDKs follow the stream; ``--changes`` decisions (pause,
   resume through the API) and YAML weight changes; the time from the change (the API's
   answer, the file's write) until each SDK holds a new snapshot. Target: median under 1 s.

Also printed: the resident memory of this process (the SDK's side) and of the server's workers.

Run: ``python benchmarks/sdk.py [--units N] [--repeats R] [--clients C] [--changes K]``.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import requests
import yaml
from common import (
    DEFAULT_ADMIN_URL,
    ROOT,
    abx_command,
    bench_database,
    code_version,
    load_average,
    percentile,
    print_header,
    rss_mib,
    serving,
    stop,
)
from growthbook import Experiment as GrowthBookExperiment
from growthbook import GrowthBook

from abx_client import Client
from service.experiments.schema import Experiment
from service.experiments.validation import load_experiments

# The same units, attributes and GrowthBook setups as benchmarks/assign_core.py (which says why
# these two GrowthBook paths), repeated here: scripts share code only through common.py.
COUNTRIES = ("US", "CA", "GB", "DE", "FR", "BR", "JP", "IN")
APP_VERSIONS = ("1.2.0", "1.9.9", "2.0.0", "2.0.1", "2.3.7", "2.10.0", "3.0.0", "3.1.0-beta.2")
PLATFORMS = ("ios", "android", "web")
GROWTHBOOK_CONDITION = {
    "country": {"$in": ["US", "CA", "GB", "DE"]},
    "app_version": {"$vgte": "2.0.0"},
}
Pass = Callable[[int], None]


def make_units(count: int, seed: int = 20240601) -> tuple[list[str], list[dict[str, Any]]]:
    rng = random.Random(seed)
    units = [f"user-{i:08d}" for i in range(count)]
    attributes = [
        {"country": rng.choice(COUNTRIES[:4]) if rng.random() < 0.75 else rng.choice(COUNTRIES),
         "app_version": rng.choice(APP_VERSIONS), "platform": rng.choice(PLATFORMS)}
        for _ in units
    ]  # fmt: skip
    return units, attributes


def growthbook_passes(experiment: Experiment, units: Sequence[str],
                      attributes: Sequence[dict[str, Any]]) -> list[Pass]:  # fmt: skip
    """GrowthBook's reused client: ``run`` of an inline experiment, and ``eval_feature``."""
    gb_attributes = [{"id": u, **a} for u, a in zip(units, attributes, strict=True)]
    rule: dict[str, Any] = {
        "key": experiment.key, "variations": list(experiment.variant_keys),
        "weights": [v.weight for v in experiment.variants], "coverage": experiment.coverage,
        "seed": experiment.seed, "hashVersion": 2, "condition": GROWTHBOOK_CONDITION,
    }  # fmt: skip
    inline = GrowthBookExperiment(**rule)
    runner = GrowthBook()
    features = GrowthBook(
        features={experiment.key: {"defaultValue": experiment.control, "rules": [rule]}}
    )

    def run(count: int) -> None:
        for unit_attributes in gb_attributes[:count]:
            runner.set_attributes(unit_attributes)
            runner.run(inline)

    def feature(count: int) -> None:
        for unit_attributes in gb_attributes[:count]:
            features.set_attributes(unit_attributes)
            features.eval_feature(experiment.key)

    return [run, feature]


def measure_rates(passes: Sequence[Pass], count: int, repeats: int) -> list[list[float]]:
    """Units per second of each pass, taking turns within each repeat, after a warm-up."""
    for run in passes:
        run(min(count, 2_000))
    rates: list[list[float]] = [[] for _ in passes]
    for _ in range(repeats):
        for index, run in enumerate(passes):
            started = time.perf_counter()
            run(count)
            rates[index].append(count / (time.perf_counter() - started))
    return rates


EXPERIMENTS = ("checkout_ranker", "retention_offer", "search_embeddings", "search_reranker",
               "churn_model")  # fmt: skip


def sdk_pass(client: Client, units: Sequence[str], attributes: Sequence[dict[str, Any]]) -> Any:
    def run(count: int) -> None:
        for unit_id, unit_attributes in zip(units[:count], attributes[:count], strict=True):
            client.assign("checkout_ranker", unit_id, unit_attributes)

    return run


def call_times(
    client: Client, units: Sequence[str], attributes: Sequence[dict[str, Any]]
) -> dict[str, list[float]]:
    """Seconds of each call, cycling through the example experiments, by who answered:
    ``local`` (the snapshot), ``server`` (a moved-range unit), ``sdk`` (no answer came)."""
    times: dict[str, list[float]] = {"local": [], "server": [], "sdk": []}
    clock = time.perf_counter
    for index, (unit_id, unit_attributes) in enumerate(zip(units, attributes, strict=True)):
        experiment = EXPERIMENTS[index % len(EXPERIMENTS)]
        started = clock()
        answer = client.assign(experiment, unit_id, unit_attributes)
        times[answer.source].append(clock() - started)
    return times


def attributed_call_times(
    client: Client, units: Iterable[str], attributes: Iterable[dict[str, Any]]
) -> tuple[dict[str, list[float]], dict[str, int], list[float], list[list[tuple[float, float]]]]:
    """``call_times``; for each call over 1 ms what took most of it (see the docstring); the
    slow calls' own CPU seconds (``time.thread_time``); each generation's collections (seconds,
    and CPU seconds of the thread that ran each: a collection runs in whichever thread's
    allocation triggered it, and its CPU time, unlike its wall time, does not grow with the load).

    Pass iterators over lists made long before (``reversed(units)``), not new lists: a list
    made just before the loop is young, and the collector walks every item of a young
    container. Two new 100,000-item lists here (``list(reversed(...))``, as this script once
    did) cost the pass's first young and first generation-1 collection 2.6-4.3 ms of CPU each:
    the two own-CPU calls over 1 ms that were put down to the SDK (benchmarks/README.md)."""
    times: dict[str, list[float]] = {"local": [], "server": [], "sdk": []}
    causes = {"own CPU": 0, "run queue": 0, "blocked": 0}
    busy: list[float] = []
    collections: list[list[tuple[float, float]]] = [[], [], []]
    collection_started = [0.0, 0.0]

    def on_collection(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            collection_started[:] = time.perf_counter(), time.thread_time()
        else:
            collections[info["generation"]].append(
                (time.perf_counter() - collection_started[0],
                 time.thread_time() - collection_started[1])
            )  # fmt: skip

    clock, cpu_clock = time.perf_counter, time.thread_time
    schedstat = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
    gc.callbacks.append(on_collection)

    def read() -> tuple[int, int]:
        running, waiting, _ = os.pread(schedstat, 100, 0).split()
        return int(running), int(waiting)

    try:
        for index, (unit_id, unit_attributes) in enumerate(zip(units, attributes, strict=True)):
            experiment = EXPERIMENTS[index % len(EXPERIMENTS)]
            running, waiting = read()
            cpu = cpu_clock()
            started = clock()
            answer = client.assign(experiment, unit_id, unit_attributes)
            seconds = clock() - started
            times[answer.source].append(seconds)
            if seconds > 0.001:
                busy.append(cpu_clock() - cpu)
                running_after, waiting_after = read()
                parts = {"own CPU": running_after - running, "run queue": waiting_after - waiting}
                parts["blocked"] = int(seconds * 1e9) - sum(parts.values())
                causes[max(parts, key=lambda part: parts[part])] += 1
    finally:
        gc.callbacks.remove(on_collection)
        os.close(schedstat)
    return times, causes, busy, collections


def describe(times: Sequence[float]) -> str:
    if not times:
        return "none"
    return (f"p50 {percentile(times, 0.5) * 1e6:.1f} µs, p99 {percentile(times, 0.99) * 1e6:.1f} µs,"
            f" p99.99 {percentile(times, 0.9999) * 1e6:.0f} µs, max {max(times) * 1e6:.0f} µs")  # fmt: skip


def wait_all(clients: Sequence[Client], old: Sequence[str | None], timeout: float) -> list[float]:
    """Seconds until each client's version differs from ``old`` (nan if it never did)."""
    started = time.perf_counter()
    seen: list[float] = [float("nan")] * len(clients)
    while time.perf_counter() - started < timeout:
        for index, client in enumerate(clients):
            if seen[index] != seen[index] and client.version != old[index]:
                seen[index] = time.perf_counter() - started
        if all(value == value for value in seen):
            break
        time.sleep(0.001)
    return seen


def propagation(
    base_url: str, experiments: Path, clients: Sequence[Client], changes: int
) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {"decision": [], "yaml weights": []}
    yaml_file = experiments / "search_embeddings.yaml"
    for index in range(changes):
        old = [c.version for c in clients]
        action = "pause" if index % 2 == 0 else "resume"
        answer = requests.post(f"{base_url}/v1/experiments/retention_offer/actions",
                               json={"action": action, "reason": "benchmark"}, timeout=10)  # fmt: skip
        answer.raise_for_status()
        results["decision"] += wait_all(clients, old, 15)
        time.sleep(0.5)
        old = [c.version for c in clients]
        definition = yaml.safe_load(yaml_file.read_text())
        weight = 0.5 + 0.05 * (index + 1) * (1 if index % 2 == 0 else -1)
        definition["variants"][0]["weight"] = round(weight, 2)
        definition["variants"][1]["weight"] = round(1 - weight, 2)
        yaml_file.write_text(yaml.safe_dump(definition, sort_keys=False))
        results["yaml weights"] += wait_all(clients, old, 15)
        time.sleep(4.0)  # the announced weights take effect (ABX_ALLOCATION_SETTLE_SECONDS)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--units", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--changes", type=int, default=5)
    parser.add_argument("--admin-url", default=DEFAULT_ADMIN_URL)
    args = parser.parse_args(argv)

    loaded = load_experiments([ROOT / "experiments"], ROOT / "experiments" / "models")
    ranker = next(i.experiment for i in loaded.experiments if i.experiment.key == "checkout_ranker")
    units, attributes = make_units(args.units)
    print(f"abx {code_version()}, python {sys.version.split()[0]}, load {load_average()}")
    rss_before = rss_mib(os.getpid())
    with (
        bench_database(None, args.admin_url) as database_url,
        tempfile.TemporaryDirectory(prefix="abx-bench-sdk-") as scratch,
    ):
        folder = Path(scratch) / "experiments"
        shutil.copytree(ROOT / "experiments", folder, ignore=shutil.ignore_patterns("models"))
        env = {**os.environ, "ABX_DATABASE_URL": database_url, "ABX_EXPERIMENTS": str(folder),
               "ABX_MODELS": str(ROOT / "experiments" / "models"), "ABX_AUTH": "off"}  # fmt: skip
        env.pop("ABX_API_KEY", None)
        command = [*abx_command(), "serve", "--no-migrate", "--workers", "2"]
        with serving("abx", command, env, Path(scratch), 2) as server:
            client = Client(server.url, None)
            assert client.wait_ready(10), "no snapshot"
            followers = [Client(server.url, None) for _ in range(args.clients)]
            assert all(f.wait_ready(10) for f in followers)

            print_header("1. local assign on checkout_ranker (units/s, median of repeats)")
            passes = [sdk_pass(client, units, attributes),
                      *growthbook_passes(ranker, units, attributes)]  # fmt: skip
            count = min(args.units, 50_000)
            rates = [statistics.median(r) for r in measure_rates(passes, count, args.repeats)]
            for name, rate in zip(("abx-client", "GrowthBook run", "GrowthBook eval_feature"),
                                  rates, strict=True):  # fmt: skip
                print(f"  {name:<24} {rate:>10,.0f}/s")
            print(
                f"  ratio to the faster GrowthBook: {rates[0] / max(rates[1:]):.2f}x (target >= 3x)"
            )
            times = call_times(client, units, attributes)
            print(f"  per call, all examples, {len(times['local']):,} local answers:"
                  f" {describe(times['local'])} (target p99 < 50 µs)")  # fmt: skip
            print(f"  SDK counters: {client.stats()}")

            print_header("3. propagation through the stream (seconds, every client)")
            results = propagation(server.url, folder, followers, args.changes)
            for kind, seconds in results.items():
                done = [s for s in seconds if s == s]
                print(f"  {kind:<13} median {statistics.median(done):.3f} s, max {max(done):.3f} s,"
                      f" {len(done)}/{len(seconds)} received (target median < 1 s)")  # fmt: skip
            workers = [rss_mib(pid) for pid in server.workers]
            for follower in followers:
                follower.close()

            stop(server.process)
            print_header("2. the server stopped: one client, one thread, every call timed")
            time.sleep(1.0)
            load = load_average()
            young = len(gc.get_objects(0))
            times, causes, busy, collections = attributed_call_times(
                client, reversed(units), reversed(attributes)
            )
            every = [t for group in times.values() for t in group]
            slow = sum(t > 0.001 for t in every)
            print(f"  {len(every):,} calls: {describe(every)}; over 1 ms: {slow} (target 0);"
                  f" load {load} before, {load_average()} after")  # fmt: skip
            print(f"  calls over 1 ms by what took most of them: {causes}; own CPU over 1 ms"
                  f" (thread_time): {sum(b > 0.001 for b in busy)}, max"
                  f" {max(busy, default=0) * 1e3:.2f} ms")  # fmt: skip
            print("  garbage collections: " + "; ".join(
                f"gen {g}: {len(s)}, max {max((w for w, _ in s), default=0) * 1e3:.2f} ms"
                f" ({max((c for _, c in s), default=0) * 1e3:.2f} ms CPU)"
                for g, s in enumerate(collections)) + f"; young generation {young:,} objects"
                f" before, {len(gc.get_objects(0)):,} after")  # fmt: skip
            for source, group in times.items():
                over = sum(t > 0.001 for t in group)
                print(f"    answered by {source:<6} {len(group):>7,}: {describe(group)};"
                      f" over 1 ms: {over}")  # fmt: skip
            print(f"  SDK counters: {client.stats()}")
        client.close()
    print()
    print(f"VmRSS this process (SDK side): {rss_before:.0f} MiB before the clients,"
          f" {rss_mib(os.getpid()):.0f} MiB at the end; server workers"
          f" {', '.join(f'{w:.0f}' for w in workers)} MiB")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
