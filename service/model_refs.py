"""Check the model references of an experiment: rules between fields, then the files.

A model path outside the models root, a missing file, a checksum mismatch, a
file that is not ONNX, or preprocessing that does not fit the model's inputs
is a validation problem: abx never loads such a model silently.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import onnx

from service.experiment_rules import RuleProblem
from service.experiment_schema import Experiment, ModelRef


def model_rule_problems(experiment: Experiment) -> Iterator[RuleProblem]:
    """Shadows are never served; every served variant of a model experiment has a model."""
    with_model = any(variant.model is not None for variant in experiment.variants)
    served = {v.key for v in experiment.variants if v.shadow is None and v.model is not None}
    for index, variant in enumerate(experiment.variants):
        path = ("variants", index)
        if variant.shadow is not None:
            if variant.weight != 0:
                yield RuleProblem((*path, "weight"), "a shadow variant is never served: weight 0")
            if variant.model is None:
                yield RuleProblem((*path, "shadow"), "a shadow variant needs a model")
            if variant.key == experiment.control:
                yield RuleProblem((*path, "shadow"), "the control cannot be a shadow")
            if variant.key in experiment.forced.values():
                yield RuleProblem((*path, "shadow"), "forced units cannot be sent to a shadow")
        elif with_model and variant.model is None:
            yield RuleProblem(
                (*path, "model"), "every served variant needs a model when one variant has one"
            )
    fallback = experiment.serving.fallback
    if fallback is not None and fallback not in served:
        yield RuleProblem(
            ("serving", "fallback"),
            f"fallback {fallback!r} must be a served variant with a model; those: {sorted(served)}",
        )


DYNAMIC_QUANTIZATION_OPS = frozenset({"DynamicQuantizeLinear", "DynamicQuantizeMatMul"})


def _is_demo(path: str) -> bool:
    from service.demo_models import DEMO_FILES

    return path in DEMO_FILES


def resolve_model_path(root: Path, relative: str) -> Path | None:
    """The model file under ``root``, or None when the path leaves the models root."""
    base = root.resolve()
    target = (base / relative).resolve()
    return target if target.is_relative_to(base) else None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _signature_problems(ref: ModelRef, model: onnx.ModelProto) -> Iterator[tuple[str, str]]:
    constants = {init.name for init in model.graph.initializer}
    inputs = {i.name: i for i in model.graph.input if i.name not in constants}
    outputs = {o.name for o in model.graph.output}
    for request_name, spec in ref.inputs.items():
        model_input = inputs.get(spec.model_input or request_name)
        if model_input is None:
            yield (
                "inputs",
                f"{request_name!r} names no model input; the model takes {sorted(inputs)}",
            )
            continue
        dims = model_input.type.tensor_type.shape.dim
        features = dims[-1].dim_value if dims and dims[-1].HasField("dim_value") else None
        for name, value in (("offset", spec.offset), ("factor", spec.factor)):
            if isinstance(value, list) and len(value) != features:
                yield (
                    "inputs",
                    (
                        f"{request_name}.{name} has {len(value)} values; the model's input "
                        f"{model_input.name!r} has {features} features"
                    ),
                )
    dynamic = {n.op_type for n in model.graph.node} & DYNAMIC_QUANTIZATION_OPS
    if ref.batching and dynamic:
        yield (
            "batching",
            (
                f"the model quantizes activations per run ({', '.join(sorted(dynamic))}): in a "
                "shared batch one request's answer would depend on the others'; turn batching off"
            ),
        )
    for name in ref.outputs:
        if name not in outputs:
            yield "outputs", f"{name!r} is not an output of the model; it has {sorted(outputs)}"


def model_file_problems(
    experiment: Experiment, root: Path, checked: dict[Path, str] | None = None
) -> Iterator[RuleProblem]:
    """Problems of every variant's model file; ``checked`` caches digests across experiments."""
    checked = {} if checked is None else checked
    for index, variant in enumerate(experiment.variants):
        ref = variant.model
        if ref is None:
            continue
        base = ("variants", index, "model")
        path = resolve_model_path(root, ref.path)
        if path is None:
            yield RuleProblem((*base, "path"), f"{ref.path!r} is outside the models root {root}")
            continue
        if not path.is_file():
            hint = " (build the demo models: abx models demo)" if _is_demo(ref.path) else ""
            yield RuleProblem((*base, "path"), f"no model file {ref.path!r} under {root}{hint}")
            continue
        if path not in checked:
            checked[path] = file_sha256(path)
        if checked[path] != ref.sha256:
            yield RuleProblem(
                (*base, "sha256"),
                f"{ref.path} has SHA-256 {checked[path]}, not the {ref.sha256} expected",
            )
            continue
        try:
            model = onnx.load(path, load_external_data=False)
        except Exception as error:
            yield RuleProblem((*base, "path"), f"{ref.path} is not an ONNX model: {error}")
            continue
        for field, message in _signature_problems(ref, model):
            yield RuleProblem((*base, field), message)
