"""Validate experiment files, alone and together, into ``file:line: field: message`` problems."""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from service.experiments.holdouts import Holdout, Scope, check_holdout
from service.experiments.model_refs import model_file_problems, model_rule_problems
from service.experiments.model_registry import ModelRegistry, RegistryError
from service.experiments.rules import RuleProblem, check_experiment
from service.experiments.schema import TARGETING_OPS, Experiment, RegistryVersion
from service.experiments.source import (
    DataPath,
    PathElement,
    SourceDocument,
    YamlSyntaxError,
    load_yaml,
)

EXPERIMENT_SUFFIXES = (".yaml", ".yml")
HOLDOUTS_FOLDER = "holdouts"


@dataclass(frozen=True)
class Problem:
    file: Path
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.field}: {self.message}"


@dataclass(frozen=True)
class LoadedExperiment:
    experiment: Experiment
    source: SourceDocument


@dataclass(frozen=True)
class LoadedHoldout:
    holdout: Holdout
    source: SourceDocument


@dataclass(frozen=True)
class LoadResult:
    experiments: tuple[LoadedExperiment, ...]
    problems: tuple[Problem, ...]
    holdouts: tuple[LoadedHoldout, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems


def field_name(path: Sequence[PathElement]) -> str:
    """Render a data path the way a reader of the YAML thinks of it: ``variants[1].weight``."""
    text = ""
    for element in path:
        text += f"[{element}]" if isinstance(element, int) else (f".{element}" if text else element)
    return text or "experiment"


def experiment_files(paths: Iterable[Path]) -> list[Path]:
    """Expand folders to their experiment files (not recursive), keep files as given.

    A folder's ``holdouts/`` subfolder is expanded too: its files are holdouts
    (``is_holdout_file``), and a file named inside such a folder is one as well.
    """
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.suffix in EXPERIMENT_SUFFIXES))
            holdouts = path / HOLDOUTS_FOLDER
            if holdouts.is_dir():
                files.extend(
                    sorted(p for p in holdouts.iterdir() if p.suffix in EXPERIMENT_SUFFIXES)
                )
        else:
            files.append(path)
    return files


def is_holdout_file(path: Path) -> bool:
    return path.parent.name == HOLDOUTS_FOLDER


def _pydantic_problems(source: SourceDocument, error: ValidationError) -> list[Problem]:
    problems = []
    for detail in error.errors():
        # Discriminated-union tags such as "<all>" are pydantic's, not the user's.
        path: DataPath = tuple(e for e in detail["loc"] if not str(e).startswith("<"))
        message = detail["msg"]
        if detail["type"] == "extra_forbidden":
            message = "unknown field"
        elif detail["type"] == "literal_error" and path[-1:] == ("op",):
            message = (
                f"unknown targeting operator {detail['input']!r}; "
                f"expected one of: {', '.join(TARGETING_OPS)}"
            )
        problems.append(Problem(source.path, source.line_of(path), field_name(path), message))
    return problems


def resolve_registry_models(
    experiment: Experiment, registry: ModelRegistry | None
) -> tuple[Experiment, list[RuleProblem]]:
    """The experiment with every ``registry`` model resolved to its downloaded, verified file."""
    variants = list(experiment.variants)
    problems: list[RuleProblem] = []
    for index, variant in enumerate(variants):
        ref = variant.model
        if ref is None or ref.registry is None:
            continue
        path = ("variants", index, "model", "registry")
        if registry is None:
            problems.append(
                RuleProblem(path, "a registry model needs ABX_MLFLOW_TRACKING_URI (the registry)")
            )
            continue
        try:
            found = registry.resolve(ref.registry)
        except RegistryError as error:
            problems.append(RuleProblem(path, str(error)))
            continue
        if ref.sha256 is not None and ref.sha256 != found.sha256:
            problems.append(RuleProblem(
                ("variants", index, "model", "sha256"),
                f"{ref.registry} (version {found.version}) has SHA-256 {found.sha256}, "
                f"not the {ref.sha256} expected",
            ))  # fmt: skip
            continue
        version = RegistryVersion(
            uri=ref.registry, name=found.name, version=found.version, from_cache=found.from_cache
        )
        resolved = ref.with_resolution(found.path, found.sha256, version)
        variants[index] = variant.model_copy(update={"model": resolved})
    return experiment.model_copy(update={"variants": variants}), problems


def validate_document(
    source: SourceDocument,
    models_root: Path | None = None,
    checked: dict[Path, str] | None = None,
    registry: ModelRegistry | None = None,
) -> tuple[Experiment | None, list[Problem]]:
    """Validate one parsed file on its own (and its model files, given the models root).

    With the models root, registry models are resolved first (``registry``): their files
    are then checked like any other."""
    if not isinstance(source.data, dict):
        return None, [Problem(source.path, 1, "experiment", "the file must hold one YAML mapping")]
    try:
        experiment = Experiment.model_validate(source.data)
    except ValidationError as error:
        return None, _pydantic_problems(source, error)
    problems = [
        Problem(source.path, source.line_of(p.path), field_name(p.path), p.message)
        for p in [*check_experiment(experiment), *model_rule_problems(experiment)]
    ]
    if not problems and models_root is not None:
        experiment, resolve_problems = resolve_registry_models(experiment, registry)
        problems = [
            Problem(source.path, source.line_of(p.path), field_name(p.path), p.message)
            for p in resolve_problems or model_file_problems(experiment, models_root, checked)
        ]
    return (None if problems else experiment), problems


def _cross_file_problems(loaded: Sequence[LoadedExperiment]) -> list[Problem]:
    problems: list[Problem] = []
    by_key: dict[str, LoadedExperiment] = {}
    for item in loaded:
        first = by_key.setdefault(item.experiment.key, item)
        if first is not item:
            problems.append(
                Problem(
                    item.source.path,
                    item.source.line_of(("key",)),
                    "key",
                    f"duplicate experiment key {item.experiment.key!r} "
                    f"(also in {first.source.path})",
                )
            )
    layers: dict[str, list[LoadedExperiment]] = defaultdict(list)
    for item in loaded:
        if item.experiment.layer is not None:
            layers[item.experiment.layer.name].append(item)
    for name, members in layers.items():
        ordered = sorted(members, key=lambda m: m.experiment.layer.range[0])  # type: ignore[union-attr]
        for before, after in itertools.pairwise(ordered):
            start_before, end_before = before.experiment.layer.range  # type: ignore[union-attr]
            start_after, end_after = after.experiment.layer.range  # type: ignore[union-attr]
            if start_after < end_before:
                problems.append(
                    Problem(
                        after.source.path,
                        after.source.line_of(("layer", "range")),
                        "layer.range",
                        f"range [{start_after}, {end_after}) of layer {name!r} overlaps "
                        f"[{start_before}, {end_before}) claimed by experiment "
                        f"{before.experiment.key!r} in {before.source.path}",
                    )
                )
    return problems


def load_experiments(
    paths: Iterable[Path], models_root: Path | None = None, registry: ModelRegistry | None = None
) -> LoadResult:
    """Load and validate every experiment and holdout file under ``paths``; any problem is reported.

    With ``models_root``, every model a variant names is checked too (path, SHA-256, signature),
    registry models resolved through ``registry`` first.
    """
    loaded: list[LoadedExperiment] = []
    holdouts: list[LoadedHoldout] = []
    checked: dict[Path, str] = {}
    problems: list[Problem] = []
    for path in experiment_files(paths):
        try:
            source = load_yaml(path)
        except YamlSyntaxError as error:
            problems.append(Problem(path, error.line, "experiment", error.message))
            continue
        except (OSError, UnicodeDecodeError) as error:
            problems.append(Problem(path, 1, "experiment", f"cannot read file: {error}"))
            continue
        if is_holdout_file(path):
            holdout, file_problems = validate_holdout_document(source)
            problems.extend(sorted(file_problems, key=lambda p: p.line))
            if holdout is not None:
                holdouts.append(LoadedHoldout(holdout, source))
            continue
        experiment, file_problems = validate_document(source, models_root, checked, registry)
        problems.extend(sorted(file_problems, key=lambda p: p.line))
        if experiment is not None:
            loaded.append(LoadedExperiment(experiment, source))
    problems.extend(_cross_file_problems(loaded))
    problems.extend(holdout_scope_problems(holdouts, loaded))
    return LoadResult(tuple(loaded), tuple(problems), tuple(holdouts))


def validate_holdout_document(source: SourceDocument) -> tuple[Holdout | None, list[Problem]]:
    """Validate one holdout file on its own: its shape, then ``holdouts.check_holdout``."""
    if not isinstance(source.data, dict):
        return None, [Problem(source.path, 1, "holdout", "the file must hold one YAML mapping")]
    try:
        holdout = Holdout.model_validate(source.data)
    except ValidationError as error:
        return None, _pydantic_problems(source, error)
    problems = [
        Problem(source.path, source.line_of(p.path), field_name(p.path), p.message)
        for p in check_holdout(holdout)
    ]
    return (None if problems else holdout), problems


def holdout_scope_problems(
    holdouts: Sequence[LoadedHoldout], experiments: Sequence[LoadedExperiment]
) -> list[Problem]:
    """Keys unique among experiments and holdouts, scopes naming what exists, and every
    experiment in at most one holdout's scope (two would both claim its units' control)."""
    problems: list[Problem] = []
    experiment_keys = {item.experiment.key: item for item in experiments}
    layers = {i.experiment.layer.name for i in experiments if i.experiment.layer is not None}
    seen: dict[str, LoadedHoldout] = {}
    for item in holdouts:
        holdout, source = item.holdout, item.source

        def problem(path: DataPath, message: str, source: SourceDocument = source) -> None:
            problems.append(Problem(source.path, source.line_of(path), field_name(path), message))

        clash = experiment_keys.get(holdout.key)
        first = seen.setdefault(holdout.key, item)
        if clash is not None:
            problem(("key",), f"key {holdout.key!r} is also an experiment's ({clash.source.path})")
        elif first is not item:
            problem(
                ("key",), f"duplicate holdout key {holdout.key!r} (also in {first.source.path})"
            )
        if isinstance(holdout.scope, Scope):
            for index, key in enumerate(holdout.scope.experiments):
                if key not in experiment_keys:
                    problem(("scope", "experiments", index), f"unknown experiment {key!r}")
            for index, name in enumerate(holdout.scope.layers):
                if name not in layers:
                    problem(("scope", "layers", index), f"no experiment is in layer {name!r}")
    for loaded in experiments:
        covering = [item for item in holdouts if item.holdout.covers(loaded.experiment)]
        for item in covering[1:]:
            problems.append(
                Problem(
                    item.source.path,
                    item.source.line_of(("scope",)),
                    "scope",
                    f"experiment {loaded.experiment.key!r} is already in the scope of holdout "
                    f"{covering[0].holdout.key!r} ({covering[0].source.path}); "
                    "an experiment may be in one holdout only",
                )
            )
    return problems
