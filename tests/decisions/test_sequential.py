"""Every look analysed: fixed designs, per-comparison state carried between looks, FWER splits."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from analysis.sufficient_stats import SufficientStats
from service.assignment.state import ExperimentState
from service.decisions.evaluation import analyze
from service.decisions.results import json_safe
from service.decisions.rules import decide, format_p
from service.decisions.sequential import design_for
from service.experiments.schema import Experiment

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def experiment(arms: int = 3, **policy: Any) -> Experiment:
    keys = "abcde"[:arms]
    return Experiment.model_validate({
        "key": "exp", "description": "d", "owner": "o", "status": "running", "control": "a",
        "variants": [{"key": k, "weight": 1 / arms} for k in keys],
        "metrics": {"primary": {"name": "conv", "type": "binary"},
                    "secondary": [{"name": "revenue", "type": "continuous"}]},
        "policy": {"min_units": 100, "min_runtime_hours": 0, "planned_units": 20_000, **policy},
    })  # fmt: skip


def replay(
    exp: Experiment, looks: int, per_look: int, lift: float = 0.0, seed: int = 1
) -> list[Any]:
    """Look after look through analyze, the carried state round-tripped through JSON."""
    rng = np.random.default_rng(seed)
    keys = exp.variant_keys
    conversions = dict.fromkeys(keys, 0)
    revenue = {k: [0.0, 0.0] for k in keys}
    units = dict.fromkeys(keys, 0)
    carried: dict[str, Any] = {}
    design = design_for(exp)
    found = []
    for _ in range(looks):
        for k in keys:
            rate = 0.1 + (lift if k == keys[-1] else 0.0)
            conversions[k] += int(rng.binomial(per_look, rate))
            values = rng.lognormal(0.0, 1.0, per_look)
            revenue[k][0] += float(values.sum())
            revenue[k][1] += float((values**2).sum())
            units[k] += per_look
        stats = {}
        for k in keys:
            stats[(k, "conv")] = SufficientStats.from_binary(units[k], conversions[k])
            stats[(k, "revenue")] = SufficientStats(units[k], *revenue[k], 0.0, 0.0, 0.0)
        weights = {k: 1 / len(keys) for k in keys}
        result, state = analyze(exp, dict(units), stats, weights, design=design, carried=carried)
        carried = json.loads(json.dumps(json_safe(state)))
        found.append(result)
    return found


@pytest.mark.parametrize("method", ["msprt", "confidence_sequence", "group_sequential"])
def test_every_look_of_every_comparison_is_analysed(method: str) -> None:
    results = replay(experiment(method=method), looks=120, per_look=200)
    for result in results:
        assert result.errors == [] and result.skipped == []
        assert len(result.primary) == 2 and len(result.secondary) == 2
    if method != "group_sequential":
        for index in range(2):
            p_values = [r.primary[index].p_value for r in results]
            assert all(b <= a for a, b in itertools.pairwise(p_values))
            lows = [r.primary[index].ci_low for r in results]
            highs = [r.primary[index].ci_high for r in results]
            # The running intersection is carried: intervals only shrink.
            assert all(b >= a for a, b in itertools.pairwise(lows))
            assert all(b <= a for a, b in itertools.pairwise(highs))


def test_group_sequential_comparisons_keep_their_own_look_history() -> None:
    results = replay(experiment(method="group_sequential", looks=5), looks=120, per_look=200)
    last = results[-1]
    for comparison in [*last.primary, *last.secondary]:
        history = comparison.information_looks
        assert 1 <= len(history) <= 5
        assert all(b > a for a, b in itertools.pairwise(history))
        # Maximum information fixed from the planned units: looks at k/5 of 20,000.
        assert history[0] >= 4_000 and history[-1] >= 20_000


def test_the_mixing_parameter_is_fixed_at_start_not_from_the_data() -> None:
    exp = experiment(expected_effect=0.02)
    design = design_for(exp)
    edited = experiment(expected_effect=0.5, planned_units=1_000)
    stats = {
        (k, m): SufficientStats.from_binary(5_000, 500) for k in "abc" for m in ("conv", "revenue")
    }
    units = dict.fromkeys("abc", 5_000)
    first, state = analyze(exp, units, stats, dict.fromkeys("abc", 1 / 3), design=design)
    second, _ = analyze(edited, units, stats, dict.fromkeys("abc", 1 / 3), design=design,
                        carried=json.loads(json.dumps(json_safe(state))))  # fmt: skip
    assert second.primary == first.primary and second.errors == []


def test_each_method_splits_alpha_across_treatments() -> None:
    for method, split in (("msprt", 0.05), ("confidence_sequence", 0.05 / 4),
                          ("group_sequential", 0.05 / 4)):  # fmt: skip
        design = design_for(experiment(arms=5, method=method))
        assert design.treatments == 4 and design.comparison_alpha == pytest.approx(split)


def test_a_comparison_that_cannot_be_computed_is_an_error_not_a_skip() -> None:
    exp = experiment(arms=2, expected_effect=1e160)  # tau2 / V overflows: no finite test
    stats = {
        (k, m): SufficientStats.from_binary(5_000, 500) for k in "ab" for m in ("conv", "revenue")
    }
    result, _ = analyze(exp, dict.fromkeys("ab", 5_000), stats, {"a": 0.5, "b": 0.5})
    assert [e.split(":")[0] for e in result.errors] == ["conv/b"]
    assert not any(s.startswith("conv/") for s in result.skipped)


def test_primary_harm_waits_for_minimum_units_and_runtime_guardrails_do_not() -> None:
    exp = experiment(arms=2, min_units=1_000, min_runtime_hours=24)
    stats = {("a", "conv"): SufficientStats.from_binary(900, 200),
             ("b", "conv"): SufficientStats.from_binary(900, 60)}  # fmt: skip
    result, _ = analyze(exp, {"a": 900, "b": 900}, stats, {"a": 0.5, "b": 0.5})
    assert result.primary[0].better is False
    young = decide(exp, ExperimentState(), result, NOW - timedelta(hours=30), NOW)
    assert young.kind == "continue" and "units" in young.reason
    grown = {("a", "conv"): SufficientStats.from_binary(1_500, 330),
             ("b", "conv"): SufficientStats.from_binary(1_500, 100)}  # fmt: skip
    result, _ = analyze(exp, {"a": 1_500, "b": 1_500}, grown, {"a": 0.5, "b": 0.5})
    assert decide(exp, ExperimentState(), result, NOW - timedelta(hours=2), NOW).kind == "continue"
    late = decide(exp, ExperimentState(), result, NOW - timedelta(hours=30), NOW)
    assert late.kind == "rollback" and "always-valid p < 0.0001" in late.reason


@pytest.mark.parametrize("method", ["msprt", "confidence_sequence", "group_sequential"])
def test_reasons_print_readable_evidence(method: str) -> None:
    results = replay(experiment(arms=2, method=method), looks=60, per_look=500, lift=0.03)
    decision = decide(experiment(arms=2, method=method), ExperimentState(), results[-1],
                      NOW - timedelta(days=3), NOW)  # fmt: skip
    assert decision.kind == "promote", decision.reason
    assert "None" not in decision.reason
    assert ("boundary" in decision.reason) == (method == "group_sequential")
    assert format_p(0.012345678912345) == "p = 0.0123" and format_p(1e-9) == "p < 0.0001"


def test_srm_follows_the_weights_of_each_allocation_period() -> None:
    """50/50 for 30,000 units, then 80/20: healthy, though the totals fit neither split."""
    exp = experiment(arms=2)
    design = design_for(exp)
    stats = {(k, m): SufficientStats.from_binary(10, 1) for k in "ab" for m in ("conv", "revenue")}
    carried: dict[str, Any] = {}
    rng = np.random.default_rng(3)
    units = {"a": 0, "b": 0}
    for look in range(60):
        weights = {"a": 0.5, "b": 0.5} if look < 30 else {"a": 0.8, "b": 0.2}
        new = rng.multinomial(1_000, [weights["a"], weights["b"]])
        units = {"a": units["a"] + int(new[0]), "b": units["b"] + int(new[1])}
        result, state = analyze(exp, units, stats, weights, design=design, carried=carried,
                                today=date(2026, 6, 1))  # fmt: skip
        carried = json.loads(json.dumps(json_safe(state)))
        assert result.srm is not None and not result.srm.flagged, look
    broken, _ = analyze(exp, {"a": units["a"] + 5_000, "b": units["b"]}, stats,
                        {"a": 0.8, "b": 0.2}, design=design, carried=carried)  # fmt: skip
    assert broken.srm is not None and broken.srm.flagged


def test_per_day_checks_skip_the_day_still_filling() -> None:
    exp = experiment(arms=2)
    stats = {
        (k, m): SufficientStats.from_binary(10_000, 1000) for k in "ab" for m in ("conv", "revenue")
    }
    daily = {date(2026, 5, d): {"a": 1000, "b": 1000} for d in range(1, 10)}
    daily[date(2026, 5, 10)] = {"a": 850, "b": 1150}
    units = {"a": 9_850, "b": 10_150}
    filling, _ = analyze(exp, units, stats, {"a": 0.5, "b": 0.5}, daily_units=daily,
                         today=date(2026, 5, 10))  # fmt: skip
    assert filling.srm is not None and not filling.srm.flagged
    done, _ = analyze(exp, units, stats, {"a": 0.5, "b": 0.5}, daily_units=daily,
                      today=date(2026, 5, 11))  # fmt: skip
    assert done.srm is not None and done.srm.flagged_days == ["2026-05-10"]
