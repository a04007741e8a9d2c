"""A holdout read every day for months: false positives under A/A, coverage under a true effect.

Each replay (``service/decisions/holdouts.py``) sends ``--units-per-day`` units through the
holdout's check for ``--days`` days, splits them by the share (3 % by default, as the example
holdout), draws binary outcomes (10 % base rate) and runs the analysis ``GET
/v1/holdouts/<key>`` runs, look by look, with its state carried. Reported with 95 % Wilson
intervals:

* A/A: the share of holdouts where *some* daily look's always-valid interval of
  ``rest - holdout`` excluded zero (should be at most alpha = 0.05, however long it is read);
* a true effect (``--lift``, relative, on ``rest``): the share whose intervals held the true
  difference at *every* look (should be at least 1 - alpha), and the share that excluded zero.

    python benchmarks/holdout_aa.py [--replays 1000] [--days 180] [--units-per-day 2000]
"""

from __future__ import annotations

import argparse
import time

import common
import numpy as np

from service.decisions.holdouts import replay_holdout
from service.experiments.holdouts import Holdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replays", type=int, default=1000)
    parser.add_argument("--days", type=int, default=180)
    parser.add_argument("--units-per-day", type=int, default=2000)
    parser.add_argument("--share", type=float, default=0.03)
    parser.add_argument("--lift", type=float, default=0.10, help="relative lift of rest")
    parser.add_argument("--seed", type=int, default=20261205)
    args = parser.parse_args()
    holdout = Holdout.model_validate({
        "key": "bench", "description": "d", "owner": "o", "share": args.share, "scope": "all",
        "start": "2026-01-01", "metrics": [{"name": "retained", "type": "binary"}],
    })  # fmt: skip
    rng = np.random.default_rng(args.seed)
    print(f"code {common.code_version()}; {args.replays} replays x {args.days} daily looks, "
          f"{args.units_per_day} units/day, share {args.share}, alpha {holdout.alpha}")  # fmt: skip
    for label, rates in (
        ("A/A", {"holdout": 0.10, "rest": 0.10}),
        (f"lift {args.lift:+.0%}", {"holdout": 0.10, "rest": 0.10 * (1 + args.lift)}),
    ):
        started = time.perf_counter()
        results = [
            replay_holdout(holdout, args.units_per_day, args.days, rates, rng)
            for _ in range(args.replays)
        ]
        excluded = sum(r.excluded_zero for r in results)
        covered = sum(r.always_covered for r in results)
        held = np.median([r.final_units["holdout"] for r in results])
        print(f"{label:>10}: excluded zero at some look {common.wilson(excluded, args.replays)}; "
              f"covered the truth at every look {common.wilson(covered, args.replays)}; "
              f"median held-out units at the end {held:,.0f} "
              f"({time.perf_counter() - started:.0f} s)")  # fmt: skip


if __name__ == "__main__":
    main()
