"""Guardrails on the model runtime's own signals: fallback rate and p99 latency per variant. Pure.

Both are read from the per-day ``model_health`` rollup of every ``/v1/predict`` answer. The
fallback rate gets the same sequential non-inferiority test as any binary guardrail (per
request). p99 latency is compared with always-valid quantile bounds (Howard & Ramdas 2022;
``analysis.quantile_sequence``) on each arm's histogram, each at alpha / 2 so that both hold
together with probability 1 - alpha at every look: the variant is breached once the lower
bound of its p99 is beyond the margin over the upper bound of the control's, and holds once
its upper bound is within the margin over the control's lower bound. The bounds are bin
edges, so the histogram's bin width (2.3 %) is accounted for, at the price of power for
margins narrower than about two bins.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from analysis import guardrails
from analysis.quantile_sequence import quantile_bounds
from analysis.sufficient_stats import SufficientStats
from service.decisions.results import GuardrailCheck
from service.events import latency as latency_histogram
from service.events.sums import ModelHealth
from service.experiments.schema import MODEL_FALLBACK_RATE, MODEL_LATENCY_P99, Guardrail

__all__ = ["MODEL_FALLBACK_RATE", "MODEL_LATENCY_P99", "model_guardrail"]
MIN_LATENCY_REQUESTS = 200
"""Requests per variant before the p99 latency guardrail may judge."""


def model_guardrail(
    guardrail: Guardrail, variant: str, control: str, health: Mapping[str, ModelHealth], alpha: float,
    planned_units: int,
) -> GuardrailCheck | str:  # fmt: skip
    """Guardrails on the model runtime's own signals (rolled up from every /v1/predict answer)."""
    base, other = health.get(control), health.get(variant)
    if base is None or other is None or not base.requests or not other.requests:
        return f"{guardrail.name}/{variant}: no predictions yet"
    relative = guardrail.margin_type == "relative"
    if guardrail.name == MODEL_FALLBACK_RATE:
        if base.fallbacks + other.fallbacks == 0:
            return GuardrailCheck(
                guardrail.name, variant, False, False, 0.0, 0.0, 0.0, guardrail.margin, relative
            )
        rates = (SufficientStats.from_binary(base.requests, base.fallbacks),
                 SufficientStats.from_binary(other.requests, other.fallbacks))  # fmt: skip
        if rates[0].variance <= 0 and rates[1].variance <= 0:  # e.g. one request, fallen back
            return f"{guardrail.name}/{variant}: no variance in either arm yet"
        check = guardrails.check_guardrail(
            *rates,
            margin=guardrail.margin, relative=relative, higher_is_better=False, alpha=alpha,
            planned_n=planned_units,
        )  # fmt: skip
        return GuardrailCheck(guardrail.name, variant, check.breached, check.holds, check.harm,
                              check.harm_lower_bound, check.harm_upper_bound, check.margin, relative)  # fmt: skip
    # p99 latency: always-valid bounds on each arm's p99, each at alpha / 2.
    if min(base.requests, other.requests) < MIN_LATENCY_REQUESTS:
        return f"{guardrail.name}/{variant}: fewer than {MIN_LATENCY_REQUESTS} predictions"
    edges = latency_histogram.EDGES
    control_p99 = quantile_bounds(base.latency_counts, edges, 0.99, alpha / 2.0)
    variant_p99 = quantile_bounds(other.latency_counts, edges, 0.99, alpha / 2.0)
    estimate_base, estimate_other = control_p99.estimate or 0.0, variant_p99.estimate or 0.0
    if relative:
        harm = estimate_other / estimate_base - 1.0 if estimate_base > 0 else 0.0
        harm_low = variant_p99.lower / control_p99.upper - 1.0  # upper is never 0 (an edge)
        harm_high = (
            variant_p99.upper / control_p99.lower - 1.0 if control_p99.lower > 0 else math.inf
        )
    else:
        harm = estimate_other - estimate_base
        harm_low = variant_p99.lower - control_p99.upper
        harm_high = variant_p99.upper - control_p99.lower
    return GuardrailCheck(guardrail.name, variant, harm_low > guardrail.margin,
                          harm_high <= guardrail.margin, harm, harm_low, harm_high,
                          guardrail.margin, relative)  # fmt: skip
