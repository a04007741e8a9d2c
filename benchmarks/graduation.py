"""How often a shadow graduates, by its true agreement: the interval-bound rule against a
point-estimate rule, by simulation of the pure rule (``service.decisions.graduation``).

Each simulated shadow has ``hours`` complete hours of ``rows`` rated rows, each row agreeing
with the served model with probability ``true_agreement`` (independently); it graduates when
every hour is within ``min_agreement`` (0.9). The interval rule judges each hour by its Wilson
95 % lower bound, the point rule by its agreement rate. Since hours are independent, the exact
graduation probability is P(an hour counts) ** hours, P from the binomial distribution; the
simulation is checked against it. The suite's fast version is
``tests/decisions/test_graduation.py::test_a_shadow_below_the_bound_rarely_graduates...``.

    .venv/bin/python benchmarks/graduation.py [--sims 2000] [--hours 3]
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime, timedelta

import numpy as np
from common import code_version, load_average, print_header

NOW = datetime(2026, 12, 1, 12, 30, tzinfo=UTC)


def graduation_rates(
    true_agreement: float, rows: int, hours: int, sims: int, seed: int
) -> tuple[float, float, float, float]:
    """Simulated and exact graduation rates under the interval rule, then the point rule."""
    from scipy import stats

    from service.decisions.graduation import check_graduation, hour_missed
    from service.experiments.schema import ShadowGraduation
    from service.inference.shadow_report import ShadowHour, summarize

    rule = ShadowGraduation(min_agreement=0.9, hours=hours, min_rows=1)
    start = NOW.replace(minute=0) - timedelta(hours=hours)
    rng = np.random.default_rng(seed)
    draws = rng.binomial(rows, true_agreement, size=(sims, hours))
    interval = point = 0
    for shadow in draws:
        hourly = [
            ShadowHour(start + timedelta(hours=h), rows, rows, float(k), 0, 0.0, 0.0, None,
                       float(rows), float(rows), 1.0, 1.0)
            for h, k in enumerate(shadow)
        ]  # fmt: skip
        interval += check_graduation(rule, "s", 0.1, hourly, NOW).ready
        point += all(k / rows >= rule.min_agreement for k in shadow)

    def counts(k: int) -> bool:
        window = summarize(ShadowHour(start, rows, rows, float(k), 0, 0.0, 0.0, None,
                                      float(rows), float(rows), 1.0, 1.0), "h")  # fmt: skip
        return hour_missed(rule, window) is None

    passing = [k for k in range(rows + 1) if counts(k)]
    exact_interval = float(stats.binom.sf(passing[0] - 1, rows, true_agreement)) if passing else 0.0
    exact_point = float(stats.binom.sf(int(np.ceil(0.9 * rows)) - 1, rows, true_agreement))
    return interval / sims, exact_interval**hours, point / sims, exact_point**hours


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sims", type=int, default=2000)
    parser.add_argument("--hours", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print(f"code {code_version()}; load average {load_average()}")
    print_header(
        f"graduation rate, min_agreement 0.9, {args.hours} hours in a row, {args.sims} shadows"
    )
    print(
        "true agreement  rows/hour  interval rule: simulated (exact)   point rule: simulated (exact)"
    )
    started = time.perf_counter()
    for rows in (200, 2000):
        for true in (0.85, 0.88, 0.9, 0.92, 0.95):
            sim_i, exact_i, sim_p, exact_p = graduation_rates(
                true, rows, args.hours, args.sims, args.seed
            )
            print(f"{true:14.2f}  {rows:9d}  {sim_i:17.4f} ({exact_i:.2e})"
                  f"   {sim_p:17.4f} ({exact_p:.2e})")  # fmt: skip
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
