"""A holdout read daily: the always-valid interval keeps its promise with a 3 % / 97 % split.

Small version of ``benchmarks/holdout_aa.py`` (figures in docs/statistics.md). The bounds
are binomial: with the promised rate, reaching them has probability under 0.001.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from service.decisions.holdouts import replay_holdout
from service.experiments.holdouts import Holdout

REPLAYS = 100


def holdout(share: float) -> Holdout:
    return Holdout.model_validate({
        "key": "h", "description": "d", "owner": "o", "share": share, "scope": "all",
        "start": "2026-01-01", "metrics": [{"name": "retained", "type": "binary"}],
    })  # fmt: skip


def at_most(rate: float) -> int:
    """The largest count consistent with ``rate`` over REPLAYS (P(X > bound) < 0.001)."""
    return int(stats.binom.ppf(0.999, REPLAYS, rate))


def test_aa_false_positives_stay_under_alpha_at_every_daily_look() -> None:
    rng = np.random.default_rng(11)
    h = holdout(0.03)
    results = [
        replay_holdout(h, 2000, 45, {"holdout": 0.10, "rest": 0.10}, rng) for _ in range(REPLAYS)
    ]
    assert all(r.looks >= 40 for r in results)
    assert sum(r.excluded_zero for r in results) <= at_most(h.alpha)


def test_intervals_cover_a_true_effect_at_every_look_and_find_a_large_one() -> None:
    rng = np.random.default_rng(12)
    h = holdout(0.05)
    results = [
        replay_holdout(h, 4000, 45, {"holdout": 0.10, "rest": 0.13}, rng) for _ in range(REPLAYS)
    ]
    assert REPLAYS - sum(r.always_covered for r in results) <= at_most(h.alpha)
    # +0.03 on 10 %: ~9,000 held-out units by day 45 make it plain (most replays find it).
    assert sum(r.excluded_zero for r in results) >= REPLAYS // 2
