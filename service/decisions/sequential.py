"""What every test is fixed to before the first look, and what it carries between looks. Pure.

The ``Design`` is fixed once per experiment and seed, at its first analysis, from the
policy and the number of treatments, and stored with the experiment's state
(``decision_designs``, see ``store.py``): the mixing parameter (``tau2`` or ``rho``), the
group-sequential maximum information and the alpha of each comparison never move with the
data or with a later edit of the policy. Each comparison (treatment, metric) carries its
own running state from look to look as plain JSON (stored with the analysis run): the
running minimum p-value and intersected interval of the mSPRT and the confidence sequence,
the group-sequential look history and its rejection.

Information is measured in units: ``2 / (1/n_a + 1/n_b)``, the per-arm count of a balanced
design with the same variance, which only grows as units arrive; the maximum is the
policy's ``planned_units``. The variance of the difference is estimated (plug-in) at every
look, as the asymptotic methods allow.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from analysis import confidence_sequence, msprt
from analysis.group_sequential import boundary_at_look
from analysis.mixture_tuning import optimal_rho, optimal_variance_ratio
from analysis.multiple_testing import bonferroni_alpha
from analysis.srm import DEFAULT_CONCENTRATION
from service.experiments.schema import Experiment

DESIGN_VERSION = 1
Carried = dict[str, Any]


@dataclass(frozen=True)
class Design:
    """Every test's fixed parameters, for the life of one experiment under one seed."""

    method: str
    alpha: float
    """Family-wise level over the treatments' primary comparisons."""
    treatments: int
    comparison_alpha: float
    """The level of each comparison: alpha / treatments for confidence sequences and
    group-sequential boundaries (Bonferroni split); alpha for the mSPRT (Holm across)."""
    planned_units: int
    looks: int
    expected_effect: float | None
    """Primary metric, in its own units: the mSPRT mixes over N(0, expected_effect²)."""
    srm_threshold: float
    srm_concentration: float
    version: int = DESIGN_VERSION

    @property
    def rho(self) -> float:
        """The confidence sequences' tuning, optimal at ``planned_units``."""
        return optimal_rho(self.planned_units, self.comparison_alpha)

    def mixing_variance(self, variance: float, information: float) -> float:
        """The mSPRT's ``tau2`` in standardized form: ``tau2 / V = x* information / planned``.

        Mixing over standardized effects (effect / sigma) fixes ``tau2 / V`` as a function of
        the units alone, optimal (``x*``, :func:`optimal_variance_ratio`) at the planned size:
        fixed at start, never re-derived from the data.
        """
        ratio = optimal_variance_ratio(self.comparison_alpha) * information / self.planned_units
        return ratio * variance

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Design:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def design_for(experiment: Experiment) -> Design:
    """The design an experiment starts with (stored at its first analysis)."""
    policy = experiment.policy
    treatments = max(
        1, sum(1 for v in experiment.variants if v.key != experiment.control and v.weight > 0)
    )
    split = policy.method != "msprt"
    return Design(
        method=policy.method,
        alpha=policy.alpha,
        treatments=treatments,
        comparison_alpha=bonferroni_alpha(policy.alpha, treatments) if split else policy.alpha,
        planned_units=policy.planned_units,
        looks=policy.looks,
        expected_effect=policy.expected_effect,
        srm_threshold=policy.srm_threshold,
        srm_concentration=DEFAULT_CONCENTRATION,
    )


def information(control_n: float, treatment_n: float) -> float:
    """Units of information: ``2 / (1/n_a + 1/n_b)`` (the per-arm count when balanced)."""
    return 2.0 / (1.0 / control_n + 1.0 / treatment_n)


@dataclass(frozen=True)
class Look:
    """One comparison at one look, as the decision rules read it."""

    estimate: float
    """The difference the look rests on (a group-sequential rejection keeps its own)."""
    ci_low: float
    ci_high: float
    p_value: float | None
    significant: bool
    information_looks: tuple[float, ...] = ()
    z_critical: float | None = None


def _bound(value: Any, default: float) -> float:
    # JSON has no infinity: an interval not yet bounded is stored as null.
    return default if value is None else float(value)


def mixture_look(
    design: Design, difference: float, variance: float, units: float, tau2: float | None,
    carried: Carried | None,
) -> tuple[Look, Carried]:  # fmt: skip
    """An mSPRT or confidence-sequence look, folded into the comparison's running state.

    The p-value is the running minimum of ``1 / Lambda`` (Johari et al. 2022) and the
    interval the running intersection; the confidence sequence is ``confidence_sequence``'s
    at the design's ``rho``, whose p-value is the same mixture's (it excludes 0 exactly
    when that p-value is at most its alpha).
    """
    alpha = design.comparison_alpha
    if design.method == "confidence_sequence":
        tau2 = units * design.rho**2 * variance
        interval = confidence_sequence.interval(
            difference, variance, units, alpha=alpha, rho=design.rho
        )
        low, high = interval.ci_low, interval.ci_high
    else:
        tau2 = tau2 if tau2 is not None else design.mixing_variance(variance, units)
        state = msprt.msprt_look(difference, variance, tau2, alpha)
        low, high = state.ci_low, state.ci_high
    log_ratio = msprt.log_mixture_likelihood_ratio(difference, variance, tau2)
    p_value = math.exp(-max(log_ratio, 0.0))
    looks = 1
    if carried:
        p_value = min(p_value, float(carried["p_value"]))
        low, high = msprt.intersect_intervals(
            (_bound(carried["ci_low"], -math.inf), _bound(carried["ci_high"], math.inf)),
            (low, high),
        )
        looks = int(carried["looks"]) + 1
    look = Look(difference, low, high, p_value, p_value <= alpha)
    return look, {"p_value": p_value, "ci_low": low, "ci_high": high, "looks": looks}


def group_sequential_look(
    design: Design, difference: float, variance: float, units: float, carried: Carried | None
) -> tuple[Look, Carried]:
    """A formal look when information reaches the next planned fraction k/K; else the last.

    The maximum information is the design's ``planned_units``; the look history is this
    comparison's own. Once a boundary is crossed the comparison stays decided with the
    numbers of that look (the design stops there); after the final look nothing is spent.
    """
    history = [float(x) for x in (carried or {}).get("information", [])]
    z_critical = [float(x) for x in (carried or {}).get("z_critical", [])]
    rejected = (carried or {}).get("rejected")
    if rejected is not None:
        look = Look(float(rejected["difference"]), float(rejected["ci_low"]),
                    float(rejected["ci_high"]), None, True, tuple(history),
                    z_critical[-1] if z_critical else None)  # fmt: skip
        return look, dict(carried or {})
    fraction = units / design.planned_units
    finished = bool(history) and history[-1] >= design.planned_units
    due = (
        not finished
        and (not history or units > history[-1])
        and (fraction >= (len(history) + 1) / design.looks or fraction >= 1.0)
    )
    state: Carried = {"information": history, "z_critical": z_critical, "rejected": None}
    if not due:
        if not z_critical:
            return Look(difference, -math.inf, math.inf, None, False, tuple(history)), state
        half = z_critical[-1] * math.sqrt(variance)
        return Look(difference, difference - half, difference + half, None, False, tuple(history),
                    z_critical[-1]), state  # fmt: skip
    history = [*history, units]
    boundary = boundary_at_look(
        history, design.planned_units, design.comparison_alpha, final=fraction >= 1.0
    )
    z_critical = [*z_critical, boundary.z_critical]
    half = boundary.z_critical * math.sqrt(variance)
    low, high = difference - half, difference + half
    significant = abs(difference) / math.sqrt(variance) >= boundary.z_critical
    state = {"information": history, "z_critical": z_critical, "rejected": None}
    if significant:
        state["rejected"] = {"difference": difference, "ci_low": low, "ci_high": high}
    look = Look(difference, low, high, None, significant, tuple(history), boundary.z_critical)
    return look, state
