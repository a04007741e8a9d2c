"""A comparison that cannot be computed is counted for the alert rule and logged by the worker."""

from __future__ import annotations

from prometheus_client import REGISTRY

from service.assignment.state import ExperimentState
from service.decisions.cycle import AnalysisOutcome
from service.decisions.rules import Decision
from service.decisions.tasks import publish_analysis


def test_uncomputed_comparisons_set_the_gauge_the_alert_reads() -> None:
    keep = Decision("continue", "nothing to change", ExperimentState())
    numbers = {"errors": ["conv/b: tau2 / variance must be finite"], "guardrails": []}
    publish_analysis("errors_exp", AnalysisOutcome(keep, None, [], numbers), 0.01, 0)
    value = REGISTRY.get_sample_value(
        "abx_analysis_comparison_errors", {"experiment": "errors_exp"}
    )
    assert value == 1.0
    publish_analysis("errors_exp", AnalysisOutcome(keep, None, [], {"errors": []}), 0.01, 0)
    assert (
        REGISTRY.get_sample_value("abx_analysis_comparison_errors", {"experiment": "errors_exp"})
        == 0.0
    )
