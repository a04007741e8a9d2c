"""Decisions end to end: synthetic experiments replayed through the workers' own code.

Every look runs ``service.decisions.evaluation.analyze`` and ``service.decisions.rules.decide``
(what the Celery cycle calls) with the design fixed at the first look and the state carried
between looks (``service/decisions/simulation.py``), on binary, heavy-tailed continuous
(log-normal revenue) or ratio (revenue per session) primary metrics, with a refund-rate
guardrail and the model-health guardrails (p99 latency within 10 %, fallback rate within 1
point) replayed in the same looks (``--guardrails``, on by default). Per method (mSPRT,
confidence sequence, group-sequential), arm count, metric kind and truth, it reports with
95 % Wilson intervals:

* A/A (no true difference): false decisions (any promotion, or a rollback for a worse
  primary: the family-wise error alpha bounds), rollbacks by a guardrail (each at its own
  alpha), SRM halts, looks with a comparison left uncomputed (an error) and looks past
  ``min_units`` without a primary comparison, and the fixed-horizon test's false positives
  on the same data;
* A/B (the last treatment lifted so that a fixed-horizon test, Bonferroni across
  treatments, has 80 % power at ``--fixed-units``): ``planned_units`` is what ``abx plan``
  sizes for the method (``make_plan`` with ``design="policy"``) for that lift at 80 %
  power; promotions of the better arm (power, against the plan's 80 %), wrong promotions,
  the median hours to the promotion, and the fixed-horizon test's power at
  ``--fixed-units`` on the same data (its decision comes when the arms reach them).

    python benchmarks/decisions_e2e.py [--experiments 200] [--look-minutes 60] [--days 28]
    python benchmarks/decisions_e2e.py --metrics ratio --arms 5 --methods msprt
    python benchmarks/decisions_e2e.py --timing --look-minutes 1   # what a 60 s cadence costs

``--bandit`` replays the bandit instead: ``experiments/offer_banner.yaml``'s policy (Thompson
sampling, floors, ``planned_units`` 20,000, a 1-day horizon) on a binary primary with 2 and 3
arms, its weights moved by ``bandit.reweigh`` after each look as the cycle moves them
(``--bandit-move-hours`` overrides the YAML's ``min_hours_between_moves``: 0, a move at
every look, tuned for the demo), A/A and A/B (the last arm lifted so that ``abx plan``, which
sizes a bandit in units in all for the allocation Thompson sampling is expected to run,
asks exactly the horizon's traffic, ``planned_units`` per arm, for 80 % power):

    python benchmarks/decisions_e2e.py --bandit --look-minutes 1 [--bandit-move-hours 1]

``--look-minutes 1`` is the default analysis cadence (ABX_ANALYSIS_INTERVAL_SECONDS=60): see
``--timing``, which replays one A/A experiment per row for ``--days`` and prints the CPU time
per look (a busy machine does not inflate it) and per 60 days of looks, and how many looks
no unit reached (repeated, not recomputed).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import common
import numpy as np
import yaml
from scipy import optimize, special

from service.decisions.plan import PlanInputs, make_plan, planned_bandit_units
from service.decisions.simulation import Replay, Scenario, experiment_for, replay
from service.decisions.synthetic import BINARY_RATE, relative_sd
from service.experiments.schema import Experiment

EXAMPLES = Path(__file__).resolve().parents[1] / "experiments"

METHODS = ("msprt", "confidence_sequence", "group_sequential")


def lift_for_power(
    arms: int, units: int, sd: float, alpha: float = 0.05, power: float = 0.8,
    multiplicative: bool = False, binary_rate: float | None = None,
) -> float:  # fmt: skip
    """Relative lift a Bonferroni z-test detects with ``power`` at ``units`` per arm.

    The lift solves ``lift = z sqrt((sd^2 + sd_b(lift)^2) / units)`` with ``sd_b`` the lifted
    arm's relative standard deviation (a contraction: fixed-point iteration):

    * ``multiplicative``: the lift multiplies the treatment's outcomes (``synthetic.py``'s
      revenue and ratio), so ``sd_b = sd (1 + lift)``;
    * ``binary_rate`` p: a conversion rate lifted to p (1 + lift) has its own variance,
      ``sd_b = sqrt(p (1 + lift) (1 - p (1 + lift))) / p`` (the control's is ``sd``);
    * neither: equal deviations, ``sd_b = sd``.
    """
    z = -special.ndtri(alpha / (arms - 1) / 2) + special.ndtri(power)

    def treatment_sd(lift: float) -> float:
        if binary_rate is not None:
            lifted = binary_rate * (1.0 + lift)
            return math.sqrt(lifted * (1.0 - lifted)) / binary_rate
        return sd * (1.0 + lift) if multiplicative else sd

    lift = float(z * sd * math.sqrt(2.0 / units))
    for _ in range(100 if multiplicative or binary_rate is not None else 0):
        lift = float(z * math.sqrt((sd**2 + treatment_sd(lift) ** 2) / units))
    return lift


def planned_units(
    method: str, arms: int, metric: str, lift: float, sd: float, looks: int, effect: str
) -> int:
    """What ``abx plan`` sizes per arm for the method (the policy's own design)."""
    experiment = experiment_for(arms, method, metric, looks=looks)
    inputs = PlanInputs(lift, relative=True, design="policy", baseline=1.0,
                        standard_deviation=sd, effect=effect)  # fmt: skip
    if metric == "binary":  # the plan reads a rate and its own variance
        inputs = PlanInputs(lift, relative=True, design="policy", baseline=BINARY_RATE)
    plan = make_plan(experiment, inputs, {})
    return max(plan.n_control, plan.n_per_treatment)


def bandit_experiment(arms: int, move_hours: float | None) -> Experiment:
    """``offer_banner``'s policy on ``arms`` equal arms (the replay's binary primary)."""
    policy = yaml.safe_load((EXAMPLES / "offer_banner.yaml").read_text())["policy"]
    if move_hours is not None:
        policy["bandit"]["min_hours_between_moves"] = move_hours
    return experiment_for(arms, **policy)


def bandit_lift(experiment: Experiment) -> float:
    """The relative lift for which ``abx plan`` sizes exactly the horizon's traffic.

    ``abx plan`` sizes a bandit in units in all, for the allocation Thompson sampling is
    expected to run (``plan.n_total``); the replay's horizon brings ``planned_units`` per
    arm at the YAML's weights (``planned_bandit_units``).
    """
    target = planned_bandit_units(experiment)

    def excess(lift: float) -> float:
        inputs = PlanInputs(lift, relative=True, design="policy", baseline=BINARY_RATE)
        return make_plan(experiment, inputs, {}).n_total - target

    return float(optimize.brentq(excess, 0.01, 1.0, xtol=1e-4))


def bandit_rows(args: argparse.Namespace) -> None:
    print(f"# {common.code_version()}: bandit (offer_banner's policy, min_hours_between_moves "
          f"{'as the YAML' if args.bandit_move_hours is None else args.bandit_move_hours}), "
          f"{args.experiments} A/A and A/B replays per row, a look every {args.look_minutes:g} "
          f"min, {args.bandit_units_per_day} units/day/arm at the YAML's weights")  # fmt: skip
    for arms in args.arms:
        experiment = bandit_experiment(arms, args.bandit_move_hours)
        days = experiment.policy.horizon_days or args.days
        lift = bandit_lift(experiment)
        rows = [
            ("A/A", (0.0,) * (arms - 1), args.experiments),
            ("A/B", (0.0,) * (arms - 2) + (lift,), args.ab_experiments or args.experiments),
        ]
        for name, lifts, count in rows:
            if (name == "A/A" and args.ab_only) or (name == "A/B" and args.aa_only):
                continue
            started, cpu = time.perf_counter(), time.process_time()
            scenario = Scenario(args.bandit_units_per_day, days, args.look_minutes / 60.0, lifts)
            rng = np.random.default_rng(args.seed + 10 * arms + len(name))
            found = [replay(experiment, scenario, rng) for _ in range(count)]
            best = f"t{arms - 1}"
            promoted = [r for r in found if r.decision == "promote"]
            right = [r for r in promoted if name == "A/B" and r.variant == best]
            false = [r for r in found if (r.decision == "promote" and r not in right)
                     or "primary" in r.rollback_metrics]  # fmt: skip
            hours = statistics.median(r.hours for r in right if r.hours) if right else math.nan
            share = statistics.mean(r.weights.get(best, 0.0) for r in found)
            moves = statistics.mean(r.weight_moves for r in found)
            looks = sum(r.looks for r in found)
            print(f"bandit {arms} arms {name}: lift {lifts[-1]:.3f}; false decisions "
                  f"{common.wilson(len(false), len(found))}; better arm promoted "
                  f"{common.wilson(len(right), len(found))} (median {hours:.1f} h, plan: 0.80 at "
                  f"{planned_bandit_units(experiment)} units in all); SRM halts "
                  f"{common.wilson(sum(r.decision == 'halt' for r in found), len(found))}; "
                  f"inconclusive {sum(r.decision == 'inconclusive' for r in found)}; "
                  f"{moves:.1f} moves per replay, {best}'s final weight {share:.3f}; looks with "
                  f"an error {sum(r.looks_with_errors for r in found)}, without a primary "
                  f"{sum(r.looks_without_primary for r in found)} of {looks}; "
                  f"{(time.process_time() - cpu) / len(found):.2f} s CPU per replay "
                  f"[{time.perf_counter() - started:.0f} s]", flush=True)  # fmt: skip


def run(method: str, arms: int, metric: str, lifts: tuple[float, ...], planned: int,
        args: argparse.Namespace, seed: int, experiments: int) -> list[Replay]:  # fmt: skip
    looks = {"looks": args.gs_looks} if method == "group_sequential" else {}
    experiment = experiment_for(
        arms, method, metric, guardrails=args.guardrails, min_units=500, min_runtime_hours=24,
        planned_units=planned, horizon_days=args.days, **looks,
    )  # fmt: skip
    scenario = Scenario(args.units_per_day, args.days, args.look_minutes / 60.0, lifts, metric,
                        args.guardrails)  # fmt: skip
    rng = np.random.default_rng(seed)
    return [
        replay(experiment, scenario, rng, fixed_horizon=True, fixed_units=args.fixed_units)
        for _ in range(experiments)
    ]


def timing(args: argparse.Namespace) -> None:
    for metric in args.metrics:
        for arms in args.arms:
            experiment = experiment_for(arms, "msprt", metric, guardrails=args.guardrails,
                                        min_units=500, min_runtime_hours=24, horizon_days=args.days,
                                        planned_units=10**9)  # fmt: skip
            scenario = Scenario(args.units_per_day, args.days, args.look_minutes / 60.0,
                                (0.0,) * (arms - 1), metric, args.guardrails)  # fmt: skip
            started = time.process_time()
            found = replay(experiment, scenario, np.random.default_rng(args.seed))
            cpu = time.process_time() - started
            computed = found.looks - found.looks_repeated
            per_look = cpu / max(computed, 1)
            per_experiment = per_look * 24 * 60 * 60 / args.look_minutes * (computed / found.looks)
            print(f"{metric:10s} {arms} arms: {found.looks} looks, {found.looks_repeated} repeated;"
                  f" {per_look * 1e3:.2f} ms CPU per computed look: {per_experiment:.0f} s CPU"
                  f" per 60 days of looks", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=200, help="A/A replays per row")
    parser.add_argument("--ab-experiments", type=int, help="A/B replays per row (default: same)")
    parser.add_argument("--look-minutes", type=float, default=60.0)
    parser.add_argument("--days", type=float, default=28.0, help="also the policy's horizon_days")
    parser.add_argument("--units-per-day", type=int, default=2_000, help="per arm")
    parser.add_argument("--fixed-units", type=int, default=10_000,
                        help="units per arm of the fixed-horizon test (80 %% power there)")  # fmt: skip
    parser.add_argument("--metrics", nargs="+", default=["binary", "continuous", "ratio"],
                        choices=("binary", "continuous", "ratio"))  # fmt: skip
    parser.add_argument("--arms", type=int, nargs="+", default=[2, 3, 5])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--gs-looks", type=int, default=5)
    parser.add_argument("--no-guardrails", dest="guardrails", action="store_false")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--aa-only", action="store_true", help="no A/B replays")
    parser.add_argument("--ab-only", action="store_true", help="no A/A replays (power rows)")
    parser.add_argument(
        "--plan-effect",
        choices=("multiplicative", "additive"),
        default="multiplicative",
        help="the plan's effect model (additive: equal deviations, as before)",
    )
    parser.add_argument("--lift-for", choices=("multiplicative", "equal"), default="multiplicative",
                        help="the fixed test's 80 %% lift: with the lifted arm's own deviation"
                        " (times 1 + lift; a binary arm's from its lifted rate), or the"
                        " control's for both (as before)")  # fmt: skip
    parser.add_argument("--timing", action="store_true", help="cost per look, one A/A per row")
    parser.add_argument(
        "--bandit",
        action="store_true",
        help="offer_banner's bandit policy instead (2 and 3 arms by --arms)",
    )
    parser.add_argument(
        "--bandit-move-hours", type=float, help="min_hours_between_moves (default: the YAML's)"
    )
    parser.add_argument("--bandit-units-per-day", type=int, default=20_000, help="per arm")
    args = parser.parse_args()
    if args.timing:
        timing(args)
        return
    if args.bandit:
        bandit_rows(args)
        return
    ab = 0 if args.aa_only else args.ab_experiments or args.experiments
    aa = 0 if args.ab_only else args.experiments
    print(f"# {common.code_version()}: {aa} A/A and {ab}"
          f" A/B experiments per row, a look every {args.look_minutes:g} min for up to "
          f"{args.days:g} days, {args.units_per_day} units/day/arm, fixed test at "
          f"{args.fixed_units}/arm, guardrails {'on' if args.guardrails else 'off'}, alpha 0.05, "
          f"plan effect {args.plan_effect}, lift for {args.lift_for} deviations")  # fmt: skip
    for metric in args.metrics:
        sd = relative_sd(metric, np.random.default_rng(args.seed))
        for arms in args.arms:
            own = args.lift_for == "multiplicative"  # the lifted arm's own deviation
            rate = BINARY_RATE if metric == "binary" and own else None
            lift = lift_for_power(arms, args.fixed_units, sd, binary_rate=rate,
                                  multiplicative=metric != "binary" and own)  # fmt: skip
            for method in args.methods:
                started = time.perf_counter()
                planned = planned_units(method, arms, metric, lift, sd, args.gs_looks,
                                        args.plan_effect)  # fmt: skip
                seed = args.seed + 100 * arms + 7 * len(metric)
                if not args.ab_only:
                    aa_row(method, arms, metric, planned, args, seed)
                if args.aa_only:
                    continue
                ab_row(method, arms, metric, lift, planned, args, seed, started)


def aa_row(method: str, arms: int, metric: str, planned: int, args: argparse.Namespace,
           seed: int) -> None:  # fmt: skip
    """A/A: false decisions, guardrail rollbacks, SRM halts, uncomputed looks."""
    null = run(method, arms, metric, (0.0,) * (arms - 1), planned, args, seed,
               args.experiments)  # fmt: skip
    primary = [r for r in null if r.decision == "promote"
               or "primary" in r.rollback_metrics]  # fmt: skip
    guarded = {
        name: sum(name in r.rollback_metrics for r in null)
        for name in ("refund_rate", "model_latency_p99_ms", "model_fallback_rate")
    }
    halts = sum(r.decision == "halt" for r in null)
    errors = sum(r.looks_with_errors for r in null)
    missing = sum(r.looks_without_primary for r in null)
    fixed_false = sum(bool(r.fixed_horizon) for r in null)
    row = f"{metric:10s} {method:19s} {arms} arms"
    print(f"{row} A/A: false decisions {common.wilson(len(primary), len(null))}; guardrail "
          f"rollbacks {', '.join(f'{k} {common.wilson(v, len(null))}' for k, v in guarded.items())}; "
          f"SRM halts {common.wilson(halts, len(null))}; looks with an error {errors}, "
          f"without a primary comparison {missing} of {sum(r.looks for r in null)}; "
          f"fixed horizon false positives {common.wilson(fixed_false, len(null))}", flush=True)  # fmt: skip


def ab_row(method: str, arms: int, metric: str, lift: float, planned: int,
           args: argparse.Namespace, seed: int, started: float) -> None:  # fmt: skip
    """A/B: the better arm promoted (power against the plan's), wrong promotions, time."""
    row = f"{metric:10s} {method:19s} {arms} arms"
    best = f"t{arms - 1}"
    lifted = run(method, arms, metric, (0.0,) * (arms - 2) + (lift,), planned, args,
                 seed + 1, args.ab_experiments or args.experiments)  # fmt: skip
    right = [r for r in lifted if r.decision == "promote" and r.variant == best]
    wrong = sum(r.decision == "promote" and r.variant != best for r in lifted)
    hours = statistics.median(r.hours for r in right if r.hours) if right else math.nan
    fixed_power = sum(best in r.fixed_horizon for r in lifted)
    fixed_hours = args.fixed_units / args.units_per_day * 24
    print(f"{row} lift {lift:.3f}, planned {planned}: promoted the better arm "
          f"{common.wilson(len(right), len(lifted))} (median {hours:.0f} h), wrong promotions "
          f"{wrong}, rollbacks {sum(bool(r.rollbacks) for r in lifted)}; fixed horizon "
          f"power {common.wilson(fixed_power, len(lifted))} (at {fixed_hours:.0f} h) "
          f"[{time.perf_counter() - started:.0f} s]", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
