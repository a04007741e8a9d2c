"""Shape of one experiment file (experiments/README.md documents every field).

Only shape and types live here; checks that relate fields to each other
(weights summing to 1, the control naming a variant...) are in
``experiment_rules`` so that each problem can point at its own YAML line.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Field, PrivateAttr, Tag

Key = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
Scalar = str | int | float | bool

EQUALITY_OPS = ("eq", "neq")
LIST_OPS = ("in", "not_in")
NUMERIC_OPS = ("gt", "gte", "lt", "lte")
VERSION_OPS = ("version_eq", "version_gt", "version_gte", "version_lt", "version_lte")
TARGETING_OPS = (*EQUALITY_OPS, *LIST_OPS, *NUMERIC_OPS, *VERSION_OPS, "exists")
Operator = Literal[
    "eq", "neq", "in", "not_in", "gt", "gte", "lt", "lte",
    "version_eq", "version_gt", "version_gte", "version_lt", "version_lte", "exists",
]  # fmt: skip


class StrictModel(BaseModel):
    """Unknown fields are errors, and YAML strings are never coerced to numbers."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


FeatureName = Annotated[str, Field(min_length=1)]
Scaling = float | list[float] | dict[FeatureName, float]


class InputSpec(StrictModel):
    """How one request input feeds the model: its model-side name, columns and scaling."""

    model_input: str | None = None
    """The model's input name; default: the request's name."""
    features: list[FeatureName] | None = Field(default=None, min_length=1)
    """The input's column names in the model's order: requests may then send named values."""
    offset: Scaling = 0.0
    factor: Scaling = 1.0
    """Preprocessing ``(x - offset) * factor``: for all (a number), per column (a list, in
    the model's order) or per feature name (a mapping; needs ``features``)."""


ENDPOINT_PATTERN = r"^https?://[A-Za-z0-9.\-\[\]:]+(:[0-9]+)?/v2/models/[A-Za-z0-9_.-]+$"


class ReferenceProfile(StrictModel):
    path: str = Field(min_length=1)
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


REGISTRY_PATTERN = (
    r"^mlflow:models:/[A-Za-z0-9][A-Za-z0-9_.\-]{0,255}(@[A-Za-z_][A-Za-z0-9_\-]{0,254}"
    r"|/[1-9][0-9]{0,9})$"
)
REGISTRY_ALIAS_PATTERN = r"^[A-Za-z_][A-Za-z0-9_\-]{0,254}$"


class RegistryVersion(StrictModel):
    """The registry version a ``registry`` reference resolved to when it was loaded."""

    uri: str
    name: str
    version: str
    from_cache: bool = False
    """The registry was unreachable: the last version resolved on this host serves on."""


class ModelRef(StrictModel):
    path: str | None = Field(default=None, min_length=1)
    """The ONNX file under the models root (with ``sha256``); or else ``endpoint``."""
    registry: Annotated[str, Field(pattern=REGISTRY_PATTERN)] | None = None
    """A model in an MLflow registry, ``mlflow:models:/<name>@<alias>`` or
    ``mlflow:models:/<name>/<version>``: resolved and downloaded at load and at every reload
    (``path`` and ``sha256`` are then filled in from the download)."""
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None
    endpoint: Annotated[str, Field(pattern=ENDPOINT_PATTERN)] | None = None
    """A model served elsewhere over the Open Inference Protocol (KServe v2 REST):
    ``http://host:port/v2/models/<name>``."""
    token_env: Annotated[str, Field(pattern=r"^[A-Z_][A-Z0-9_]*$")] | None = None
    """The environment variable holding the endpoint's bearer token (never the token)."""
    providers: list[Literal["CUDAExecutionProvider", "CPUExecutionProvider"]] | None = Field(
        default=None, min_length=1
    )
    """Execution providers in order of preference; default: chosen by calibration at load."""
    inputs: dict[str, InputSpec] = Field(default_factory=dict)
    outputs: dict[str, str] = Field(default_factory=dict)
    """Model output name -> response name; default: every output under its own name."""
    batching: bool = False
    """Group concurrent requests into one run (ABX_BATCH_MAX_SIZE, ABX_BATCH_MAX_WAIT_MS)."""
    reference: ReferenceProfile | None = None
    """Reference distributions of the model's inputs and outputs (``abx models profile``):
    the sketches' bins, and what the drift guardrails compare this variant with."""
    _resolved: RegistryVersion | None = PrivateAttr(default=None)

    @property
    def resolved(self) -> RegistryVersion | None:
        """The registry version this reference was resolved to (None: not from a registry)."""
        return self._resolved

    def with_resolution(self, path: str, sha256: str, resolved: RegistryVersion) -> ModelRef:
        """This reference served from the file a registry version was downloaded to."""
        copy = self.model_copy(update={"path": path, "sha256": sha256})
        copy._resolved = resolved
        return copy


class Shadow(StrictModel):
    sample_rate: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0


class Variant(StrictModel):
    key: Key
    weight: Fraction
    description: str = ""
    model: ModelRef | None = None
    shadow: Shadow | None = None
    """A shadow runs on a sample of requests off the response path and is never served."""


class PredictionCacheSpec(StrictModel):
    max_entries: Annotated[int, Field(ge=1)] = 10_000
    ttl_seconds: Annotated[float, Field(gt=0.0)] = 300.0


class Serving(StrictModel):
    """How ``/v1/predict`` serves this experiment's models."""

    latency_budget_ms: Annotated[float, Field(gt=0.0)] | None = None
    fallback: Key | None = None
    """Variant whose model answers when the assigned one fails; default: the control."""
    cache: PredictionCacheSpec | None = None


class Layer(StrictModel):
    name: Key
    range: Annotated[list[Fraction], Field(min_length=2, max_length=2)]


class Condition(StrictModel):
    attribute: str = Field(min_length=1)
    op: Operator
    value: Scalar | None = None
    values: list[Scalar] | None = None


class AllOf(StrictModel):
    all: list[TargetingNode] = Field(min_length=1)


class AnyOf(StrictModel):
    any: list[TargetingNode] = Field(min_length=1)


class NotOf(StrictModel):
    not_: TargetingNode = Field(alias="not")


def _node_kind(node: Any) -> str | None:
    """Dispatch a targeting node on its single group key, else treat it as a condition."""
    if isinstance(node, dict):
        for group in ("all", "any", "not"):
            if group in node:
                return f"<{group}>"
        return "<condition>"
    if isinstance(node, BaseModel):
        return {AllOf: "<all>", AnyOf: "<any>", NotOf: "<not>"}.get(type(node), "<condition>")
    return None


TargetingNode = Annotated[
    Annotated[Condition, Tag("<condition>")]
    | Annotated[AllOf, Tag("<all>")]
    | Annotated[AnyOf, Tag("<any>")]
    | Annotated[NotOf, Tag("<not>")],
    Discriminator(
        _node_kind,
        custom_error_type="targeting_node",
        custom_error_message="a targeting rule must be a mapping: a condition, or all/any/not",
    ),
]


DURATION_UNITS_HOURS = {"h": 1.0, "d": 24.0, "w": 168.0}


def duration_hours(text: str) -> float:
    """Hours in a duration written ``36h``, ``7d`` or ``2w``."""
    return float(text[:-1]) * DURATION_UNITS_HOURS[text[-1]]


def _duration(text: str) -> str:
    number, unit = text[:-1], text[-1:]
    if unit not in DURATION_UNITS_HOURS or not number.isdigit() or int(number) < 1:
        raise ValueError(
            f"a duration like 36h, 7d or 2w (a whole number and h, d or w), got {text!r}"
        )
    if duration_hours(text) > 366 * 24:
        raise ValueError(f"at most a year, got {text!r}")
    return text


Duration = Annotated[str, AfterValidator(_duration)]


class Maturity(StrictModel):
    """When a unit's outcome on a windowed metric counts: its window closed, plus ``delay``."""

    delay: Duration | None = None
    """Extra wait after the window closes for late labels to arrive (e.g. ``2d``)."""
    min_units: Annotated[int, Field(ge=0)] | None = None
    """Mature units per variant before this metric can decide anything; default policy.min_units."""


MODEL_FALLBACK_RATE = "model_fallback_rate"
MODEL_LATENCY_P99 = "model_latency_p99_ms"
MODEL_HEALTH_METRICS = {MODEL_FALLBACK_RATE: "binary", MODEL_LATENCY_P99: "continuous"}
"""Guardrails read from every ``/v1/predict`` answer (no events), by name, with their type.
Any other guardrail name starting with ``model_`` is refused: it would silently never fire."""


class Metric(StrictModel):
    name: Key
    type: Literal["binary", "count", "continuous", "ratio"]
    direction: Literal["increase", "decrease"] = "increase"
    description: str = ""
    numerator: Key | None = None
    denominator: Key | None = None
    """``type: ratio`` only: the metrics (declared in this file, not ratios) whose per-unit
    totals divide, e.g. revenue per session; analysed by the delta method (docs/statistics.md)."""
    window: Duration | None = None
    """Outcome window (``7d``): only outcomes within it after exposure count, and only units
    exposed at least this long ago (plus ``maturity.delay``) enter the analysis."""
    maturity: Maturity | None = None

    @property
    def maturity_hours(self) -> float | None:
        """How long after exposure a unit's outcome is final; None: counts at once."""
        if self.window is None:
            return None
        delay = self.maturity.delay if self.maturity is not None else None
        return duration_hours(self.window) + (duration_hours(delay) if delay else 0.0)


class Guardrail(Metric):
    direction: Literal["increase", "decrease"] = "decrease"
    margin: Annotated[float, Field(gt=0.0)]
    margin_type: Literal["relative", "absolute"] = "relative"


class Metrics(StrictModel):
    primary: Metric
    secondary: list[Metric] = Field(default_factory=list)
    guardrails: list[Guardrail] = Field(default_factory=list)

    def all_metrics(self) -> list[Metric]:
        return [self.primary, *self.secondary, *self.guardrails]

    def ratio_metrics(self) -> list[Metric]:
        """The ``type: ratio`` metrics: computed from two others, never sent as events."""
        return [metric for metric in self.all_metrics() if metric.type == "ratio"]


class Ramp(StrictModel):
    """Coverage steps taken one after another while every guardrail holds."""

    steps: Annotated[list[Fraction], Field(min_length=1)]
    hold_hours: Annotated[float, Field(ge=0.0)] = 24.0


class DriftGuardrail(StrictModel):
    """Act when a treatment's model outputs (or inputs) drift from their reference.

    The reference is set by ``against``. A window trips when the
    largest distance over the outputs (``prediction_drift``) or input columns
    (``input_drift``) exceeds ``threshold``; the guardrail trips when the last ``windows``
    windows all did (an effect size held, not a p-value: docs/statistics.md).
    """

    kind: Literal["prediction_drift", "input_drift"]
    measure: Literal["psi", "ks", "wasserstein"] = "psi"
    threshold: Annotated[float, Field(gt=0.0)] = 0.25
    windows: Annotated[int, Field(ge=1, le=168)] = 3
    window_hours: Annotated[int, Field(ge=1, le=168)] = 1
    min_rows: Annotated[int, Field(ge=1)] = 500
    """Rows each side needs in a window for it to count (a thinner window breaks the run)."""
    action: Literal["alert", "halt", "rollback"] = "alert"
    against: Literal["reference", "control", "both"] | None = None
    """What the variant is compared with: its model's reference profile, the control's
    sketches of the same window, or both (the guardrail trips when either comparison holds
    over the threshold). Default: the reference profile when the model has one, else the
    control."""


class ShadowGraduation(StrictModel):
    """Start a shadow as a treatment once it has stayed within bounds for ``hours`` hours.

    Each complete hour of shadow runs counts when the bound of its 95% interval, not its
    point estimate, is within every bound given (docs/statistics.md): the agreement's Wilson
    lower bound at least ``min_agreement``, the mean absolute difference's upper bound at most
    ``max_mean_abs_difference``; the shadow's p99 latency at most ``max_latency_p99_ms`` and
    at most ``max_latency_ratio`` times the served model's p99 of the same hour.
    """

    min_agreement: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    max_mean_abs_difference: Annotated[float, Field(ge=0.0)] | None = None
    max_latency_p99_ms: Annotated[float, Field(gt=0.0)] | None = None
    max_latency_ratio: Annotated[float, Field(gt=0.0)] | None = None
    hours: Annotated[int, Field(ge=1, le=720)] = 24
    min_rows: Annotated[int, Field(ge=1)] = 100
    """Rows with an agreement an hour needs to count (a thinner or missing hour breaks the run)."""
    weight: Annotated[float, Field(gt=0.0, lt=1.0)] | None = None
    """The new treatment's weight, taken from the control's; default: the first ramp step."""
    action: Literal["start", "propose"] = "propose"
    """``start`` applies it; ``propose`` records it for a human to approve."""


class Bandit(StrictModel):
    """Thompson sampling (``method: bandit``): how traffic moves between arms at each analysis.

    Each arm's weight is its floor plus its share of the rest by the posterior probability
    that it is the best on the primary metric (Beta–Bernoulli for binary metrics, normal
    otherwise); units already assigned keep their variant.
    """

    control_floor: Fraction = 0.2
    """The control's share never goes below this (nor below ``arm_floor``)."""
    arm_floor: Fraction = 0.05
    """No arm's share goes below this."""
    min_units: Annotated[int, Field(ge=0)] = 100
    """Units every arm needs before the first re-weighting (until then the YAML's weights)."""
    draws: Annotated[int, Field(ge=100, le=1_000_000)] = 10_000
    """Monte Carlo draws from the posteriors for the probability that each arm is best."""
    min_hours_between_moves: Annotated[float, Field(ge=0.0, le=24 * 7)] = 1.0
    """Hours after a move before the next: every move is an allocation each new unit's
    assignment checks (docs/statistics.md), so moves are kept to a bounded number."""


AttributeName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")]
SEGMENT_VALUES_DEFAULT = 10
SEGMENT_VALUES_MAX = 50


class SegmentAttribute(StrictModel):
    """One attribute to analyse by, read from the unit's first exposure (docs/statistics.md).

    ``values`` names the values that get a bucket of their own; without it the first
    ``max_values`` values seen (in the order the rollup counts exposures) do. Any other
    value is counted as ``other``; an exposure without the attribute as ``(none)``.
    """

    attribute: AttributeName
    values: Annotated[list[Annotated[str, Field(min_length=1, max_length=64)]],
                      Field(min_length=1, max_length=SEGMENT_VALUES_MAX)] | None = None  # fmt: skip
    max_values: Annotated[int, Field(ge=1, le=SEGMENT_VALUES_MAX)] | None = None

    @property
    def cap(self) -> int:
        """How many values get a bucket of their own."""
        if self.values is not None:
            return len(self.values)
        return self.max_values or SEGMENT_VALUES_DEFAULT


def _segment_kind(entry: Any) -> str | None:
    if isinstance(entry, str):
        return "<name>"
    if isinstance(entry, dict | SegmentAttribute):
        return "<attribute>"
    return None


SegmentEntry = Annotated[
    Annotated[AttributeName, Tag("<name>")] | Annotated[SegmentAttribute, Tag("<attribute>")],
    Discriminator(
        _segment_kind,
        custom_error_type="segment_entry",
        custom_error_message="a segment is an attribute name, or a mapping with 'attribute'",
    ),
]


class Policy(StrictModel):
    """How the decision workers judge and act on this experiment."""

    method: Literal["msprt", "confidence_sequence", "group_sequential", "bandit"] = "msprt"
    alpha: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.05
    expected_effect: Annotated[float, Field(gt=0.0)] | None = None
    """Absolute effect on the primary metric the test is tuned for (mSPRT tau2 = effect**2)."""
    planned_units: Annotated[int, Field(ge=2)] = 10_000
    """Units per variant at the horizon (tunes the tests; the horizon for inconclusive)."""
    power: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.8
    """Power ``abx validate`` checks ``planned_units`` against, for ``expected_effect``."""
    baseline: Annotated[float, Field(gt=0.0)] | None = None
    """The control's expected rate (binary primary) or mean (count, continuous, ratio: the
    relative lift ``expected_effect / baseline`` scales the treatment's standard deviation
    under the multiplicative effect the power check assumes; without it, equal deviations)."""
    standard_deviation: Annotated[float, Field(gt=0.0)] | None = None
    """Count or continuous primary metric: its per-unit standard deviation, for the power check."""
    looks: Annotated[int, Field(ge=1, le=100)] = 10
    """Group-sequential only: planned looks, equally spaced in information."""
    min_units: Annotated[int, Field(ge=0)] = 500
    min_runtime_hours: Annotated[float, Field(ge=0.0)] = 24.0
    horizon_days: Annotated[float, Field(gt=0.0)] | None = 28.0
    auto_promote: bool = True
    ramp: Ramp | None = None
    srm_threshold: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.001
    webhooks: list[Annotated[str, Field(pattern=r"^https?://")]] = Field(default_factory=list)
    drift: list[DriftGuardrail] = Field(default_factory=list)
    registry_alias: Annotated[str, Field(pattern=REGISTRY_ALIAS_PATTERN)] | None = None
    """Opt-in: promoting a variant whose model comes from an MLflow registry points this alias
    (e.g. ``champion``) at the version it served; rolling the promotion back points it back."""
    bandit: Bandit | None = None
    """``method: bandit`` only (its defaults apply when absent)."""
    shadow_graduation: ShadowGraduation | None = None
    segment_correction: Literal["holm", "fdr_bh"] = "holm"
    """Multiplicity correction of per-segment results, across one attribute's segments and
    treatments: Holm (family-wise error) or Benjamini-Hochberg (false discovery rate).
    Segment results are shown, never used by the decision rules."""

    @property
    def bandit_settings(self) -> Bandit:
        return self.bandit or Bandit()


class Experiment(StrictModel):
    key: Key
    description: str = Field(min_length=1)
    owner: str = Field(min_length=1)
    status: Literal["draft", "running", "paused", "concluded"]
    salt: Key | None = None
    version: Annotated[int, Field(ge=1)] = 1
    control: Key
    variants: list[Variant] = Field(min_length=2)
    coverage: Fraction = 1.0
    layer: Layer | None = None
    targeting: TargetingNode | None = None
    forced: dict[str, Key] = Field(default_factory=dict)
    metrics: Metrics
    serving: Serving = Field(default_factory=Serving)
    outcome_window_hours: Annotated[float, Field(gt=0.0)] = 168.0
    policy: Policy = Field(default_factory=Policy)
    segments: Annotated[list[SegmentEntry], Field(max_length=5)] = Field(default_factory=list)
    """Attributes to analyse by (``[platform, country]``), recorded with the first exposure."""

    @property
    def segment_attributes(self) -> tuple[SegmentAttribute, ...]:
        """``segments`` with bare names spelled out (first-seen values, default cap)."""
        return tuple(
            SegmentAttribute(attribute=entry) if isinstance(entry, str) else entry
            for entry in self.segments
        )

    @property
    def seed(self) -> str:
        """Randomization seed: changing salt or version is the only way to re-randomize."""
        return f"{self.salt or self.key}.v{self.version}"

    @property
    def variant_keys(self) -> tuple[str, ...]:
        return tuple(variant.key for variant in self.variants)


for _group in (AllOf, AnyOf, NotOf):
    _group.model_rebuild()
