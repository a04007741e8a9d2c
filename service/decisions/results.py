"""What one analysis of an experiment found: frozen results with units in their names."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from service.decisions.drift import DriftCheck
from service.decisions.segments import SegmentReport, SegmentSrm


def json_safe(value: Any) -> Any:
    """Dataclasses, dates and non-finite floats (as null: an interval before any look is
    unbounded) in plain JSON, for the audit log, the API and the dashboards alike."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return json_safe(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


@dataclass(frozen=True)
class Comparison:
    """Treatment minus control on one metric (always-valid unless the method is group-sequential)."""

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
    p_value: float | None
    p_value_adjusted: float | None
    significant: bool
    better: bool | None
    """True: significantly better in the metric's direction; False: significantly worse."""
    cuped: bool
    variance_reduction: float
    method: str
    information_looks: tuple[float, ...] = ()
    """Group-sequential only: the information (units) at each formal look so far."""
    z_critical: float | None = None
    """Group-sequential only: the boundary of the latest formal look."""


@dataclass(frozen=True)
class GuardrailCheck:
    metric: str
    variant: str
    breached: bool
    holds: bool
    harm: float
    harm_lower_bound: float
    harm_upper_bound: float
    margin: float
    relative: bool


@dataclass(frozen=True)
class SrmCheck:
    p_value: float
    """Anytime-valid (Lindon & Malek 2022), against the weights of each allocation period."""
    flagged: bool
    """The sequential test, or a completed day's own test, is at or below its threshold."""
    threshold: float
    observed: dict[str, int]
    expected_weights: dict[str, float]
    flagged_days: list[str] = field(default_factory=list)
    log_e_value: float | None = None
    """The sequential test's log e-value now (its p-value is 1 / the running maximum)."""
    segments: list[SegmentSrm] = field(default_factory=list)
    """When flagged and the experiment has segments: the same test per segment (drill-down)."""


@dataclass(frozen=True)
class MetricMaturity:
    """Which units a windowed metric's analysis used: those whose outcome window has closed."""

    metric: str
    maturity_hours: float
    """The metric's window plus its maturity delay."""
    cutoff: str
    """Units first exposed before this day (UTC date) are mature."""
    mature_units: dict[str, int]
    pending_units: dict[str, int]
    """Exposed units whose window is still open: counted, not analysed."""


@dataclass(frozen=True)
class ExperimentAnalysis:
    experiment: str
    seed: str
    method: str
    alpha: float
    units: dict[str, int]
    srm: SrmCheck | None
    primary: list[Comparison] = field(default_factory=list)
    secondary: list[Comparison] = field(default_factory=list)
    guardrails: list[GuardrailCheck] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    """Comparisons without enough data yet (e.g. no variance in an arm), with why."""
    maturity: dict[str, MetricMaturity] = field(default_factory=dict)
    """Windowed metrics only: mature and pending units per variant."""
    drift: list[DriftCheck] = field(default_factory=list)
    """Drift guardrails (policy.drift), per treatment."""
    errors: list[str] = field(default_factory=list)
    """Comparisons that could not be computed for another reason, with why: shown on the
    dashboard, logged and counted (``abx_analysis_comparison_errors``), never silent."""
    segments: SegmentReport | None = None
    """Per-segment results (``segments`` in the YAML): shown, never read by the rules."""
