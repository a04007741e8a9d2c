"""The SRM gate of healthy and broken experiments, at the default 60 s cadence, over 60 days.

Each replay runs the workers' own SRM code and rules at every look
(``service/decisions/srm_simulation.py``: ``evaluation.srm_period``, the per-day tests of
``evaluation.srm_day_flagged``, ``rules.decide``), without the metric comparisons the SRM
decision does not read, so a look costs about 35 us instead of 0.6-2.6 ms. Reports, with
95 % Wilson intervals:

* healthy (traffic at the configured split) experiments halted within ``--days``, for each
  arm count, split into halts by the period's anytime-valid test and by a day's own test;
* a 49/51 split of 2 arms (configured 50/50) detected by 100,000 units in all (the look
  that reaches them included).

The rows are replayed in turn (one replay of each, then the next), so that a run stopped
early has them all at about the same count; progress every 25.

    python benchmarks/srm_replay.py [--experiments 400] [--arms 2 3] [--days 60]
        [--look-minutes 1] [--units-per-day 2000] [--detection 400]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import common
import numpy as np

from service.decisions.srm_simulation import SrmReplay, SrmScenario, replay_srm, srm_experiment


def rows(label: str, found: list[SrmReplay], started: float, cpu: float) -> str:
    halts = [r for r in found if r.halted]
    by_day = sum(r.by_day for r in halts)
    looks = sum(r.looks for r in found)
    return (f"{label}: halted {common.wilson(len(halts), len(found), digits=4)} ({len(halts)} of {len(found)}; "
            f"{by_day} by a day's test); {looks} looks, {cpu / looks * 1e6:.0f} us CPU a look; "
            f"{time.perf_counter() - started:.0f} s wall, load {common.load_average()}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--experiments", type=int, default=400, help="healthy replays per arm count"
    )
    parser.add_argument("--arms", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--days", type=float, default=60.0)
    parser.add_argument("--look-minutes", type=float, default=1.0)
    parser.add_argument("--units-per-day", type=int, default=2_000, help="per arm")
    parser.add_argument("--detection", type=int, default=400, help="49/51 replays (0: none)")
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    hours = args.look_minutes / 60.0
    print(f"# {common.code_version()}: pid {os.getpid()}, a look every {args.look_minutes:g} min"
          f" for {args.days:g} days, {args.units_per_day} units/day/arm, srm_threshold 0.001",
          flush=True)  # fmt: skip
    experiments = {arms: srm_experiment(arms) for arms in {*args.arms, 2}}
    scenario = SrmScenario(args.units_per_day, args.days, hours)
    rngs = {arms: np.random.default_rng(args.seed + arms) for arms in args.arms}
    found: dict[int, list[SrmReplay]] = {arms: [] for arms in args.arms}
    cpu_used = dict.fromkeys(args.arms, 0.0)
    broken = SrmScenario(args.units_per_day, args.days, hours, (0.49, 0.51), 100_000)
    broken_rng = np.random.default_rng(args.seed + 49)
    detected: list[SrmReplay] = []
    detection_cpu = 0.0
    started = time.perf_counter()
    for index in range(max(args.experiments, args.detection)):  # all rows grow together
        if index < args.detection:
            cpu_started = time.process_time()
            detected.append(replay_srm(experiments[2], broken, broken_rng))
            detection_cpu += time.process_time() - cpu_started
        for arms in args.arms if index < args.experiments else ():
            cpu_started = time.process_time()
            replay = replay_srm(experiments[arms], scenario, rngs[arms])
            cpu_used[arms] += time.process_time() - cpu_started
            found[arms].append(replay)
            if replay.halted:
                print(f"  {arms} arms, replay {index + 1}: halt at {replay.hours:.2f} h, "
                      f"{replay.units} units, {'a day' if replay.by_day else 'the period'}'s test",
                      flush=True)  # fmt: skip
        if (index + 1) % 25 == 0 or index + 1 == max(args.experiments, args.detection):
            for arms in args.arms:
                print(rows(f"healthy {arms} arms", found[arms], started, cpu_used[arms]),
                      flush=True)  # fmt: skip
            if detected:
                at = sorted(r.units for r in detected if r.halted)
                print(rows("49/51, 2 arms, by 100,000 units", detected, started, detection_cpu)
                      + (f"; units at the halt: median {statistics.median(at):.0f}, max {at[-1]}"
                         if at else ""), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
