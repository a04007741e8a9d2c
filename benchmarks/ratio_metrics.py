"""A/A false-positive rate of ratio metrics under peeking, through the workers' own looks.

Each simulated experiment randomises users who have habits that carry over from before the
experiment (how often they come, how much they spend per session): revenue per session is
the ratio metric, its pre-period value the CUPED covariate. Both arms are drawn from the
same distribution (A/A) and analysed at ``--looks`` equally spaced looks, each exactly as a
worker does it: the per-variant sums of numerator and denominator and their cross products
(``analysis.ratio_metric.linearized_stats``), CUPED when it lowers the variance, then the
stored design's look (``service.decisions.sequential``: mSPRT, confidence sequence,
group sequential), carrying each comparison's state from look to look. Printed per method:
the share of experiments that ever reject at alpha (must stay at or under alpha), with its
Monte-Carlo standard error, the coverage of the fixed-horizon 95 % interval at the last look
with and without CUPED, and the mean CUPED variance reduction.

``--read-units N`` instead times the analysis's ratio read, ``events.sums.ratio_sums``, which
reads the rollup's buckets (``metric_stats`` and ``ratio_stats``, 2 variants times 28 days),
against the read it replaced (the per-unit cross products over ``unit_outcomes``, N units with
both parts: 2N rows) and one plain scan summing a single metric's unit totals per variant,
all in one scratch database in the same run; and the one-off first sum of a ratio the rollup
has not kept yet (``events.ratios.tracked_pairs``), the one step that still reads every unit.

Run: ``python benchmarks/ratio_metrics.py [--trials N] [--units N] [--looks K] [--json]``
or ``python benchmarks/ratio_metrics.py --read-units 1000000``.
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

import common  # puts the repository root on sys.path (and bench_database)
import numpy as np

from analysis import cuped
from analysis.ratio_metric import RatioCrossSums, linearized_stats
from analysis.sufficient_stats import SufficientStats
from service.decisions.sequential import (
    Design,
    group_sequential_look,
    information,
    mixture_look,
)

ALPHA = 0.05
METHODS = ("msprt", "confidence_sequence", "group_sequential")
Z_95 = 1.959963984540054


def users(rng: np.random.Generator, n: int) -> np.ndarray:
    """Columns x, y, x', y': revenue and sessions in the experiment and before it."""
    habit = rng.gamma(2.0, 1.0, n)
    spend = rng.gamma(2.0, 1.0, n)
    y_pre, y = 1 + rng.poisson(habit), 1 + rng.poisson(habit)
    x_pre, x = rng.gamma(y_pre * 4.0, spend / 4.0), rng.gamma(y * 4.0, spend / 4.0)
    return np.column_stack([x, y, x_pre, y_pre]).astype(float)


def arm_stats(units: np.ndarray) -> SufficientStats:
    """The sums the rollup keeps for the first ``len(units)`` users, linearised."""
    x, y, xp, yp = units.T
    numerator = SufficientStats(len(x), x.sum(), x @ x, xp.sum(), xp @ xp, x @ xp)
    denominator = SufficientStats(len(y), y.sum(), y @ y, yp.sum(), yp @ yp, y @ yp)
    return linearized_stats(numerator, denominator,
                            RatioCrossSums(x @ y, xp @ yp, x @ yp, xp @ y))  # fmt: skip


def difference(control: SufficientStats, treatment: SufficientStats) -> tuple[float, float, float]:
    """As ``evaluation._compare``: CUPED when it lowers the variance; the reduction used."""
    diff = treatment.mean - control.mean
    variance = treatment.variance_of_mean + control.variance_of_mean
    adjusted = cuped.compare(control, treatment)
    if 0 < adjusted.difference_variance < variance:
        return adjusted.difference, adjusted.difference_variance, adjusted.variance_reduction
    return diff, variance, 0.0


def design(method: str, planned: int, looks: int) -> Design:
    return Design(method=method, alpha=ALPHA, treatments=1, comparison_alpha=ALPHA,
                  planned_units=planned, looks=looks, expected_effect=None,
                  srm_threshold=0.001, srm_concentration=1.0)  # fmt: skip


def simulate(trials: int, units: int, looks: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    designs = {method: design(method, units, looks) for method in METHODS}
    rejected = dict.fromkeys(METHODS, 0)
    covered = {"delta": 0, "cuped": 0}
    reductions = []
    for _ in range(trials):
        control, treatment = users(rng, units), users(rng, units)
        carried: dict[str, Any] = dict.fromkeys(METHODS)
        ever = dict.fromkeys(METHODS, False)
        for look in range(1, looks + 1):
            n = units * look // looks
            a, b = arm_stats(control[:n]), arm_stats(treatment[:n])
            diff, variance, reduction = difference(a, b)
            info = information(a.n, b.n)
            for method, fixed in designs.items():
                if method == "group_sequential":
                    result, carried[method] = group_sequential_look(
                        fixed, diff, variance, info, carried[method]
                    )
                else:
                    result, carried[method] = mixture_look(
                        fixed, diff, variance, info, None, carried[method]
                    )
                ever[method] |= result.significant
        plain = b.mean - a.mean
        covered["delta"] += abs(plain) <= Z_95 * math.sqrt(a.variance_of_mean + b.variance_of_mean)
        covered["cuped"] += abs(diff) <= Z_95 * math.sqrt(variance)
        reductions.append(reduction)
        for method in METHODS:
            rejected[method] += ever[method]
    return {
        "trials": trials, "units_per_arm": units, "looks": looks, "alpha": ALPHA,
        "false_positive_rate": {m: rejected[m] / trials for m in METHODS},
        "monte_carlo_se": math.sqrt(ALPHA * (1 - ALPHA) / trials),
        "coverage_95": {k: v / trials for k, v in covered.items()},
        "mean_cuped_variance_reduction": float(np.mean(reductions)),
    }  # fmt: skip


# The read of the code before the rollup kept cross products (ratio_sums until 0025): every
# look summed per-unit products over unit_outcomes. Kept here as the baseline.
PER_UNIT_READ = (
    "SELECT coalesce(a.variant_key, b.variant_key), sum(x), sum(x*x), sum(y), sum(y*y),"
    " sum(x*y), sum(xp), sum(xp*xp), sum(yp), sum(yp*yp), sum(xp*yp), sum(x*xp), sum(y*yp),"
    " sum(x*yp), sum(xp*y)"
    " FROM (SELECT unit_id, variant_key, y_total AS post_x, x_total AS pre_x FROM unit_outcomes"
    "       WHERE experiment_key = 'bench' AND seed = 'bench.v1' AND metric = 'revenue') a"
    " FULL JOIN (SELECT unit_id, variant_key, y_total AS post_y, x_total AS pre_y"
    "       FROM unit_outcomes WHERE experiment_key = 'bench' AND seed = 'bench.v1'"
    "       AND metric = 'sessions') b USING (unit_id),"
    " LATERAL (SELECT coalesce(a.post_x, 0), coalesce(a.pre_x, 0), coalesce(b.post_y, 0),"
    "          coalesce(b.pre_y, 0)) AS v(x, xp, y, yp)"
    " GROUP BY 1"
)


def _seed_read(conn: Any, units: int, days: int) -> np.ndarray:
    """``unit_outcomes`` of N units with both parts, and the rollup's day buckets of the same
    units (each unit's totals on one of ``days`` days): ``metric_stats`` and ``ratio_stats``."""
    rng = np.random.default_rng(1)
    values = users(rng, units)
    variant = np.arange(units) % 2
    day = rng.integers(0, days, units)
    with conn.cursor().copy(
        "COPY unit_outcomes (experiment_key, seed, metric, unit_id, variant_key, y_total,"
        " x_total) FROM STDIN"
    ) as copy:
        for metric, post, pre in (("revenue", 0, 2), ("sessions", 1, 3)):
            for i in range(units):
                copy.write_row(("bench", "bench.v1", metric, f"u{i}", "ab"[variant[i]],
                                float(values[i, post]), float(values[i, pre])))  # fmt: skip
    from datetime import date, timedelta

    first = date(2026, 1, 1)
    with conn.cursor() as cursor:
        for v in (0, 1):
            for d in range(days):
                x, y, xp, yp = values[(variant == v) & (day == d)].T
                bucket = first + timedelta(days=d)
                for metric, post, pre in (("revenue", x, xp), ("sessions", y, yp)):
                    cursor.execute(
                        "INSERT INTO metric_stats VALUES ('bench', 'bench.v1', %s, %s, %s,"
                        " %s, %s, %s, %s, %s)",
                        ("ab"[v], metric, bucket, *(float(s) for s in (
                            post.sum(), post @ post, pre.sum(), pre @ pre, pre @ post))),
                    )  # fmt: skip
                cursor.execute(
                    "INSERT INTO ratio_stats VALUES ('bench', 'bench.v1', 'revenue', 'sessions',"
                    " '', '', %s, %s, %s, %s, %s, %s)",
                    ("ab"[v], bucket, float(x @ y), float(xp @ yp), float(x @ yp), float(xp @ y)),
                )
    conn.execute("INSERT INTO ratio_pairs VALUES ('bench', 'bench.v1', 'revenue', 'sessions',"
                 " %s)", (first,))  # fmt: skip
    conn.execute("ANALYZE")
    return values


def time_read(units: int, days: int = 28, repeats: int = 5) -> None:
    import time

    import psycopg

    from service.events.ratios import tracked_pairs
    from service.events.sums import ratio_sums

    with common.bench_database(None) as url, psycopg.connect(url, autocommit=True) as conn:
        values = _seed_read(conn, units, days)
        exposed = {"a": (units + 1) // 2, "b": units // 2}
        found = ratio_sums(conn, "bench", "bench.v1", "revenue", "sessions", exposed)
        x, y = values[0::2, 0], values[0::2, 1]
        assert math.isclose(found["a"].cross.sum_xy, float(x @ y), rel_tol=1e-9)

        def rolled_up() -> None:
            ratio_sums(conn, "bench", "bench.v1", "revenue", "sessions", exposed)

        def per_unit() -> None:
            conn.execute(PER_UNIT_READ).fetchall()

        def scan() -> None:
            conn.execute(
                "SELECT variant_key, sum(y_total), sum(y_total * y_total) FROM unit_outcomes"
                " WHERE experiment_key = 'bench' AND seed = 'bench.v1' AND metric = 'revenue'"
                " GROUP BY variant_key"
            ).fetchall()

        timings = {}
        actions = (("rolled-up read", rolled_up), ("per-unit read", per_unit),
                   ("one-metric scan", scan))  # fmt: skip
        for name, action in actions:
            action()  # warm the cache
            seconds = []
            for _ in range(repeats):
                start = time.perf_counter()
                action()
                seconds.append(time.perf_counter() - start)
            timings[name] = sorted(seconds)[len(seconds) // 2]
        # The one read that still grows with units: a ratio's first sum, once per ratio.
        conn.execute("DELETE FROM ratio_pairs")
        start = time.perf_counter()
        with conn.transaction():
            tracked_pairs(conn, lambda: [("bench", "bench.v1", "revenue", "sessions")], 0)
        first_sum = time.perf_counter() - start
    print(f"{units} units with both parts ({2 * units} rows), {days} days, median of {repeats}, "
          f"code {common.code_version()}, load {common.load_average()}")  # fmt: skip
    for name, seconds in timings.items():
        print(f"  {name:<16} {seconds * 1000:9.1f} ms")
    print(f"  per-unit / rolled-up {timings['per-unit read'] / timings['rolled-up read']:.0f}")
    print(f"  per-unit / scan {timings['per-unit read'] / timings['one-metric scan']:.2f}")
    print(f"  first sum of a newly named ratio (once) {first_sum * 1000:9.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=2_000)
    parser.add_argument("--units", type=int, default=4_000, help="users per arm at the end")
    parser.add_argument("--looks", type=int, default=10)
    parser.add_argument("--seed", type=int, default=2018)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--read-units", type=int, help="time the ratio read over N units")
    args = parser.parse_args()
    if args.read_units:
        time_read(args.read_units)
        return
    result = simulate(args.trials, args.units, args.looks, args.seed)
    if args.json:
        print(json.dumps(result))
        return
    print(f"A/A, ratio metric (revenue per session), {args.trials} experiments of "
          f"{args.units} users per arm, {args.looks} looks, alpha {ALPHA}")  # fmt: skip
    for method, rate in result["false_positive_rate"].items():
        print(f"  {method:<20} ever rejected {rate:.4f} (MC SE {result['monte_carlo_se']:.4f})")
    for name, share in result["coverage_95"].items():
        print(f"  95 % interval at the last look, {name:<5} covers 0 in {share:.4f}")
    print(f"  mean CUPED variance reduction {result['mean_cuped_variance_reduction']:.3f}")


if __name__ == "__main__":
    main()
