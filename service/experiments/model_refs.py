"""Check the model references of an experiment: rules between fields, then the files.

A model path outside the models root, a missing file, a checksum mismatch, a
file that is not ONNX, or preprocessing or feature names that do not fit the
model's inputs is a validation problem: abx never loads such a model silently.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import onnx

from service.experiments.rules import RuleProblem
from service.experiments.schema import Experiment, InputSpec, ModelRef, ReferenceProfile
from service.experiments.source import DataPath


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
    for index, variant in enumerate(experiment.variants):
        if variant.model is not None:
            yield from _reference_problems(("variants", index, "model"), variant.model)
    yield from _feature_rule_problems(experiment)
    if experiment.policy.registry_alias is not None and not any(
        v.model is not None and v.model.registry is not None for v in experiment.variants
    ):
        yield RuleProblem(
            ("policy", "registry_alias"),
            "no variant's model comes from a registry ('registry: mlflow:models:/...')",
        )
    fallback = experiment.serving.fallback
    if fallback is not None and fallback not in served:
        yield RuleProblem(
            ("serving", "fallback"),
            f"fallback {fallback!r} must be a served variant with a model; those: {sorted(served)}",
        )


def _reference_problems(path: DataPath, ref: ModelRef) -> Iterator[RuleProblem]:
    """A file with its checksum, a registry model, or an endpoint; and what goes with it."""
    if ref.registry is not None:
        yield from _registry_problems(path, ref)
        return
    if ref.endpoint is None:
        if ref.path is None:
            yield RuleProblem(
                path, "a model needs 'path' and 'sha256', a 'registry' model, or an 'endpoint'"
            )
        elif ref.sha256 is None:
            yield RuleProblem((*path, "sha256"), "a model file needs its 'sha256'")
        if ref.token_env is not None:
            yield RuleProblem((*path, "token_env"), "'token_env' goes with an 'endpoint'")
        return
    for field in ("path", "sha256", "providers", "reference"):
        if getattr(ref, field) is not None:
            yield RuleProblem(
                (*path, field), f"'{field}' does not go with an 'endpoint': the server there "
                "owns the model file and its execution provider (and a profile pins a file's checksum)",
            )  # fmt: skip
    if ref.batching:
        yield RuleProblem((*path, "batching"), "an endpoint's server batches: leave batching off")


def _registry_problems(path: DataPath, ref: ModelRef) -> Iterator[RuleProblem]:
    """A registry model names no file or endpoint; a checksum pins a version, not an alias."""
    assert ref.registry is not None
    for field in ("path", "endpoint", "token_env"):
        if getattr(ref, field) is not None:
            yield RuleProblem(
                (*path, field),
                f"'{field}' does not go with 'registry': the registry names the file",
            )
    alias = "@" in ref.registry
    if alias and ref.sha256 is not None:
        yield RuleProblem((*path, "sha256"), "a checksum pins one file: it goes with a registry "
                          "version (mlflow:models:/<name>/<version>), not an alias that moves")  # fmt: skip
    if alias and ref.reference is not None:
        yield RuleProblem((*path, "reference"), "a reference profile is of one file: it goes "
                          "with a registry version, not an alias that moves")  # fmt: skip
    elif ref.reference is not None and ref.sha256 is None:
        yield RuleProblem((*path, "sha256"), "a reference profile needs the version's 'sha256'")


def _feature_rule_problems(experiment: Experiment) -> Iterator[RuleProblem]:
    """Every model takes by name an input that one variant's model takes by name.

    A request that sends named values must fit whichever variant the unit is
    assigned to, the fallback and the shadows: a model without the names would
    answer it with a 422, or fail as the fallback.
    """
    models = [(i, v.key, v.model) for i, v in enumerate(experiment.variants) if v.model]
    named = {name for _, _, ref in models for name, spec in ref.inputs.items() if spec.features}
    for index, key, ref in models:
        base = ("variants", index, "model", "inputs")
        for name, spec in ref.inputs.items():
            yield from _input_spec_problems((*base, name), spec)
        for name in sorted(named - {n for n, spec in ref.inputs.items() if spec.features}):
            yield RuleProblem(
                (*base, name) if name in ref.inputs else base,
                f"another variant names the features of input {name!r}; variant {key!r} "
                "must name them too, or requests that send them by name fail on its model",
            )


def _input_spec_problems(path: DataPath, spec: InputSpec) -> Iterator[RuleProblem]:
    """Feature names are unique; scaling per name needs them and names only them."""
    features = spec.features or []
    first: dict[str, int] = {}
    for position, feature in enumerate(features):
        if (seen := first.setdefault(feature, position)) != position:
            yield RuleProblem(
                (*path, "features", position),
                f"duplicate feature name {feature!r} (also features[{seen}])",
            )
    for field, value in (("offset", spec.offset), ("factor", spec.factor)):
        if isinstance(value, dict) and not features:
            yield RuleProblem((*path, field), f"{field} per feature name needs 'features'")
        elif isinstance(value, dict):
            for feature in sorted(set(value) - set(features)):
                yield RuleProblem((*path, field, feature), f"{feature!r} is not in 'features'")
        elif isinstance(value, list) and features and len(value) != len(features):
            yield RuleProblem((*path, field), f"{len(value)} values for {len(features)} features")


DYNAMIC_QUANTIZATION_OPS = frozenset({"DynamicQuantizeLinear", "DynamicQuantizeMatMul"})


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


def _signature_problems(ref: ModelRef, model: onnx.ModelProto) -> Iterator[tuple[DataPath, str]]:
    constants = {init.name for init in model.graph.initializer}
    inputs = {i.name: i for i in model.graph.input if i.name not in constants}
    outputs = {o.name for o in model.graph.output}
    for request_name, spec in ref.inputs.items():
        model_input = inputs.get(spec.model_input or request_name)
        if model_input is None:
            yield (
                ("inputs", request_name),
                f"{request_name!r} names no model input; the model takes {sorted(inputs)}",
            )
            continue
        tensor = model_input.type.tensor_type
        dims = tensor.shape.dim
        features = dims[-1].dim_value if dims and dims[-1].HasField("dim_value") else None
        if spec.features is not None and tensor.HasField("shape") and len(dims) != 2:
            yield (
                ("inputs", request_name, "features"),
                f"names the columns of a [batch, features] input; the model's input "
                f"{model_input.name!r} has {len(dims)} dimensions",
            )
        elif spec.features is not None and features and len(spec.features) != features:
            yield (
                ("inputs", request_name, "features"),
                f"{len(spec.features)} names; the model's input {model_input.name!r} has "
                f"{features} features, one name each in the model's order",
            )
        for name, value in (("offset", spec.offset), ("factor", spec.factor)):
            if isinstance(value, list) and len(value) != features:
                yield (
                    ("inputs", request_name, name),
                    (
                        f"{request_name}.{name} has {len(value)} values; the model's input "
                        f"{model_input.name!r} has {features} features"
                    ),
                )
    dynamic = {n.op_type for n in model.graph.node} & DYNAMIC_QUANTIZATION_OPS
    if ref.batching and dynamic:
        yield (
            ("batching",),
            (
                f"the model quantizes activations per run ({', '.join(sorted(dynamic))}): in a "
                "shared batch one request's answer would depend on the others'; turn batching off"
            ),
        )
    for name in ref.outputs:
        if name not in outputs:
            yield (
                ("outputs", name),
                f"{name!r} is not an output of the model; it has {sorted(outputs)}",
            )


def model_file_problems(
    experiment: Experiment, root: Path, checked: dict[Path, str] | None = None
) -> Iterator[RuleProblem]:
    """Problems of every variant's model file; ``checked`` caches digests across experiments."""
    checked = {} if checked is None else checked
    for index, variant in enumerate(experiment.variants):
        ref = variant.model
        if ref is None or ref.path is None or ref.sha256 is None:
            continue  # an endpoint, or a reference the rules already refused
        base = ("variants", index, "model")
        path = resolve_model_path(root, ref.path)
        if path is None:
            yield RuleProblem((*base, "path"), f"{ref.path!r} is outside the models root {root}")
            continue
        if not path.is_file():
            yield RuleProblem(
                (*base, "path"),
                f"no model file {ref.path!r} under {root} (the example experiments' models"
                " are built by 'abx models demo')",
            )
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
            yield RuleProblem((*base, *field), message)
        if ref.reference is not None:
            yield from _profile_problems(ref.reference, ref.sha256, root, (*base, "reference"))


def _profile_problems(
    reference: ReferenceProfile, model_sha256: str, root: Path, base: DataPath
) -> Iterator[RuleProblem]:
    """The profile exists under the models root, has its pinned checksum, and is this model's."""
    path = resolve_model_path(root, reference.path)
    if path is None or not path.is_file():
        yield RuleProblem((*base, "path"), f"no reference profile {reference.path!r} under {root}"
                          " (build one with 'abx models profile')")  # fmt: skip
        return
    digest = file_sha256(path)
    if digest != reference.sha256:
        yield RuleProblem((*base, "sha256"), f"{reference.path} has SHA-256 {digest}, not the "
                          f"{reference.sha256} expected")  # fmt: skip
        return
    try:
        profile = json.loads(path.read_text("utf-8"))
        profiled = profile["model_sha256"]
        profile["features"].items()
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        yield RuleProblem((*base, "path"), f"{reference.path} is not a reference profile: {error}")
        return
    if profiled != model_sha256:
        yield RuleProblem((*base, "path"), f"{reference.path} profiles the model {profiled}, "
                          f"not this one ({model_sha256})")  # fmt: skip
