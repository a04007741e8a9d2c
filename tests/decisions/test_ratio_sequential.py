"""A fast run of benchmarks/ratio_metrics.py: A/A ratio metrics under peeking stay honest."""

from __future__ import annotations

import json
import subprocess
import sys

from service.settings import PROJECT_ROOT


def test_aa_ratio_metric_under_peeking_keeps_alpha() -> None:
    # 120 A/A experiments, 5 looks each: each method's rate of ever rejecting must stay at
    # alpha within 3 Monte-Carlo SE (the 2,000-trial run is in docs/statistics.md), and CUPED
    # must be in use.
    script = PROJECT_ROOT / "benchmarks" / "ratio_metrics.py"
    run = subprocess.run(
        [sys.executable, str(script), "--trials", "120", "--units", "800", "--looks", "5",
         "--json"], capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    result = json.loads(run.stdout)
    bound = result["alpha"] + 3 * result["monte_carlo_se"]
    for method, rate in result["false_positive_rate"].items():
        assert rate <= bound, (method, rate)
    # Coverage needs more trials than this run has: tests/analysis/test_ratio_linearized.py.
    assert result["mean_cuped_variance_reduction"] > 0.3
