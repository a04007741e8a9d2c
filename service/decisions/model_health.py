"""Guardrails on the model runtime's own signals: fallback rate and p99 latency per variant. Pure.

Both are read from the per-day ``model_health`` rollup of every ``/v1/predict`` answer. The
fallback rate gets the same sequential non-inferiority test as any binary guardrail (per
request); p99 latency is a threshold on histogram quantiles once both arms have enough
requests, since there is no sufficient statistic for a quantile's sequential test here.
"""

from __future__ import annotations

from collections.abc import Mapping

from analysis import guardrails
from analysis.sufficient_stats import SufficientStats
from service.decisions.results import GuardrailCheck
from service.events import latency as latency_histogram
from service.events.sums import ModelHealth
from service.experiments.schema import Guardrail

MODEL_FALLBACK_RATE = "model_fallback_rate"
MODEL_LATENCY_P99 = "model_latency_p99_ms"
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
        check = guardrails.check_guardrail(
            SufficientStats.from_binary(base.requests, base.fallbacks),
            SufficientStats.from_binary(other.requests, other.fallbacks),
            margin=guardrail.margin, relative=relative, higher_is_better=False, alpha=alpha,
            planned_n=planned_units,
        )  # fmt: skip
        return GuardrailCheck(guardrail.name, variant, check.breached, check.holds, check.harm,
                              check.harm_lower_bound, check.harm_upper_bound, check.margin, relative)  # fmt: skip
    # p99 latency: a threshold on histogram quantiles (no sequential test for quantiles here).
    if min(base.requests, other.requests) < MIN_LATENCY_REQUESTS:
        return f"{guardrail.name}/{variant}: fewer than {MIN_LATENCY_REQUESTS} predictions"
    p99_base = latency_histogram.quantile(base.latency_counts, 0.99) or 0.0
    p99_other = latency_histogram.quantile(other.latency_counts, 0.99) or 0.0
    harm = (p99_other / p99_base - 1.0) if relative and p99_base > 0 else p99_other - p99_base
    breached = harm > guardrail.margin
    return GuardrailCheck(
        guardrail.name,
        variant,
        breached,
        not breached,
        harm,
        harm,
        harm,
        guardrail.margin,
        relative,
    )
