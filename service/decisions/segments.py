"""Results per segment, and the SRM test per segment when the experiment's fails. Pure.

Each segment (a value of an attribute the experiment names in ``segments``) gets the
primary metric's treatment-versus-control comparison from its own sufficient statistics (a
ratio primary's are its linearised ones, as for the whole experiment: ``ratios.py``):
the mSPRT's always-valid p-value and interval of one look (Johari et al. 2022), valid
whenever a page is read. Its mixture is the design's standardized one at the policy's alpha,
tuned for a segment's share of the plan (``planned_units`` over the attribute's cap plus
``other``): fixed in advance, as any mixture must be, and valid whatever it is. Reading many segments finds false "effects" by chance, so the
p-values of one attribute's segments and treatments are adjusted together, by Holm (the
family-wise error, Holm 1979) or Benjamini-Hochberg (the false discovery rate, Benjamini &
Hochberg 1995), as ``policy.segment_correction`` says. The decision rules never read these
results: they inform, the whole experiment's comparisons decide.

When the experiment's sample-ratio test flags, the same anytime-valid test (Lindon & Malek
2022) runs on every segment's counts of the current allocation period, Holm-adjusted across
the attribute's segments, so the audit entry and the dashboard name where the imbalance is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import date

from analysis import cuped, msprt, srm
from analysis.multiple_testing import MultipleTestingResult, benjamini_hochberg, holm
from analysis.sufficient_stats import SufficientStats
from service.decisions.sequential import Design, information
from service.experiments.schema import Experiment

SegmentDays = Mapping[tuple[str, str], Mapping[date, Mapping[str, int]]]
"""(attribute, segment) -> day of first exposure -> variant -> units."""
SegmentUnits = Mapping[tuple[str, str], Mapping[str, int]]
"""(attribute, segment) -> variant -> units."""
SegmentStats = Mapping[tuple[str, str], Mapping[tuple[str, str], SufficientStats]]
"""(attribute, segment) -> (variant, metric) -> sufficient statistics."""

NOTE = (
    "Segment results do not drive automatic decisions: the decision rules read only the whole"
    " experiment's comparisons. Each segment's p-value is adjusted for the number of segments"
    " and treatments of its attribute; an effect found in one segment is a hypothesis to test"
    " in an experiment of its own."
)


@dataclass(frozen=True)
class SegmentComparison:
    """Treatment minus control on the primary metric, within one segment."""

    attribute: str
    segment: str
    metric: str
    variant: str
    control_units: int
    treatment_units: int
    control_mean: float
    treatment_mean: float
    difference: float
    lift_relative: float | None
    ci_low: float
    ci_high: float
    """Always-valid interval at the policy's alpha, not adjusted for the segments."""
    p_value: float
    """Always-valid p-value of this look, not adjusted."""
    p_value_adjusted: float
    """Adjusted across the attribute's segments and treatments (``correction``)."""
    significant: bool
    """The adjusted p-value is at most alpha."""
    cuped: bool


@dataclass(frozen=True)
class SegmentSrm:
    """The sample-ratio test within one segment (current allocation period)."""

    attribute: str
    segment: str
    observed: dict[str, int]
    expected_weights: dict[str, float]
    p_value: float
    """Anytime-valid (Lindon & Malek 2022), not adjusted."""
    p_value_adjusted: float
    """Holm across the attribute's segments."""
    flagged: bool
    """The adjusted p-value is at or below the experiment's SRM threshold."""


@dataclass(frozen=True)
class SegmentReport:
    attributes: list[str]
    correction: str
    alpha: float
    metric: str
    units: dict[str, dict[str, dict[str, int]]]
    """attribute -> segment -> variant -> exposed units."""
    comparisons: list[SegmentComparison] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    note: str = NOTE


def _adjust(p_values: list[float], correction: str, alpha: float) -> MultipleTestingResult:
    if correction == "fdr_bh":
        return benjamini_hochberg(p_values, alpha)
    return holm(p_values, alpha)


def _totals(days: Mapping[date, Mapping[str, int]]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for by_variant in days.values():
        for variant, units in by_variant.items():
            totals[variant] = totals.get(variant, 0) + units
    return totals


def _compare(
    attribute: str, segment: str, metric: str, variant: str, control: SufficientStats,
    treatment: SufficientStats, design: Design,
) -> SegmentComparison:  # fmt: skip
    difference = treatment.mean - control.mean
    variance = treatment.variance_of_mean + control.variance_of_mean
    if not variance > 0:
        raise ValueError("no variance in either arm yet")
    used_cuped = False
    if control.covariate_total is not None and treatment.covariate_total is not None:
        try:
            adjusted = cuped.compare(control, treatment)
        except ValueError:
            adjusted = None
        if adjusted is not None and 0 < adjusted.difference_variance < variance:
            difference, variance, used_cuped = (
                adjusted.difference,
                adjusted.difference_variance,
                True,
            )
    # The design's standardized mixture (valid for any tau2), tuned for a segment's share.
    tau2 = design.mixing_variance(variance, information(control.n, treatment.n))
    look = msprt.msprt_look(difference, variance, tau2, design.alpha)
    lift = difference / control.mean if control.mean != 0 else None
    return SegmentComparison(attribute, segment, metric, variant, control.n, treatment.n,
                             control.mean, treatment.mean, difference, lift, look.ci_low,
                             look.ci_high, look.p_value_always_valid, look.p_value_always_valid,
                             False, used_cuped)  # fmt: skip


def analyze_segments(
    experiment: Experiment, design: Design, segment_units: SegmentUnits, stats: SegmentStats
) -> SegmentReport | None:
    """Every segment's primary comparisons, adjusted per attribute; None without segments."""
    specs = experiment.segment_attributes
    attributes = [spec.attribute for spec in specs]
    if not attributes:
        return None
    metric = experiment.metrics.primary.name
    control = experiment.control
    correction = experiment.policy.segment_correction
    units: dict[str, dict[str, dict[str, int]]] = {a: {} for a in attributes}
    report = SegmentReport(attributes, correction, design.alpha, metric, units)
    for spec in specs:
        attribute = spec.attribute
        # Tuned (fixed in advance) for a segment's share of the plan: the cap's values and other.
        planned = max(2, design.planned_units // (spec.cap + 1))
        tuned = replace(design, comparison_alpha=design.alpha, planned_units=planned)
        family: list[SegmentComparison] = []
        for (name, segment), by_variant in sorted(segment_units.items()):
            if name != attribute:
                continue
            units[attribute][segment] = dict(by_variant)
            found = stats.get((attribute, segment), {})
            for variant in experiment.variant_keys:
                if variant == control or not units[attribute][segment].get(variant):
                    continue
                base, other = found.get((control, metric)), found.get((variant, metric))
                label = f"{attribute}={segment}/{variant}"
                if base is None or other is None:
                    report.skipped.append(f"{label}: no units in one arm yet")
                    continue
                try:
                    family.append(_compare(attribute, segment, metric, variant, base, other, tuned))
                except (ValueError, ArithmeticError) as error:
                    report.skipped.append(f"{label}: {error}")
        if not family:
            continue
        adjusted = _adjust([c.p_value for c in family], correction, design.alpha)
        report.comparisons.extend(
            replace(c, p_value_adjusted=p, significant=bool(reject))
            for c, p, reject in zip(
                family, adjusted.p_values_adjusted, adjusted.reject, strict=True
            )
        )
    return report


def srm_drill_down(
    attributes: list[str], days: SegmentDays, shares: Mapping[str, float],
    started_on: str | None, threshold: float, concentration: float,
) -> list[SegmentSrm]:  # fmt: skip
    """The SRM test within every segment, on the units first exposed in the current period.

    ``shares`` are the weights in force (the experiment's own test's); ``started_on`` the
    day the period began, whose units are left out (the period began during it), as the
    experiment's per-day tests do.
    """
    keys = [k for k, w in shares.items() if w > 0]
    if len(keys) < 2:
        return []
    weights = [shares[k] for k in keys]
    found: list[SegmentSrm] = []
    for attribute in attributes:
        family = []
        for (name, segment), segment_days in sorted(days.items()):
            if name != attribute:
                continue
            in_period = {d: v for d, v in segment_days.items()
                         if started_on is None or d.isoformat() > started_on}  # fmt: skip
            totals = _totals(in_period)
            counts = [totals.get(k, 0) for k in keys]
            if sum(counts) == 0:
                continue
            test = srm.sequential_srm(counts, weights, threshold, concentration=concentration)
            family.append(SegmentSrm(attribute, segment, dict(zip(keys, counts, strict=True)),
                                     dict(shares), test.p_value_always_valid,
                                     test.p_value_always_valid, False))  # fmt: skip
        if not family:
            continue
        adjusted = holm([s.p_value for s in family], threshold)
        found.extend(
            replace(s, p_value_adjusted=p, flagged=p <= threshold)
            for s, p in zip(family, adjusted.p_values_adjusted, strict=True)
        )
    return found
