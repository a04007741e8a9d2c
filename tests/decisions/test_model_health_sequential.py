"""The p99 latency guardrail is a sequential test: healthy variants stay, real harm rolls back."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from analysis.sufficient_stats import SufficientStats
from service.decisions.evaluation import analyze
from service.decisions.model_health import model_guardrail
from service.decisions.simulation import experiment_for
from service.events import latency
from service.events.sums import ModelHealth
from service.experiments.schema import Guardrail

PER_HOUR, HOURS, EVERY = 50, 14 * 24, 12  # 50 requests per arm an hour, 14 days, looks every 12 h


def bin_probabilities(median_ms: float) -> np.ndarray:
    cdf = stats.lognorm(0.5, scale=median_ms).cdf(np.array([0.0, *latency.EDGES, np.inf]))
    return np.diff(cdf)


def rolled_back(margin: float, harm: float, sims: int, seed: int, per_hour: int = PER_HOUR) -> int:
    """Experiments in which the variant is ever breached, looking every 12 h."""
    rng = np.random.default_rng(seed)
    guardrail = Guardrail.model_validate(
        {"name": "model_latency_p99_ms", "type": "continuous", "margin": margin}
    )
    control, variant = bin_probabilities(5.0), bin_probabilities(5.0 * (1.0 + harm))
    looks = HOURS // EVERY
    breached = 0
    for _ in range(sims):
        a = rng.multinomial(per_hour * EVERY, control, size=looks).cumsum(axis=0)
        b = rng.multinomial(per_hour * EVERY, variant, size=looks).cumsum(axis=0)
        for look in range(looks):
            n = per_hour * EVERY * (look + 1)
            health = {"a": ModelHealth(n, 0, list(a[look])), "b": ModelHealth(n, 0, list(b[look]))}
            check = model_guardrail(guardrail, "b", "a", health, 0.05, 10_000)
            if not isinstance(check, str) and check.breached:
                breached += 1
                break
    return breached


@pytest.mark.parametrize("margin", [0.05, 0.5])
def test_healthy_variants_are_rolled_back_at_most_alpha_at_any_margin(margin: float) -> None:
    sims = 100
    found = rolled_back(margin, 0.0, sims, seed=int(margin * 100))
    assert found / sims <= 0.05 + 2.6 * math.sqrt(0.05 * 0.95 / sims)


@pytest.mark.parametrize(("margin", "per_hour"), [(0.2, 50), (0.1, 500)])
def test_harm_of_twice_the_margin_is_caught_given_enough_requests(
    margin: float, per_hour: int
) -> None:
    """A p99 twice the margin off is caught in at least 95 % of runs within 14 days.

    With 2.3 %-wide bins the limit is the tail's sample size, not the bins: a 20 % margin
    needs about 50 requests per arm an hour, 10 % about 500, 5 % far more (docs/statistics.md).
    """
    sims = 100
    found = rolled_back(margin, 2 * margin, sims, seed=9, per_hour=per_hour)
    assert found / sims >= 0.95 - 2.6 * math.sqrt(0.05 * 0.95 / sims)


@pytest.mark.parametrize(
    ("control", "variant"), [((1, 1), (1, 0)), ((1, 0), (1, 1)), ((3, 3), (2, 0))]
)
def test_fallback_rate_without_variance_waits(
    control: tuple[int, int], variant: tuple[int, int]
) -> None:
    """A few requests all fallen back (or none) in each arm: no harm variance, so wait."""
    guardrail = Guardrail.model_validate({"name": "model_fallback_rate", "type": "binary",
                                          "margin": 0.01, "margin_type": "absolute"})  # fmt: skip
    empty = [0] * latency.BIN_COUNT
    health = {"a": ModelHealth(*control, empty), "b": ModelHealth(*variant, empty)}
    found = model_guardrail(guardrail, "b", "a", health, 0.05, 10_000)
    assert found == "model_fallback_rate/b: no variance in either arm yet"


def test_relative_fallback_margin_with_no_control_fallback_is_an_error_not_a_crash() -> None:
    """The analysis lists it in ``errors`` (dashboard, log, metric) and analyses the rest."""
    experiment = experiment_for(2, "msprt", "binary", True)
    data = experiment.model_dump()
    for check in data["metrics"]["guardrails"]:
        if check["name"] == "model_fallback_rate":
            check["margin_type"] = "relative"
    experiment = type(experiment).model_validate(data)
    empty = [0] * latency.BIN_COUNT
    health = {"control": ModelHealth(50, 0, empty), "t1": ModelHealth(40, 3, empty)}
    stats = {(k, m): SufficientStats.from_binary(n, n // 10)
             for k, n in (("control", 50), ("t1", 40)) for m in ("primary", "refund_rate")}  # fmt: skip
    analysis, _ = analyze(experiment, {"control": 50, "t1": 40}, stats,
                          {"control": 0.5, "t1": 0.5}, health=health)  # fmt: skip
    assert analysis.errors == [
        "model_fallback_rate/t1: a relative margin needs a positive control mean"
    ]
    assert [c.variant for c in analysis.primary] == ["t1"]
    assert {g.metric for g in analysis.guardrails} == {"refund_rate"}
