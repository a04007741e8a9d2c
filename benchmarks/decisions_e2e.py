"""Decisions end to end: synthetic experiments replayed through the workers' own code.

Every look runs ``service.decisions.evaluation.analyze`` and ``service.decisions.rules.decide``
(what the Celery cycle calls) with the design fixed at the first look and the state carried
between looks (``service/decisions/simulation.py``). Per method (mSPRT, confidence sequence,
group-sequential), arm count and truth, it reports with 95 % Wilson intervals:

* A/A (no true difference): false decisions (any promotion, or a rollback for a worse
  primary), SRM halts, looks with a comparison left uncomputed, and the fixed-horizon test's
  false positives on the same data;
* A/B (the last treatment lifted so that the fixed-horizon test has about 80 % power at
  ``planned_units``): promotions of the better arm (power), wrong promotions, the median
  hours to the promotion, and the fixed-horizon test's power on the same data.

    python benchmarks/decisions_e2e.py [--experiments 400] [--look-minutes 60] [--days 14]
    python benchmarks/decisions_e2e.py --planned 19148 --lift-for 10000   # a plan's power

``--look-minutes 1`` is the default analysis cadence (ABX_ANALYSIS_INTERVAL_SECONDS=60); the
tests are anytime-valid, so the cadence changes time to decision, not the error rates.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import common
import numpy as np
from scipy import special

from service.decisions.simulation import Replay, Scenario, experiment_for, replay

METHODS = ("msprt", "confidence_sequence", "group_sequential")


def wilson(successes: int, trials: int) -> str:
    """``rate [low, high]`` with the 95 % Wilson score interval."""
    if trials == 0:
        return "n/a"
    z, rate = 1.959964, successes / trials
    centre = (rate + z * z / (2 * trials)) / (1 + z * z / trials)
    half = (
        z * math.sqrt(rate * (1 - rate) / trials + z * z / (4 * trials**2)) / (1 + z * z / trials)
    )
    return f"{rate:.3f} [{max(0.0, centre - half):.3f}, {min(1.0, centre + half):.3f}]"


def lift_for_power(arms: int, planned: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Relative lift of a 10 % rate that a Bonferroni z-test detects with ``power`` at ``planned``."""
    z = -special.ndtri(alpha / (arms - 1) / 2) + special.ndtri(power)
    return float(z * math.sqrt(2 * 0.1 * 0.9 / planned) / 0.1)


def run(method: str, arms: int, lifts: tuple[float, ...], args: argparse.Namespace,
        seed: int) -> list[Replay]:  # fmt: skip
    looks = {"looks": 5} if method == "group_sequential" else {}
    experiment = experiment_for(arms, method, args.metric, min_units=500, min_runtime_hours=24,
                                planned_units=args.planned, **looks)  # fmt: skip
    scenario = Scenario(args.units_per_day, args.days, args.look_minutes / 60.0, lifts, args.metric)
    rng = np.random.default_rng(seed)
    return [replay(experiment, scenario, rng, fixed_horizon=True) for _ in range(args.experiments)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=400)
    parser.add_argument("--look-minutes", type=float, default=60.0)
    parser.add_argument("--days", type=float, default=14.0)
    parser.add_argument("--units-per-day", type=int, default=2_000, help="per arm")
    parser.add_argument("--planned", type=int, default=10_000, help="planned_units per arm")
    parser.add_argument(
        "--lift-for", type=int, help="units/arm at which the lift gives 80 %% fixed power"
        " (default: --planned; pass it with --planned from `abx plan` to check a plan's power)",
    )  # fmt: skip
    parser.add_argument("--metric", choices=("binary", "continuous"), default="binary")
    parser.add_argument("--arms", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    print(f"# {common.code_version()}: {args.experiments} experiments per row, a look every "
          f"{args.look_minutes:g} min for {args.days:g} days, {args.units_per_day} units/day/arm, "
          f"planned_units {args.planned}, {args.metric} primary, alpha 0.05")  # fmt: skip
    for arms in args.arms:
        lift = lift_for_power(arms, args.lift_for or args.planned)
        for method in args.methods:
            started = time.perf_counter()
            null = run(method, arms, (0.0,) * (arms - 1), args, args.seed + arms)
            false = sum(r.decision == "promote" or bool(r.rollbacks) for r in null)
            halts = sum(r.decision == "halt" for r in null)
            errors = sum(r.looks_with_errors > 0 for r in null)
            fixed_false = sum(bool(r.fixed_horizon) for r in null)
            print(f"{method:20s} {arms} arms A/A: false decisions {wilson(false, len(null))}, "
                  f"SRM halts {wilson(halts, len(null))}, experiments with an uncomputed look "
                  f"{errors}; fixed horizon false positives {wilson(fixed_false, len(null))}")  # fmt: skip
            best = f"t{arms - 1}"
            lifted = run(method, arms, (0.0,) * (arms - 2) + (lift,), args, args.seed + 10 + arms)
            right = [r for r in lifted if r.decision == "promote" and r.variant == best]
            wrong = sum(r.decision == "promote" and r.variant != best for r in lifted)
            hours = statistics.median(r.hours for r in right if r.hours) if right else math.nan
            fixed_power = sum(best in r.fixed_horizon for r in lifted)
            print(f"{method:20s} {arms} arms lift {lift:.3f}: promoted the better arm "
                  f"{wilson(len(right), len(lifted))} (median {hours:.0f} h), wrong promotions "
                  f"{wrong}; fixed horizon power {wilson(fixed_power, len(lifted))} "
                  f"[{time.perf_counter() - started:.0f} s]", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
