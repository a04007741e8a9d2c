"""Bandits: the final comparison's false positives under adaptive weights, and regret saved.

Synthetic bandits replayed period by period through the workers' own analysis and
Thompson-sampling re-weighting (``service/decisions/bandit_simulation.py``: one look and one
re-weighting per allocation period, floors applied, the period-stratified difference under
the confidence sequence). Reported with 95 % Wilson intervals:

* A/A, with and without a common trend in the rate: how often any look's primary
  comparison is significant, and how often a guardrail with the same truth is breached (the final comparison's false-positive rate, stopping at the
  first rejection as the always-valid interval allows), for the stratified estimator and,
  for contrast, the naive one that pools every period; SRM alarms on exact multinomial
  splits;
* A/B with a true best arm: expected conversions lost (regret) against always serving the
  best arm, for the bandit and for a fixed design at the YAML's weights on the same
  traffic, and the share of runs where the bandit's final comparison found the better arm.

    python benchmarks/bandit.py [--replays 1000] [--periods 30] [--units 1000]
    python benchmarks/bandit.py --part ratio [--replays 500]           # a ratio primary
    python benchmarks/bandit.py --part periods [--exposures 1000000]   # PostgreSQL
    python benchmarks/bandit.py --part rollup [--exposures 200000]     # PostgreSQL

``--part rollup`` rolls the same exposures and events (a session per unit, an order for 10 %)
up twice on scratch databases, without and with the bandit's periods kept: the write side's
added cost.

``--part ratio`` replays a bandit on revenue per session (``replay_ratio_bandit``: the delta
method per period, combined by the stratified estimator; Thompson sampling on the ratio's
normal approximation): the A/A false-positive rate of the final comparison under adaptive
weights with and without a common trend, and with a true best arm the regret (expected
revenue lost) against a fixed 50/50 design on the same traffic.

``--part periods`` times what a bandit's analysis reads on top of a test's: its sums split
by allocation period, read from the rollup's per-period tables (``events/periods.py``,
``period_sums``), against the scan of its exposures and unit totals that read replaces
(``scan_period_sums``, the old read) and the pooled reads of the rollup tables every
method makes, in the same run on a scratch database with ``--exposures`` units in 3 arms
over 30 periods and a conversion for 10 % of them; also the one-off filing of the periods
(``periods.track``, the rollup's first round for a bandit).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from datetime import timedelta

import common
import numpy as np

from service.decisions.bandit_simulation import (
    BanditReplay,
    BanditScenario,
    replay_bandit,
    replay_ratio_bandit,
)
from service.decisions.simulation import experiment_for
from service.experiments.schema import Experiment


def runs(arms: int, scenario: BanditScenario, replays: int, seed: int) -> list[BanditReplay]:
    experiment = experiment_for(
        arms, "bandit", alpha=0.05, planned_units=scenario.units_per_period * scenario.periods,
        bandit={"control_floor": 0.2, "arm_floor": 0.1 if arms == 2 else 0.05, "draws": 2000,
                "min_units": 100},
    )  # fmt: skip
    # A guardrail with the primary's truth (no arm harms it), margin 0.5 point absolute.
    guardrail = {"name": "errors", "type": "binary", "margin": 0.005, "margin_type": "absolute"}
    definition = experiment.model_dump(by_alias=True)
    definition["metrics"]["guardrails"] = [guardrail]
    experiment = Experiment.model_validate(definition)
    rng = np.random.default_rng(seed)
    return [replay_bandit(experiment, scenario, rng) for _ in range(replays)]


def ratio_part(replays: int, periods: int, units: int) -> None:
    """A ratio primary (revenue per session): A/A false positives, then regret vs 50/50."""
    experiment = experiment_for(
        2, "bandit", metric="ratio", alpha=0.05, planned_units=units * periods,
        bandit={"control_floor": 0.2, "arm_floor": 0.1, "draws": 2000, "min_units": 100},
    )  # fmt: skip
    print(f"abx {common.code_version()}: ratio primary, {replays} replays, {periods} periods of "
          f"{units} units, alpha 0.05, load average {common.load_average()}")  # fmt: skip
    started = time.perf_counter()
    for trend in (0.0, 0.01):
        rng = np.random.default_rng(201 + int(trend * 1000))
        scenario = BanditScenario((0.05, 0.05), units, periods, trend, metric="ratio")
        found = [replay_ratio_bandit(experiment, scenario, rng) for _ in range(replays)]
        moved = statistics.fmean(max(abs(w["t1"] - 0.5) for w in r.weights) for r in found)
        print(f"  A/A, trend {trend:+.2f}/period: false positives "
              f"{common.wilson(sum(r.significant for r in found), len(found), digits=4)}, SRM alarms "
              f"{common.wilson(sum(r.srm_flagged for r in found), len(found), digits=4)}, mean largest move of "
              f"t1's weight from 0.5: {moved:.2f}")  # fmt: skip
    rates = (0.10, 0.12)
    rng = np.random.default_rng(301)
    adaptive = [replay_ratio_bandit(experiment, BanditScenario(rates, units, periods,
                metric="ratio"), rng) for _ in range(replays)]  # fmt: skip
    fixed = [replay_ratio_bandit(experiment, BanditScenario(rates, units, periods,
             adaptive=False, metric="ratio"), rng) for _ in range(replays)]  # fmt: skip
    saved = 1 - statistics.fmean(r.regret for r in adaptive) / statistics.fmean(
        r.regret for r in fixed
    )
    share = statistics.fmean(r.units["t1"] / sum(r.units.values()) for r in adaptive)
    found_best = sum(bool(r.better) and r.variant == "t1" for r in adaptive)
    print(f"  conversion per session {rates} (revenue per session {rates[0] * 10:.1f} vs "
          f"{rates[1] * 10:.1f}), {units * periods} units: regret (revenue) bandit "
          f"{mean_with_ci([r.regret for r in adaptive])}, fixed 50/50 "
          f"{mean_with_ci([r.regret for r in fixed])} ({saved:.0%} saved); best arm got "
          f"{share:.0%} of units; final comparison found it better in "
          f"{common.wilson(found_best, len(adaptive), digits=4)}")  # fmt: skip
    print(f"\n{time.perf_counter() - started:.0f} s")


def mean_with_ci(values: list[float]) -> str:
    mean = statistics.fmean(values)
    half = 1.96 * statistics.stdev(values) / math.sqrt(len(values))
    return f"{mean:.1f} ± {half:.1f}"


def periods_part(exposures: int) -> None:
    """Time the period read against the pooled rollup reads on the same data."""
    import psycopg

    from service.assignment.sync import allocation_history, append_allocation, sync_experiments
    from service.decisions.inputs import bandit_periods
    from service.events.periods import (
        BanditPeriods,
        period_sums,
        scan_period_sums,
        settle_guard,
        track,
    )
    from service.events.sums import exposed_units, metric_stats
    from service.settings import Settings

    experiment = experiment_for(3, "bandit")
    with common.bench_database(None) as url, psycopg.connect(url, autocommit=True) as conn:
        sync_experiments(conn, [(experiment, "bench.yaml")], 0.0)
        for _ in range(29):
            append_allocation(conn, experiment, {"control": 0.4, "t1": 0.3, "t2": 0.3}, 0.0)
        conn.execute(
            "UPDATE allocations SET effective_at = now() - interval '30 hours'"
            " + (allocation_id - (SELECT min(allocation_id) FROM allocations)) * interval '1 hour'"
        )
        loaded = time.perf_counter()
        key, seed = experiment.key, experiment.seed
        conn.execute(
            "INSERT INTO exposures (experiment_key, seed, unit_id, variant_key, first_exposed_at)"
            " SELECT %s, %s, 'u' || i, (ARRAY['control', 't1', 't2'])[1 + i %% 3],"
            " now() - interval '30 hours' + (i::float / %s) * interval '30 hours'"
            " FROM generate_series(1, %s) AS i",
            (key, seed, exposures, exposures),
        )
        conn.execute(
            "INSERT INTO unit_outcomes (experiment_key, seed, metric, unit_id, variant_key,"
            " y_total) SELECT experiment_key, seed, 'primary', unit_id, variant_key, 1"
            " FROM exposures WHERE hashtext(unit_id) % 10 = 0"
        )
        conn.execute(
            "INSERT INTO exposure_counts (experiment_key, seed, variant_key, bucket, units)"
            " SELECT experiment_key, seed, variant_key, first_exposed_at::date, count(*)"
            " FROM exposures GROUP BY 1, 2, 3, 4"
        )
        conn.execute(
            "INSERT INTO metric_stats (experiment_key, seed, variant_key, metric, bucket, sum_y,"
            " sum_y2, sum_x, sum_x2, sum_xy) SELECT experiment_key, seed, variant_key, metric,"
            " current_date, sum(y_total), sum(y_total * y_total), 0, 0, 0 FROM unit_outcomes"
            " GROUP BY 1, 2, 3, 4"
        )
        conn.execute(
            "UPDATE rollup_state SET value = (SELECT max(exposure_pk) FROM exposures)"
            " WHERE name = 'exposures'"
        )
        conn.execute("ANALYZE")
        print(f"{exposures} exposures, 30 periods loaded in {time.perf_counter() - loaded:.0f} s")

        def pooled() -> object:
            return exposed_units(conn, key, seed), metric_stats(conn, key, seed)

        print(f"load average {common.load_average()}")
        guard = settle_guard(Settings().state_poll_seconds)
        history = allocation_history(conn, experiment)
        pooled_times, _ = common.timed(pooled, 5)
        scan_times, scanned = common.timed(
            lambda: scan_period_sums(conn, key, seed, history, guard), 5
        )
        filed = time.perf_counter()
        with conn.transaction():
            track(conn, BanditPeriods(lambda: [(key, seed)], guard))
        filed = time.perf_counter() - filed
        conn.execute("ANALYZE")
        period_times, found = common.timed(lambda: period_sums(conn, key, seed, history, guard), 5)
        look_times, _ = common.timed(lambda: bandit_periods(conn, experiment), 5)
        assert [(p.units, p.settled_units, p.stats) for p in found] == [
            (p.units, p.settled_units, p.stats) for p in scanned
        ], "the rolled-up periods differ from the scan"
        units = sum(sum(p.units.values()) for p in found)
        pooled_ms = statistics.median(pooled_times)
        print(f"pooled rollup reads: median {pooled_ms:.1f} ms")
        print(
            f"period read, scan of units (old; {len(scanned)} periods, {units} units): median "
            f"{statistics.median(scan_times):.0f} ms "
            f"({statistics.median(scan_times) / pooled_ms:.0f}x pooled)"
        )
        print(
            f"period read, rolled up (new, what a look runs): median "
            f"{statistics.median(period_times):.1f} ms "
            f"({statistics.median(period_times) / pooled_ms:.1f}x pooled, "
            f"{statistics.median(scan_times) / statistics.median(period_times):.0f}x faster than"
            f" the scan)"
        )
        print(
            f"bandit_periods (allocation history, settings and the rolled-up read): median "
            f"{statistics.median(look_times):.1f} ms"
        )
        print(f"filing the periods once (rollup's first round for a bandit): {filed:.1f} s")  # fmt: skip


def rollup_part(units: int) -> None:
    """The rollup's added cost of keeping a bandit's periods: the same events rolled up twice."""
    import psycopg

    from service.assignment.sync import allocation_history, append_allocation, sync_experiments
    from service.events.periods import BanditPeriods, period_sums, scan_period_sums, settle_guard
    from service.events.ratios import configured_pairs_from
    from service.events.rollup import EVENT_CHUNK, EXPOSURE_CHUNK, roll_up_once, windows_from
    from service.settings import Settings

    experiment = experiment_for(3, "bandit", metric="ratio")
    key, seed = experiment.key, experiment.seed
    kept = BanditPeriods(lambda: [(key, seed)], settle_guard(Settings().state_poll_seconds))
    print(f"abx {common.code_version()}: {units} units in 3 arms over 30 periods, each with a"
          f" session and a 10 % chance of an order (ratio primary), load average "
          f"{common.load_average()}")  # fmt: skip
    for label, bandits in (("without periods (before)", None), ("with periods (now)", kept)):
        with common.bench_database(None) as url, psycopg.connect(url, autocommit=True) as conn:
            sync_experiments(conn, [(experiment, "bench.yaml")], 0.0)
            for _ in range(29):
                append_allocation(conn, experiment, {"control": 0.4, "t1": 0.3, "t2": 0.3}, 0.0)
            conn.execute(
                "UPDATE allocations SET effective_at = now() - interval '30 hours' + (allocation_id"
                " - (SELECT min(allocation_id) FROM allocations)) * interval '1 hour'"
            )
            conn.execute(
                "INSERT INTO exposures (experiment_key, seed, unit_id, variant_key,"
                " first_exposed_at) SELECT %s, %s, 'u' || i, (ARRAY['control', 't1', 't2'])"
                "[1 + i %% 3], now() - interval '30 hours' + (i::float / %s) * interval '30 hours'"
                " FROM generate_series(1, %s) AS i",
                (key, seed, units, units),
            )
            conn.execute(
                "INSERT INTO outcomes (experiment_key, seed, event_id, unit_id, metric,"
                " aggregation, value, occurred_at, received_at) SELECT experiment_key, seed,"
                " m || unit_id, unit_id, m, 'sum', CASE WHEN m = 'sessions' THEN 1 ELSE 20 END,"
                " first_exposed_at + interval '1 minute', now() FROM exposures,"
                " unnest(ARRAY[%s, %s]) AS m WHERE m = %s OR hashtext(unit_id) %% 10 = 0",
                ("sessions", "order_value", "sessions"),
            )
            conn.execute("ANALYZE")
            windows = windows_from({key: experiment})
            pairs = configured_pairs_from({key: experiment})
            events, started = 0, time.perf_counter()
            for _ in range(10_000):
                done = roll_up_once(conn, windows, timedelta(hours=1), ratio_pairs=pairs,
                                    bandits=bandits)  # fmt: skip
                assert done is not None
                events += done[1]
                if done[0] < EXPOSURE_CHUNK and done[1] < EVENT_CHUNK:
                    break
            seconds = time.perf_counter() - started
            if bandits is not None:
                history = allocation_history(conn, experiment)
                rolled = period_sums(conn, key, seed, history, bandits.guard)
                scanned = scan_period_sums(conn, key, seed, history, bandits.guard)
                assert [(p.units, p.settled_units) for p in rolled] == [
                    (p.units, p.settled_units) for p in scanned
                ], "the kept periods differ from the scan"
            print(f"  {label:26}: {events} events rolled up in {seconds:.1f} s "
                  f"({events / seconds:,.0f} events/s), load average {common.load_average()}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replays", type=int, default=1000)
    parser.add_argument("--periods", type=int, default=30)
    parser.add_argument("--units", type=int, default=1000, help="units per period")
    parser.add_argument(
        "--part", choices=["simulation", "ratio", "periods", "rollup"], default="simulation"
    )
    parser.add_argument("--exposures", type=int, default=1_000_000)
    args = parser.parse_args()
    if args.part == "periods":
        periods_part(args.exposures)
        return
    if args.part == "rollup":
        rollup_part(args.exposures)
        return
    if args.part == "ratio":
        ratio_part(args.replays, args.periods, args.units)
        return
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
                  f"{common.wilson(sum(r.significant for r in found), len(found), digits=4)}, SRM alarms "
                  f"{common.wilson(sum(r.srm_flagged for r in found), len(found), digits=4)}, guardrail breaches "
                  f"{common.wilson(sum(r.guardrail_breached for r in found), len(found), digits=4)}")  # fmt: skip
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
              f"{common.wilson(found_best, len(adaptive), digits=4)}")  # fmt: skip
    print(f"\n{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
