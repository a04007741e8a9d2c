"""A bandit's plan checked by simulating its test: the stratified confidence sequence, look by look.

``abx plan`` sizes a bandit (``analysis/bandit_sizing.py``) from the simulated weights'
stratified variance and a power curve ``Phi(theta - c)`` fitted at the target through the
mixture's inflation factor (200 looks). This runs what that stands for, on the same kind of
paths, without the power curve: each path's weights move by the plan's Thompson-sampling
rule after each period, and at every look (``--looks-per-period`` per period) the
period-stratified difference of the better arm and the control is tested as
``service/decisions/bandit.py`` tests it (``|D| / sqrt(Var D)`` against the mixture boundary
at ``x* u / planned_units``, ``u`` the periods' summed information ``2 / (1/n_c + 1/n_t)``);
a path has power when any look crosses. The figure to compare with the plan's 0.80 is at
about 200 looks over the horizon (the inflation factor's); offer_banner at 60 s looks has
1,440 a day, which ``decisions_e2e.py --bandit --look-minutes 1`` replays through the
workers' own code.

    python benchmarks/bandit_plan.py [--paths 2000] [--arms 2 3] [--looks-per-period 1 10 60]
"""

from __future__ import annotations

import argparse
import time

import common
import numpy as np
from decisions_e2e import bandit_experiment, bandit_lift

from analysis.bandit_sizing import normal_probability_best, posterior
from analysis.mixture_tuning import optimal_variance_ratio
from analysis.normal_mixture import two_sided_boundary_z
from service.decisions.plan import PlanInputs, bandit_periods, make_plan
from service.decisions.synthetic import BINARY_RATE


def crossings(
    rates: np.ndarray, floors: np.ndarray, total: float, periods: int, looks_per_period: int,
    alpha: float, planned_units: int, paths: int, rng: np.random.Generator,
) -> int:  # fmt: skip
    """Paths whose stratified comparison of the last arm with the control crosses."""
    arms, best = rates.size, rates.size - 1
    variance = rates * (1.0 - rates)
    x_star = optimal_variance_ratio(alpha)
    weights = np.full((paths, arms), 1.0 / arms)
    units, sums = np.zeros((paths, arms)), np.zeros((paths, arms))
    closed: list[tuple[np.ndarray, ...]] = []  # (N_p, d_p, v_p, information_p) of past periods
    crossed = np.zeros(paths, dtype=bool)
    for _ in range(periods):
        arrived = weights * total / periods
        period_sums = np.zeros((paths, arms))
        for look in range(1, looks_per_period + 1):
            step = arrived / looks_per_period
            period_sums += step * rates + np.sqrt(step * variance) * rng.standard_normal(step.shape)
            n = arrived * look / looks_per_period
            current = _period(n[:, 0], n[:, best], period_sums[:, 0], period_sums[:, best],
                              variance[0], variance[best])  # fmt: skip
            size, difference, var, information = (
                np.array(v) for v in zip(*closed, current, strict=True)
            )
            share = size / size.sum(axis=0)
            estimate = (share * difference).sum(axis=0)
            spread = (share**2 * var).sum(axis=0)
            boundary = two_sided_boundary_z(x_star * information.sum(axis=0) / planned_units, alpha)
            crossed |= np.abs(estimate) / np.sqrt(spread) >= boundary
        closed.append(current)
        units += arrived
        sums += period_sums
        if units.min() >= 100:
            location, scale = posterior(units, sums, variance, binary=True)
            weights = floors + (1.0 - floors.sum()) * normal_probability_best(location, scale)
    return int(crossed.sum())


def _period(
    n_c: np.ndarray, n_t: np.ndarray, s_c: np.ndarray, s_t: np.ndarray, v_c: float, v_t: float
) -> tuple[np.ndarray, ...]:
    return n_c + n_t, s_t / n_t - s_c / n_c, v_t / n_t + v_c / n_c, 2.0 / (1.0 / n_c + 1.0 / n_t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paths", type=int, default=2000)
    parser.add_argument("--arms", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--looks-per-period", type=int, nargs="+", default=[1, 10, 60])
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    print(f"# {common.code_version()}: offer_banner's policy, hourly moves over its 1-day "
          f"horizon, {args.paths} paths a row, 10 % baseline, the last arm lifted so that abx "
          f"plan asks the horizon's traffic for 80 % power")  # fmt: skip
    for arms in args.arms:
        experiment = bandit_experiment(arms, 1.0)
        lift = bandit_lift(experiment)
        plan = make_plan(experiment, PlanInputs(lift, relative=True, design="policy",
                                                baseline=BINARY_RATE), {})  # fmt: skip
        assert plan.bandit is not None
        settings = experiment.policy.bandit_settings
        floors = np.array([settings.control_floor] + [settings.arm_floor] * (arms - 1))
        rates = np.array([BINARY_RATE] * (arms - 1) + [BINARY_RATE * (1 + lift)])
        periods = bandit_periods(experiment)
        for looks in args.looks_per_period:
            started = time.process_time()
            rng = np.random.default_rng(args.seed + 10 * arms + looks)
            found = crossings(rates, floors, plan.n_total, periods, looks,
                              plan.alpha_per_comparison, experiment.policy.planned_units,
                              args.paths, rng)  # fmt: skip
            print(f"{arms} arms, lift {lift:.4f}, {plan.n_total} units in all (plan's mean power "
                  f"{plan.bandit.power:.3f}), {periods} periods x {looks} looks = "
                  f"{periods * looks} looks: power {common.wilson(found, args.paths)} "
                  f"[{time.process_time() - started:.1f} s CPU]", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
