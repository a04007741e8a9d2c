"""Calls over 1 ms with the server stopped: this SDK against an earlier one, in one process.

``sdk.py`` phase 2 times one client. This script looks for where slow calls come from: it
loads the SDK of ``--baseline`` (a git revision; ``abx_client`` copied from it and renamed
``abx_client_baseline``) beside the working tree's, starts one ``abx serve`` (2 workers), makes
both clients and 3 followers ready, lets each assign ``--units`` units (as phase 1 does),
changes one experiment's weights (moved ranges, as phase 3 leaves them) and stops the server.
Then, for each SDK in turn, ``--units`` new units are timed one by one, with the garbage
collector on and off, first with the followers alive and then closed. For each pass it prints
the calls over 1 ms, what took most of each (``sdk.py`` says how: own CPU, run queue,
blocked), how many overlapped a collection, how many used over 1 ms of the thread's own CPU
(``time.thread_time``: waits for a core do not count, so this holds on a loaded machine
too; time a hypervisor steals from a virtual CPU still does), and the CPU seconds the SDK's background threads
used meanwhile (``/proc/self/task/*/stat``); then the collections that ran in the pass by
generation (how many, the longest) and the objects in the young generation before and after
(what a young collection must walk).

Run: ``python benchmarks/sdk_stall.py [--baseline REV] [--units N]``.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from common import (
    CLOCK_TICKS,
    DEFAULT_ADMIN_URL,
    ROOT,
    abx_command,
    bench_database,
    code_version,
    load_average,
    percentile,
    serving,
    stop,
)

from abx_client import Client
from sdk import EXPERIMENTS, call_times, make_units


def baseline_client(revision: str, folder: Path) -> Any:
    """The ``Client`` class of ``revision``'s SDK, imported as ``abx_client_baseline``."""
    package = folder / "abx_client_baseline"
    package.mkdir()
    listing = subprocess.run(
        ["git", "ls-tree", "--name-only", f"{revision}:sdk/python/abx_client"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    for name in listing:
        text = subprocess.run(
            ["git", "show", f"{revision}:sdk/python/abx_client/{name}"],
            cwd=ROOT, check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
        (package / name).write_text(text.replace("abx_client", "abx_client_baseline"))
    sys.path.insert(0, str(folder))
    from abx_client_baseline import Client as Baseline  # type: ignore[import-not-found]

    return Baseline


def background_cpu() -> dict[str, float]:
    """CPU seconds of each SDK background thread of this process so far."""
    seconds = {}
    for thread in threading.enumerate():
        if not thread.name.startswith("abx-client") or thread.native_id is None:
            continue
        try:
            stat = Path(f"/proc/self/task/{thread.native_id}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        seconds[f"{thread.name}-{thread.native_id}"] = (
            int(fields[11]) + int(fields[12])
        ) / CLOCK_TICKS
    return seconds


def timed_pass(client: Any, tag: str, count: int, collect: bool) -> None:
    units, attributes = make_units(count, seed=sum(tag.encode()))
    units = [f"{tag}-{unit}" for unit in units]
    spans: list[tuple[float, float, int]] = []
    started_at = [0.0]

    def on_collection(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started_at[0] = time.perf_counter()
        else:
            spans.append((started_at[0], time.perf_counter(), info["generation"]))

    # Both SDKs share this process's collector: start each pass from an empty young
    # generation, or one SDK's pass would walk what the other's left there.
    gc.collect()
    gc.callbacks.append(on_collection)
    if not collect:
        gc.disable()
    cpu_before, load = background_cpu(), load_average()
    young_before = len(gc.get_objects(0))
    times: list[float] = []
    starts: list[float] = []
    causes = {"own CPU": 0, "run queue": 0, "blocked": 0}
    schedstat = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
    clock, cpu_clock = time.perf_counter, time.thread_time
    busy: list[float] = []  # the slow calls' own CPU seconds, exact (CLOCK_THREAD_CPUTIME_ID)
    try:
        for index, (unit_id, unit_attributes) in enumerate(zip(units, attributes, strict=True)):
            running, waiting, _ = os.pread(schedstat, 100, 0).split()
            cpu = cpu_clock()
            started = clock()
            client.assign(EXPERIMENTS[index % len(EXPERIMENTS)], unit_id, unit_attributes)
            seconds = clock() - started
            times.append(seconds)
            starts.append(started)
            if seconds > 0.001:
                busy.append(cpu_clock() - cpu)
                running_after, waiting_after, _ = os.pread(schedstat, 100, 0).split()
                parts = {"own CPU": int(running_after) - int(running),
                         "run queue": int(waiting_after) - int(waiting)}  # fmt: skip
                parts["blocked"] = int(seconds * 1e9) - sum(parts.values())
                causes[max(parts, key=lambda part: parts[part])] += 1
    finally:
        os.close(schedstat)
        gc.enable()
        gc.callbacks.remove(on_collection)
    cpu_after = background_cpu()
    slow = [(s, t) for s, t in zip(starts, times, strict=True) if t > 0.001]
    in_collection = sum(1 for s, t in slow if any(a < s + t and b > s for a, b, _ in spans))
    collections = []
    for generation in range(3):
        seconds = [b - a for a, b, g in spans if g == generation]
        collections.append(
            f"gen {generation}: {len(seconds)}, max {max(seconds, default=0) * 1e3:.2f} ms"
        )
    background = sum(cpu_after[k] - cpu_before.get(k, 0.0) for k in cpu_after)
    print(f"  {tag:<34} over 1 ms: {len(slow):>5} ({causes}; {in_collection} during a"
          f" collection); p99 {percentile(times, 0.99) * 1e6:.1f} µs, max {max(times) * 1e3:.1f}"
          f" ms; background threads {background:.2f} CPU s; load {load}", flush=True)  # fmt: skip
    print(f"  {'':<34} own CPU over 1 ms (thread_time, whatever the load): {sum(b > 0.001 for b in busy)},"
          f" max {max(busy, default=0) * 1e3:.2f} ms", flush=True)  # fmt: skip
    print(f"  {'':<34} collections {'; '.join(collections)}; young generation {young_before:,}"
          f" objects before, {len(gc.get_objects(0)):,} after", flush=True)  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", default="93c97a2", help="git revision of the other SDK")
    parser.add_argument("--units", type=int, default=100_000)
    parser.add_argument("--admin-url", default=DEFAULT_ADMIN_URL)
    args = parser.parse_args(argv)
    units, attributes = make_units(args.units)
    print(f"abx {code_version()} against the SDK of {args.baseline}, load {load_average()}")
    with (
        bench_database(None, args.admin_url) as database_url,
        tempfile.TemporaryDirectory(prefix="abx-bench-sdk-stall-") as scratch,
    ):
        clients: dict[str, Any] = {
            args.baseline: baseline_client(args.baseline, Path(scratch)),
            "this tree": Client,
        }
        folder = Path(scratch) / "experiments"
        shutil.copytree(ROOT / "experiments", folder, ignore=shutil.ignore_patterns("models"))
        env = {**os.environ, "ABX_DATABASE_URL": database_url, "ABX_EXPERIMENTS": str(folder),
               "ABX_MODELS": str(ROOT / "experiments" / "models"), "ABX_AUTH": "off"}  # fmt: skip
        env.pop("ABX_API_KEY", None)
        command = [*abx_command(), "serve", "--no-migrate", "--workers", "2"]
        with serving("abx", command, env, Path(scratch), 2) as server:
            made = {name: make(server.url, None) for name, make in clients.items()}
            followers = [Client(server.url, None) for _ in range(3)]
            assert all(c.wait_ready(10) for c in [*made.values(), *followers]), "no snapshot"
            for client in made.values():
                call_times(client, units, attributes)
            path = folder / "search_embeddings.yaml"
            definition = yaml.safe_load(path.read_text())
            definition["variants"][0]["weight"], definition["variants"][1]["weight"] = 0.55, 0.45
            old = [c.version for c in made.values()]
            path.write_text(yaml.safe_dump(definition, sort_keys=False))
            deadline = time.monotonic() + 15
            while [c.version for c in made.values()] == old and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(4.5)  # the announced weights take effect
            stop(server.process)
            time.sleep(1.0)
            for alive in (True, False):
                if not alive:
                    for follower in followers:
                        follower.close()
                for name, client in made.items():
                    for collect in (True, False):
                        tag = (f"{name}, followers {'alive' if alive else 'closed'},"
                               f" gc {'on' if collect else 'off'}")  # fmt: skip
                        timed_pass(client, tag, args.units, collect)
            for client in made.values():
                client.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
