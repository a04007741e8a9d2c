"""A bandit's look (``policy.method: bandit``): comparisons by period, SRM by period, new weights. Pure.

These differ from a fixed-weight test, and only these:

* each comparison is the period-stratified difference of ``analysis.bandit`` (pooling
  periods whose weights differed is biased when outcomes drift), under the design's
  confidence sequence, with its running intersection carried from look to look;
* the sample-ratio test compares each period's settled counts with that period's weights,
  the periods' e-values multiplied (a test martingale restarted at each switch);
* after a look that changes nothing else, Thompson sampling re-weights the active arms,
  each kept at or above its floor (``reweigh``). The generator is passed in, seeded from
  stored data by the caller, so a re-weighting can be replayed.

Guardrails are stratified the same way (``guardrail_check``); model-health checks (served
requests, no weights involved) and drift checks run exactly as for tests.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from analysis import bandit, srm
from analysis.confidence_sequence import one_sided_halfwidth, one_sided_rho
from analysis.sufficient_stats import SufficientStats
from service.decisions.results import Comparison, GuardrailCheck, SrmCheck
from service.decisions.sequential import Carried, Design, mixture_look
from service.experiments.schema import Experiment, Guardrail, Metric

MIN_WEIGHT_CHANGE = 0.01
"""A re-weighting moves some arm by at least this much, else the weights stay: every
allocation adds bounds that later first assignments are checked against."""


class WaitForData(Exception):
    """Not comparable yet (no period with two units per arm, no variance): wait, not an error."""


@dataclass(frozen=True)
class Period:
    """One allocation period as the analysis sees it (``events.periods`` reads them)."""

    weights: Mapping[str, float]
    settled_units: Mapping[str, int]
    stats: Mapping[tuple[str, str], SufficientStats]
    """(variant, metric) sums of the period's units; units without outcomes count as 0."""
    units: Mapping[str, int]


def _arm(period: Period, variant: str, metric: str) -> SufficientStats:
    found = period.stats.get((variant, metric))
    if found is not None:
        return found
    return SufficientStats(period.units.get(variant, 0), 0.0, 0.0)


def compare(
    design: Design, metric: Metric, control: str, variant: str, periods: Sequence[Period],
    carried: Carried | None,
) -> tuple[Comparison, Carried]:  # fmt: skip
    """Treatment minus control, stratified by period, with an always-valid interval."""
    pairs = [(_arm(p, control, metric.name), _arm(p, variant, metric.name)) for p in periods]
    try:
        estimate = bandit.stratified_difference(pairs)
    except ValueError as error:
        raise WaitForData(str(error)) from error
    if not estimate.variance > 0:
        raise WaitForData("no variance in either arm yet (e.g. no conversions): wait for more data")
    cs_design = dataclasses.replace(design, method="confidence_sequence")
    look, state = mixture_look(
        cs_design, estimate.difference, estimate.variance, estimate.information_units, None,
        carried,
    )  # fmt: skip
    pooled_c = SufficientStats.combine(c for c, _ in pairs)
    pooled_t = SufficientStats.combine(t for _, t in pairs)
    higher_is_better = metric.direction == "increase"
    better = None if not look.significant else (look.estimate > 0) == higher_is_better
    lift = estimate.difference / pooled_c.mean if pooled_c.n and pooled_c.mean != 0 else None
    comparison = Comparison(
        metric.name, variant, pooled_c.n, pooled_t.n, pooled_c.mean if pooled_c.n else 0.0,
        pooled_t.mean if pooled_t.n else 0.0, estimate.difference, lift, look.ci_low,
        look.ci_high, look.p_value, look.p_value, look.significant, better, False, 0.0,
        "bandit", (),
    )  # fmt: skip
    return comparison, state


def guardrail_check(
    design: Design, guardrail: Guardrail, control: str, variant: str, periods: Sequence[Period]
) -> GuardrailCheck:
    """A guardrail on the period-stratified means: one-sided bounds on the harm, as for tests.

    Harm is ``s (m_t - m_c)`` or, for a relative margin, ``s (m_t / m_c - 1)`` with the
    delta-method variance ``V_t / m_c^2 + m_t^2 V_c / m_c^4`` (``analysis.guardrails``'
    formulas on the stratified means); the one-sided confidence sequence runs at the
    design's alpha, tuned at ``planned_units``, with the periods' information as its time.
    """
    pairs = [(_arm(p, control, guardrail.name), _arm(p, variant, guardrail.name)) for p in periods]
    try:
        means = bandit.stratified_means(pairs)
    except ValueError as error:
        raise WaitForData(str(error)) from error
    sign = 1.0 if guardrail.direction == "decrease" else -1.0  # which way is harm
    m_c, m_t = means.control_mean, means.treatment_mean
    relative = guardrail.margin_type == "relative"
    if relative:
        if not m_c > 0:
            raise ValueError("a relative margin needs a positive control mean")
        harm = sign * (m_t / m_c - 1.0)
        variance = means.treatment_variance_of_mean / m_c**2
        variance += m_t**2 * means.control_variance_of_mean / m_c**4
    else:
        harm = sign * (m_t - m_c)
        variance = means.treatment_variance_of_mean + means.control_variance_of_mean
    if not variance > 0:
        raise WaitForData("no variance in either arm yet")
    n = means.information_units
    rho = one_sided_rho(None, design.planned_units, design.alpha)
    width = one_sided_halfwidth(n, (variance * n) ** 0.5, design.alpha, rho=rho)
    low, high = harm - width, harm + width
    return GuardrailCheck(
        guardrail.name, variant, low > guardrail.margin, high < guardrail.margin, harm, low,
        high, guardrail.margin, relative,
    )  # fmt: skip


def period_srm(
    design: Design, periods: Sequence[Period], active: Sequence[str], carried: Carried | None
) -> tuple[SrmCheck | None, Carried | None]:
    """The anytime-valid SRM test, each period's settled counts against its own weights.

    Lindon & Malek (2022): under the null each period's Dirichlet-multinomial Bayes factor
    is a test martingale started at 1 when the period starts, so the product over periods
    is one too, and 1 / its running maximum is an anytime-valid p-value
    (``srm.sequential_srm`` with the closed periods' log e-values).
    """
    closed = 0.0
    tested: tuple[list[int], list[float]] | None = None
    for index, period in enumerate(periods):
        keys = [k for k in active if period.weights.get(k, 0.0) > 0]
        counts = [int(period.settled_units.get(k, 0)) for k in keys]
        if len(keys) < 2 or sum(counts) == 0:
            continue
        total = sum(period.weights[k] for k in keys)
        shares = [period.weights[k] / total for k in keys]
        if index < len(periods) - 1:
            closed += srm.log_e_value(counts, shares, design.srm_concentration)
        else:
            tested = (counts, shares)
    if tested is None and closed == 0.0:
        return None, carried
    counts, shares = tested if tested is not None else ([0, 0], [0.5, 0.5])
    result = srm.sequential_srm(
        counts, shares, design.srm_threshold, concentration=design.srm_concentration,
        closed_log_e_value=closed,
        previous_max_log_e_value=float((carried or {}).get("max_log_e", 0.0)),
    )  # fmt: skip
    last = periods[-1]
    keys = [k for k in active if last.weights.get(k, 0.0) > 0]
    total_weight = sum(last.weights[k] for k in keys) or 1.0
    check = SrmCheck(
        result.p_value_always_valid, result.flagged, design.srm_threshold,
        {k: int(sum(p.units.get(k, 0) for p in periods)) for k in active},
        {k: last.weights[k] / total_weight for k in keys}, [], result.log_e_value,
    )  # fmt: skip
    return check, {"max_log_e": result.max_log_e_value, "periods": len(periods)}


@dataclass(frozen=True)
class Reweighting:
    """Thompson sampling's new weights, with what they rest on (for the audit log)."""

    weights: dict[str, float]
    probability_best: dict[str, float]
    floors: dict[str, float]
    posterior: str
    draws: int


def reweigh(
    experiment: Experiment, active: Sequence[str], stats: Mapping[tuple[str, str], SufficientStats],
    rng: np.random.Generator,
) -> Reweighting | str:  # fmt: skip
    """New weights for the active arms (others get 0), or why they stay as they are.

    The posterior is on the primary metric's pooled sums: Beta–Bernoulli for a binary
    metric, normal (flat prior, plug-in variance) for the others.
    """
    settings = experiment.policy.bandit_settings
    metric = experiment.metrics.primary
    arms = [stats.get((k, metric.name)) for k in active]
    if len(active) < 2:
        return "fewer than two arms are active"
    if any(a is None or a.n < max(settings.min_units, 2) for a in arms):
        return f"waiting for {max(settings.min_units, 2)} units per arm before re-weighting"
    sums = [a for a in arms if a is not None]
    if metric.type == "binary":
        successes = [min(max(a.total, 0.0), a.n) for a in sums]
        draws = bandit.beta_posterior_draws(successes, [a.n for a in sums], settings.draws, rng)
        posterior = "beta-bernoulli, Beta(1, 1) prior"
    else:
        draws = bandit.normal_posterior_draws(
            [a.mean for a in sums], [a.variance_of_mean for a in sums], settings.draws, rng
        )
        posterior = "normal, flat prior, plug-in variance"
    probabilities = bandit.probability_best(draws, metric.direction == "increase")
    control_floor = max(settings.control_floor, settings.arm_floor)
    floors = [control_floor if k == experiment.control else settings.arm_floor for k in active]
    weights = bandit.floored_weights(list(probabilities), floors)
    by_arm = dict(zip(active, weights, strict=True))
    return Reweighting(
        {v: by_arm.get(v, 0.0) for v in experiment.variant_keys},
        {k: float(probabilities[i]) for i, k in enumerate(active)},
        dict(zip(active, floors, strict=True)), posterior, settings.draws,
    )  # fmt: skip


def changed(old: Mapping[str, float], new: Mapping[str, float]) -> bool:
    """Whether any arm moves by at least ``MIN_WEIGHT_CHANGE``."""
    keys = set(old) | set(new)
    return any(abs(old.get(k, 0.0) - new.get(k, 0.0)) >= MIN_WEIGHT_CHANGE for k in keys)


def rng_seed(experiment: Experiment, allocations: int) -> int:
    """The generator's seed: the experiment's seed and how many allocations it has had."""
    text = f"abx.bandit.{experiment.key}.{experiment.seed}.{allocations}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
