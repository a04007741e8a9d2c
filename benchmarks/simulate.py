"""Monte-Carlo false-positive rate and power of the sequential methods under peeking.

Every simulated experiment is analysed after each batch of units (default:
100 looks of 100 units per arm, up to 10,000 per arm). For each scenario the
script prints the share of experiments that ever reject "no difference", with
its Monte-Carlo standard error, for:

* mSPRT (Johari et al. 2022), tau2 tuned for the horizon;
* asymptotic confidence sequence (Waudby-Smith et al. 2024), rho tuned for the horizon;
* group sequential, Lan-DeMets O'Brien-Fleming and Pocock spending over the
  planned looks (when ``analysis/group_sequential.py`` is present);
* the naive fixed-horizon z-test repeated at every look (invalid under peeking);
* the fixed-horizon z-test at the last look only (valid, for reference);

and, for a latency guardrail with a 3 % relative margin, how often it is
breached or shown to hold. ``--timing`` instead times the per-look analysis
of 3 variants x 5 metrics from sufficient statistics.

Run: ``python benchmarks/simulate.py [--trials N] [--seed S] [--timing]``.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Iterator
from typing import NamedTuple

import common  # noqa: F401  (puts the repository root on sys.path)
import numpy as np
from scipy import stats

from analysis import confidence_sequence as cs
from analysis import cuped, msprt
from analysis.guardrails import guardrail_paths
from analysis.sufficient_stats import SufficientStats

try:
    from analysis.group_sequential import spending_boundaries

    HAS_GROUP_SEQUENTIAL = True
except ImportError:  # the module is optional for this benchmark
    HAS_GROUP_SEQUENTIAL = False

CHUNK = 5_000


class Looks(NamedTuple):
    """Cumulative sums of one arm at every look, shape (trials, looks)."""

    n: np.ndarray
    total: np.ndarray
    total_squares: np.ndarray


class Design(NamedTuple):
    """Monitoring plan: number of looks, units per arm between looks, alpha."""

    looks: int
    batch: int
    alpha: float


Generator = Callable[[np.random.Generator, int, Design], tuple[Looks, Looks]]


def normal_arms(mean_b: float, mean_a: float = 10.0, sd: float = 3.0) -> Generator:
    """Exact per-batch sums of normal data: normal batch sums, chi-square spread."""

    def generate(rng: np.random.Generator, trials: int, design: Design) -> tuple[Looks, Looks]:
        return _normal(rng, trials, design, mean_a, sd), _normal(rng, trials, design, mean_b, sd)

    return generate


def binary_arms(rate_b: float, rate_a: float = 0.10) -> Generator:
    """Binomial per-batch success counts (sum of squares = sum for 0/1 data)."""

    def generate(rng: np.random.Generator, trials: int, design: Design) -> tuple[Looks, Looks]:
        arms = []
        for rate in (rate_a, rate_b):
            shape = (trials, design.looks)
            successes = np.cumsum(rng.binomial(design.batch, rate, size=shape), axis=1) * 1.0
            arms.append(Looks(_sizes(shape, design), successes, successes))
        return arms[0], arms[1]

    return generate


def _normal(rng: np.random.Generator, trials: int, design: Design, mean: float, sd: float) -> Looks:
    shape = (trials, design.looks)
    batch_sum = rng.normal(design.batch * mean, sd * math.sqrt(design.batch), size=shape)
    squares = sd**2 * rng.chisquare(design.batch - 1, size=shape) + batch_sum**2 / design.batch
    return Looks(_sizes(shape, design), np.cumsum(batch_sum, 1), np.cumsum(squares, 1))


def _sizes(shape: tuple[int, int], design: Design) -> np.ndarray:
    return np.broadcast_to(design.batch * np.arange(1, design.looks + 1, dtype=float), shape)


def crossings(
    control: Looks,
    treatment: Looks,
    design: Design,
    tau2: float,
    boundaries: dict[str, list[float]],
) -> dict[str, np.ndarray]:
    """Per method, whether each experiment rejects at each look, shape (trials, looks)."""
    mean_a, mean_b = control.total / control.n, treatment.total / treatment.n
    var_a = control.total_squares / control.n - mean_a**2
    var_b = treatment.total_squares / treatment.n - mean_b**2
    difference, variance = mean_b - mean_a, var_a / control.n + var_b / treatment.n
    z = difference / np.sqrt(variance)
    rho = cs.optimal_rho(design.looks * design.batch, design.alpha)
    # Balanced arms: effective n is the per-arm n and sigma^2 the sum of the variances.
    width = cs.halfwidths(control.n, np.sqrt(var_a + var_b), design.alpha, rho)
    critical = stats.norm.ppf(1 - design.alpha / 2)
    log_ratio = msprt.log_mixture_likelihood_ratios(difference, variance, tau2)
    crossed = {
        "mSPRT": log_ratio >= math.log(1 / design.alpha),
        "confidence sequence": np.abs(difference) > width,
    }
    for name, bounds in boundaries.items():
        crossed[name] = np.abs(z) >= np.asarray(bounds)
    crossed["naive z-test at every look"] = np.abs(z) > critical
    last_only = np.zeros_like(z, dtype=bool)
    last_only[:, -1] = np.abs(z[:, -1]) > critical
    crossed["fixed horizon (last look only)"] = last_only
    return crossed


def group_sequential_boundaries(design: Design) -> dict[str, list[float]]:
    if not HAS_GROUP_SEQUENTIAL:
        return {}
    fractions = [(k + 1) / design.looks for k in range(design.looks)]
    return {
        f"group sequential {label} ({design.looks} looks)": spending_boundaries(
            fractions, design.alpha, spending, True
        )
        for label, spending in (("OBF", "obf"), ("Pocock", "pocock"))
    }


def chunks(trials: int) -> Iterator[int]:
    while trials > 0:
        yield min(CHUNK, trials)
        trials -= CHUNK


def run_scenario(
    name: str,
    generate: Generator,
    tau2: float,
    design: Design,
    trials: int,
    rng: np.random.Generator,
) -> None:
    boundaries = group_sequential_boundaries(design)
    rejections: dict[str, int] = {}
    stopping_n: dict[str, float] = {}
    for size in chunks(trials):
        control, treatment = generate(rng, size, design)
        for method, crossed in crossings(control, treatment, design, tau2, boundaries).items():
            ever = crossed.any(axis=1)
            # Units per arm when the experiment stops: first crossing, else the horizon.
            stop_look = np.where(ever, crossed.argmax(axis=1) + 1, design.looks)
            rejections[method] = rejections.get(method, 0) + int(ever.sum())
            stopping_n[method] = stopping_n.get(method, 0.0) + float(stop_look.sum()) * design.batch
    for method, count in rejections.items():
        print_row(name, method, count / trials, trials, stopping_n[method] / trials)


def run_guardrail(true_harm: float, design: Design, trials: int, rng: np.random.Generator) -> None:
    breached = holds = 0
    rho = cs.optimal_rho(design.looks * design.batch, 2 * design.alpha)
    for size in chunks(trials):
        control, treatment = normal_arms(100.0 * (1 + true_harm), 100.0, 30.0)(rng, size, design)
        paths = guardrail_paths(*control, *treatment, margin=0.03, alpha=design.alpha, rho=rho)
        breached += int(paths.breached[:, -1].sum())
        holds += int(paths.holds[:, -1].sum())
    name = f"guardrail, harm {true_harm:.0%} (margin 3%)"
    print_row(name, "breached (ever)", breached / trials, trials)
    print_row(name, "holds (ever)", holds / trials, trials)


def print_row(
    scenario: str, method: str, rate: float, trials: int, mean_n: float | None = None
) -> None:
    # Monte-Carlo SE of a proportion; floored at 1/trials so 0 and 1 show a scale.
    se = math.sqrt(max(rate * (1 - rate), 1.0 / trials) / trials)
    stop = "" if mean_n is None else f"{mean_n:12.0f}"
    print(f"{scenario:<34} {method:<38} {rate:7.4f} {se:7.4f}{stop}")


def simulate(trials: int, seed: int, design: Design) -> None:
    rng = np.random.default_rng(seed)
    horizon = design.looks * design.batch
    continuous_tau2 = msprt.tau2_for_horizon(2 * 9.0 / horizon, design.alpha)
    binary_tau2 = msprt.tau2_for_horizon(2 * 0.09 / horizon, design.alpha)
    scenarios: list[tuple[str, Generator, float]] = [
        ("A/A continuous (sd 3)", normal_arms(10.0), continuous_tau2),
        ("A/A binary (p 0.10)", binary_arms(0.10), binary_tau2),
        ("A/B continuous +0.03 sd", normal_arms(10.09), continuous_tau2),
        ("A/B continuous +0.06 sd", normal_arms(10.18), continuous_tau2),
        ("A/B binary 0.100 -> 0.115", binary_arms(0.115), binary_tau2),
    ]
    print(
        f"{trials} experiments per scenario, {design.looks} looks of {design.batch} units per "
        f"arm, alpha {design.alpha}.\nrate: share ever rejecting (A/A: false-positive rate, "
        "A/B: power); mean n/arm: units per arm when the experiment stops."
    )
    print(f"{'scenario':<34} {'method':<38} {'rate':>7} {'MC SE':>7} {'mean n/arm':>11}")
    for name, generate, tau2 in scenarios:
        run_scenario(name, generate, tau2, design, trials, rng)
    for true_harm in (0.0, 0.03, 0.06):
        run_guardrail(true_harm, design, trials, rng)


def time_analysis(repeats: int = 200) -> None:
    """Time mSPRT + CS + CUPED per metric for 3 variants x 5 metrics (2 comparisons each)."""
    rng = np.random.default_rng(0)
    arms = []
    for _ in range(3):
        metrics = []
        for _ in range(5):
            x = rng.gamma(2.0, 2.0, 2_000)
            metrics.append(SufficientStats.from_values(x + rng.normal(0, 1, 2_000), x))
        arms.append(metrics)
    start = time.perf_counter()
    for _ in range(repeats):
        for treatment in arms[1:]:
            for control_metric, treatment_metric in zip(arms[0], treatment, strict=True):
                adjusted = cuped.compare(control_metric, treatment_metric)
                msprt.msprt_look(adjusted.difference, adjusted.difference_variance, tau2=0.01)
                cs.difference_interval(control_metric, treatment_metric, planned_n=10_000)
    elapsed = (time.perf_counter() - start) / repeats
    print(f"3 variants x 5 metrics (mSPRT + CS + CUPED each): {elapsed * 1e3:.2f} ms per analysis")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20_000, help="experiments per scenario")
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--looks", type=int, default=100)
    parser.add_argument("--batch", type=int, default=100, help="units per arm between looks")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--timing", action="store_true", help="time the per-look analysis only")
    args = parser.parse_args()
    if args.timing:
        time_analysis()
        return
    simulate(args.trials, args.seed, Design(args.looks, args.batch, args.alpha))


if __name__ == "__main__":
    main()
