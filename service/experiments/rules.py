"""Checks that relate the fields of one experiment to each other.

Each problem carries the data path it is about, so the validator can name the
YAML line; shape and type errors are pydantic's job (``experiment_schema``).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterator
from dataclasses import dataclass

from service.experiments.schema import (
    LIST_OPS,
    MODEL_HEALTH_METRICS,
    NUMERIC_OPS,
    VERSION_OPS,
    AllOf,
    AnyOf,
    Condition,
    Experiment,
    NotOf,
    duration_hours,
)
from service.experiments.source import DataPath
from service.experiments.targeting import parse_version

WEIGHT_TOLERANCE = 1e-9


@dataclass(frozen=True)
class RuleProblem:
    path: DataPath
    message: str


def check_experiment(experiment: Experiment) -> list[RuleProblem]:
    """Return every cross-field problem of one experiment, in file order."""
    problems = list(_variant_problems(experiment))
    if experiment.layer is not None:
        start, end = experiment.layer.range
        if not start < end:
            problems.append(
                RuleProblem(("layer", "range"), f"start {start} must be below end {end}")
            )
    if experiment.targeting is not None:
        problems.extend(_targeting_problems(experiment.targeting, ("targeting",)))
    known = set(experiment.variant_keys)
    for unit, variant in experiment.forced.items():
        if variant not in known:
            problems.append(
                RuleProblem(
                    ("forced", unit), f"unknown variant {variant!r}; variants: {sorted(known)}"
                )
            )
    problems.extend(_metric_problems(experiment))
    problems.extend(_drift_problems(experiment))
    problems.extend(_power_input_problems(experiment))
    problems.extend(_bandit_problems(experiment))
    problems.extend(_graduation_problems(experiment))
    problems.extend(_segment_problems(experiment))
    return problems


def _power_input_problems(experiment: Experiment) -> Iterator[RuleProblem]:
    """The power check's inputs must fit the primary metric's type."""
    policy, binary = experiment.policy, experiment.metrics.primary.type == "binary"
    if policy.baseline is not None and binary and not policy.baseline < 1.0:
        yield RuleProblem(("policy", "baseline"), f"a rate below 1, got {policy.baseline}")
    if policy.standard_deviation is not None and binary:
        yield RuleProblem(("policy", "standard_deviation"), "not for a binary primary metric "
                          "(its variance follows from baseline)")  # fmt: skip


def _bandit_problems(experiment: Experiment) -> Iterator[RuleProblem]:
    """A bandit block needs the bandit method; its floors must fit, and the YAML weights too."""
    policy = experiment.policy
    if policy.method != "bandit":
        if policy.bandit is not None:
            yield RuleProblem(
                ("policy", "bandit"), f"a bandit block needs method: bandit (it is {policy.method})"
            )
        return
    bandit = policy.bandit_settings
    arms = len(experiment.variants)
    control_floor = max(bandit.control_floor, bandit.arm_floor)
    total = control_floor + bandit.arm_floor * (arms - 1)
    if total > 1.0 + WEIGHT_TOLERANCE:
        yield RuleProblem(
            ("policy", "bandit", "arm_floor") if policy.bandit else ("policy", "method"),
            f"floors sum to {total:.6g} over {arms} arms (control {control_floor:g}, each other "
            f"arm {bandit.arm_floor:g}): they must leave room, at most 1",
        )
        return
    for index, variant in enumerate(experiment.variants):
        floor = control_floor if variant.key == experiment.control else bandit.arm_floor
        off = variant.weight == 0 and variant.key != experiment.control  # as if rolled back
        if not off and variant.weight + WEIGHT_TOLERANCE < floor:
            yield RuleProblem(
                ("variants", index, "weight"),
                f"a bandit starts from these weights: {variant.weight:g} is under the "
                f"{'control' if variant.key == experiment.control else 'arm'} floor {floor:g}",
            )


RESERVED_SEGMENTS = ("other", "(none)")


def _segment_problems(experiment: Experiment) -> Iterator[RuleProblem]:
    """Each attribute once; declared values distinct, not a reserved bucket, with no cap."""
    seen: set[str] = set()
    for index, spec in enumerate(experiment.segment_attributes):
        entry = experiment.segments[index]
        path: DataPath = (
            ("segments", index) if isinstance(entry, str) else ("segments", index, "attribute")
        )
        if spec.attribute in seen:
            yield RuleProblem(path, f"attribute {spec.attribute!r} given twice")
        if spec.attribute.startswith("abx."):
            yield RuleProblem(path, "names starting with 'abx.' are abx's own (abx.client is"
                              " always counted for the SRM drill-down)")  # fmt: skip
        seen.add(spec.attribute)
        if spec.values is None:
            continue
        if spec.max_values is not None:
            yield RuleProblem(("segments", index, "max_values"),
                              "give either 'values' or 'max_values': the values are the cap")  # fmt: skip
        values: set[str] = set()
        for position, value in enumerate(spec.values):
            if value in values:
                yield RuleProblem(("segments", index, "values", position), f"{value!r} given twice")
            elif value in RESERVED_SEGMENTS:
                yield RuleProblem(("segments", index, "values", position),
                                  f"{value!r} is the bucket of undeclared values, not a value")  # fmt: skip
            values.add(value)


def _drift_problems(experiment: Experiment) -> Iterator[RuleProblem]:
    """Drift guardrails compare models: the control and a treatment need one each."""
    with_models = [v.key for v in experiment.variants if v.model is not None]
    kinds: set[str] = set()
    for index, guardrail in enumerate(experiment.policy.drift):
        if experiment.control not in with_models or len(with_models) < 2:
            yield RuleProblem(("policy", "drift", index), "drift guardrails need the control "
                              "and at least one treatment to serve a model")  # fmt: skip
        if guardrail.kind in kinds:
            yield RuleProblem(("policy", "drift", index, "kind"), f"{guardrail.kind} given twice")
        kinds.add(guardrail.kind)
        if guardrail.against in ("reference", "both"):
            unprofiled = [v.key for v in experiment.variants if v.model is not None
                          and v.key != experiment.control and v.model.reference is None]  # fmt: skip
            if unprofiled:
                yield RuleProblem(("policy", "drift", index, "against"),
                                  f"against {guardrail.against!r} needs a reference profile on "
                                  f"every treatment's model; none on {', '.join(unprofiled)}")  # fmt: skip


def _graduation_problems(experiment: Experiment) -> Iterator[RuleProblem]:
    """A graduation needs a shadow, a quality bound, and a weight the control can give."""
    rule = experiment.policy.shadow_graduation
    if rule is None:
        return
    path: DataPath = ("policy", "shadow_graduation")
    if not any(v.shadow is not None for v in experiment.variants):
        yield RuleProblem(path, "shadow_graduation needs a shadow variant")
    if experiment.policy.method == "bandit":
        yield RuleProblem(path, "a bandit sets its own weights: shadow_graduation is not for it")
    if rule.min_agreement is None and rule.max_mean_abs_difference is None:
        yield RuleProblem(path, "shadow_graduation needs min_agreement or max_mean_abs_difference")
    ramp = experiment.policy.ramp
    weight = rule.weight if rule.weight is not None else (ramp.steps[0] if ramp else None)
    if weight is None:
        yield RuleProblem(path, "shadow_graduation needs a weight when the policy has no ramp")
        return
    control = next((v for v in experiment.variants if v.key == experiment.control), None)
    if control is not None and control.weight <= weight:
        where = (*path, "weight") if rule.weight is not None else ("policy", "ramp", "steps", 0)
        yield RuleProblem(where, f"a graduated shadow's weight {weight:g} is taken from the "
                          f"control, whose weight is {control.weight:g}")  # fmt: skip


def _variant_problems(experiment: Experiment) -> Iterator[RuleProblem]:
    seen: set[str] = set()
    for index, variant in enumerate(experiment.variants):
        if variant.key in seen:
            yield RuleProblem(("variants", index, "key"), f"duplicate variant key {variant.key!r}")
        seen.add(variant.key)
    total = math.fsum(variant.weight for variant in experiment.variants)
    if abs(total - 1.0) > WEIGHT_TOLERANCE:
        yield RuleProblem(("variants",), f"weights must sum to 1, they sum to {total:.12g}")
    if experiment.control not in seen:
        yield RuleProblem(
            ("control",), f"unknown control {experiment.control!r}; variants: {sorted(seen)}"
        )


def _metric_problems(experiment: Experiment) -> Iterator[RuleProblem]:
    metrics = experiment.metrics
    paths: list[tuple[DataPath, str]] = [(("metrics", "primary", "name"), metrics.primary.name)]
    paths += [
        (("metrics", "secondary", i, "name"), m.name) for i, m in enumerate(metrics.secondary)
    ]
    paths += [
        (("metrics", "guardrails", i, "name"), m.name) for i, m in enumerate(metrics.guardrails)
    ]
    seen: set[str] = set()
    for path, name in paths:
        if name in seen:
            yield RuleProblem(path, f"duplicate metric name {name!r}")
        seen.add(name)
    yield from _window_problems(experiment, [path[:-1] for path, _ in paths])
    yield from _ratio_problems(experiment, [path[:-1] for path, _ in paths])
    for index, guardrail in enumerate(metrics.guardrails):
        yield from _model_guardrail_problems(guardrail.name, guardrail.type, index)


def _window_problems(experiment: Experiment, paths: list[DataPath]) -> Iterator[RuleProblem]:
    """A metric's outcome window fits in the experiment's; a maturity rule needs a window."""
    for path, metric in zip(paths, experiment.metrics.all_metrics(), strict=True):
        if metric.window is None:
            if metric.maturity is not None:
                yield RuleProblem(
                    (*path, "maturity"), "a maturity rule needs the metric's 'window'"
                )
            continue
        if duration_hours(metric.window) > experiment.outcome_window_hours:
            yield RuleProblem(
                (*path, "window"),
                f"{metric.window} is longer than the experiment's outcome_window_hours "
                f"({experiment.outcome_window_hours:g}): outcomes after that are never attributed",
            )


def _same_window(first: str | None, second: str | None) -> bool:
    if first is None or second is None:
        return first is second
    return duration_hours(first) == duration_hours(second)


def _ratio_problems(experiment: Experiment, paths: list[DataPath]) -> Iterator[RuleProblem]:
    """A ratio names two declared non-ratio metrics; other metrics name none.

    A ratio with ``window`` needs both parts to have that window (their outcomes are attributed
    within it, and the ratio's mature cohorts are theirs); a ratio without one, windowless parts.
    """
    declared = {metric.name: metric for metric in experiment.metrics.all_metrics()}
    for path, metric in zip(paths, experiment.metrics.all_metrics(), strict=True):
        parts = (("numerator", metric.numerator), ("denominator", metric.denominator))
        if metric.type != "ratio":
            for field, value in parts:
                if value is not None:
                    yield RuleProblem((*path, field), f"only a 'type: ratio' metric takes "
                                      f"'{field}' ({metric.name!r} is {metric.type})")  # fmt: skip
            continue
        for field, value in parts:
            if value is None:
                yield RuleProblem(path, f"a ratio metric needs '{field}': the name of a metric "
                                  "declared in this file")  # fmt: skip
                continue
            component = declared.get(value)
            problem = None
            if value == metric.name:
                problem = "a ratio cannot divide itself"
            elif component is None:
                close = difflib.get_close_matches(value, declared, n=1, cutoff=0.5)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                problem = f"unknown metric {value!r}{hint}; declared: {', '.join(declared)}"
            elif component.type == "ratio":
                problem = f"{value!r} is itself a ratio; name the metrics it divides"
            elif value in MODEL_HEALTH_METRICS:
                problem = f"{value!r} is a model-health guardrail, not a per-unit metric"
            elif not _same_window(component.window, metric.window):
                problem = (
                    f"{value!r} has the outcome window {component.window}; give the ratio "
                    f"'window: {component.window}' too" if metric.window is None
                    else f"{value!r} needs the ratio's window ('window: {metric.window}'), "
                    f"has {component.window or 'none'}: its outcomes count within the window"
                )  # fmt: skip
            if problem is not None:
                yield RuleProblem((*path, field), problem)
        if metric.numerator is not None and metric.numerator == metric.denominator:
            yield RuleProblem((*path, "denominator"), "numerator and denominator are the same "
                              "metric: the ratio is always 1")  # fmt: skip


def _model_guardrail_problems(name: str, kind: str, index: int) -> Iterator[RuleProblem]:
    """A ``model_`` guardrail must be a built-in model-health metric, of its type."""
    if not name.startswith("model_"):
        return
    path: DataPath = ("metrics", "guardrails", index, "name")
    builtin = MODEL_HEALTH_METRICS.get(name)
    if builtin is None:
        close = difflib.get_close_matches(name, MODEL_HEALTH_METRICS, n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}? " if close else ""
        yield RuleProblem(
            path,
            f"unknown model-health guardrail {name!r}: {hint}names starting with 'model_' are"
            f" the built-in ones, read from /v1/predict: {', '.join(MODEL_HEALTH_METRICS)}",
        )
    elif kind != builtin:
        yield RuleProblem(
            ("metrics", "guardrails", index, "type"), f"{name!r} is a {builtin} metric"
        )


def _targeting_problems(
    node: Condition | AllOf | AnyOf | NotOf, path: DataPath
) -> list[RuleProblem]:
    if isinstance(node, AllOf | AnyOf):
        group = "all" if isinstance(node, AllOf) else "any"
        children = node.all if isinstance(node, AllOf) else node.any
        return [
            problem
            for index, child in enumerate(children)
            for problem in _targeting_problems(child, (*path, group, index))
        ]
    if isinstance(node, NotOf):
        return _targeting_problems(node.not_, (*path, "not"))
    return _condition_problems(node, path)


def _condition_problems(rule: Condition, path: DataPath) -> list[RuleProblem]:
    op = rule.op
    if op in LIST_OPS:
        if rule.values is None or rule.value is not None:
            return [RuleProblem((*path, "values"), f"operator {op!r} takes a list in 'values'")]
        if not rule.values:
            return [RuleProblem((*path, "values"), "must not be empty")]
        return []
    if rule.values is not None or rule.value is None:
        return [RuleProblem((*path, "value"), f"operator {op!r} takes a single 'value'")]
    value = rule.value
    if op in NUMERIC_OPS and (isinstance(value, bool) or not isinstance(value, int | float)):
        return [RuleProblem((*path, "value"), f"operator {op!r} needs a number, got {value!r}")]
    if op in VERSION_OPS and (not isinstance(value, str) or parse_version(value) is None):
        return [
            RuleProblem(
                (*path, "value"), f"operator {op!r} needs a version like '2.3.0', got {value!r}"
            )
        ]
    if op == "exists" and not isinstance(value, bool):
        return [
            RuleProblem((*path, "value"), f"operator 'exists' needs true or false, got {value!r}")
        ]
    return []
