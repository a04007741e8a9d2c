"""Bandits: the final comparison's false positives under adaptive weights, and regret saved.

Synthetic bandits replayed period by period through the workers' own analysis and
Thompson-sampling re-weighting (``service/decisions/bandit_simulation.py``: one look and one
re-weighting per allocation period, floors applied, the period-stratified difference under
the confidence sequence). Reported with 95 % Wilson intervals:

* A/A, with and without a common trend in the rate: how often any look's primary
  comparison is significant (the final comparison's false-positive rate, stopping at the
  first rejection as the always-valid interval allows), for the stratified estimator and,
  for contrast, the naive one that pools every period; SRM alarms on exact multinomial
  splits;
* A/B with a true best arm: expected conversions lost (regret) against always serving the
  best arm, for the bandit and for a fixed design at the YAML's weights on the same
  traffic, and the share of runs where the bandit's final comparison found the better arm.

    python benchmarks/bandit.py [--replays 1000] [--periods 30] [--units 1000]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import common
import numpy as np

from service.decisions.bandit_simulation import BanditReplay, BanditScenario, replay_bandit
from service.decisions.simulation import experiment_for


def wilson(successes: int, trials: int) -> str:
    """``rate [low, high]`` with the 95 % Wilson score interval."""
    z, rate = 1.959964, successes / trials
    centre = (rate + z * z / (2 * trials)) / (1 + z * z / trials)
    half = (
        z * math.sqrt(rate * (1 - rate) / trials + z * z / (4 * trials**2)) / (1 + z * z / trials)
    )
    return f"{rate:.4f} [{max(0.0, centre - half):.4f}, {min(1.0, centre + half):.4f}]"


def runs(arms: int, scenario: BanditScenario, replays: int, seed: int) -> list[BanditReplay]:
    experiment = experiment_for(
        arms, "bandit", alpha=0.05, planned_units=scenario.units_per_period * scenario.periods,
        bandit={"control_floor": 0.2, "arm_floor": 0.1 if arms == 2 else 0.05, "draws": 2000,
                "min_units": 100},
    )  # fmt: skip
    rng = np.random.default_rng(seed)
    return [replay_bandit(experiment, scenario, rng) for _ in range(replays)]


def mean_with_ci(values: list[float]) -> str:
    mean = statistics.fmean(values)
    half = 1.96 * statistics.stdev(values) / math.sqrt(len(values))
    return f"{mean:.1f} ± {half:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replays", type=int, default=1000)
    parser.add_argument("--periods", type=int, default=30)
    parser.add_argument("--units", type=int, default=1000, help="units per period")
    args = parser.parse_args()
    print(f"abx {common.code_version()}: {args.replays} replays, {args.periods} periods of "
          f"{args.units} units, alpha 0.05, one look and one re-weighting per period")  # fmt: skip
    started = time.perf_counter()
    print("\nA/A: any look significant (false-positive rate of the final comparison)")
    for arms, trend in ((2, 0.0), (2, 0.01), (3, 0.01)):
        base = tuple([0.05] * arms)
        for stratified in (True, False):
            scenario = BanditScenario(base, args.units, args.periods, trend, True, stratified)
            found = runs(arms, scenario, args.replays, seed=arms * 10 + int(trend * 1000))
            label = "stratified" if stratified else "pooled (naive; SRM on current weights)"
            print(f"  arms {arms}, trend {trend:+.2f}/period, {label:38}: false positives "
                  f"{wilson(sum(r.significant for r in found), len(found))}, SRM alarms "
                  f"{wilson(sum(r.srm_flagged for r in found), len(found))}")  # fmt: skip
    print("\nA/B with a true best arm: regret (expected conversions lost) vs a fixed design")
    for rates in ((0.10, 0.12), (0.10, 0.11, 0.13)):
        total = args.units * args.periods
        adaptive = runs(len(rates), BanditScenario(rates, args.units, args.periods),
                        args.replays, seed=101)  # fmt: skip
        fixed = runs(len(rates), BanditScenario(rates, args.units, args.periods, adaptive=False),
                     args.replays, seed=101)  # fmt: skip
        saved = 1 - statistics.fmean(r.regret for r in adaptive) / statistics.fmean(
            r.regret for r in fixed
        )
        best = f"t{len(rates) - 1}"
        best_share = statistics.fmean(r.units[best] / sum(r.units.values()) for r in adaptive)
        found_best = sum(bool(r.better) and r.variant == best for r in adaptive)
        print(f"  rates {rates}, {total} units: bandit {mean_with_ci([r.regret for r in adaptive])}"
              f", fixed {mean_with_ci([r.regret for r in fixed])} ({saved:.0%} saved); best arm "
              f"got {best_share:.0%} of units; final comparison found it better than the control in "
              f"{wilson(found_best, len(adaptive))}")  # fmt: skip
    print(f"\n{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
