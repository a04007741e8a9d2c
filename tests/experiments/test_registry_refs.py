"""Registry model references in the YAML: each mistake is a ``file:line: field: message``.

These need no registry: the rules between fields, a missing tracking URI and a registry
that does not answer are all found before (or instead of) a download. The tests against a
real MLflow server are in ``tests/inference/test_registry_models.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from service.experiments.model_registry import ModelRegistry, parse_reference
from service.experiments.validation import load_experiments
from tests.conftest import free_port
from tests.experiment_files import minimal_experiment, write_experiment

SHA = "0" * 64


def problems(
    tmp_path: Path, model_a: dict[str, Any], registry: ModelRegistry | None = None,
    **fields: Any,
) -> list[str]:  # fmt: skip
    b = {"registry": "mlflow:models:/churn/2"}
    variants = [{"key": "a", "weight": 0.5, "model": model_a},
                {"key": "b", "weight": 0.5, "model": b}]  # fmt: skip
    file = write_experiment(tmp_path / "exps", minimal_experiment("m", variants=variants, **fields))
    models = tmp_path / "models"
    models.mkdir(exist_ok=True)
    return [str(p) for p in load_experiments([file], models, registry).problems]


def line_of(text: str, tmp_path: Path) -> int:
    """The line of the experiment file that holds ``text``."""
    lines = (tmp_path / "exps" / "m.yaml").read_text().splitlines()
    return next(number for number, line in enumerate(lines, 1) if text in line)


def test_registry_references_are_parsed() -> None:
    alias = parse_reference("mlflow:models:/churn@champion")
    assert (alias.name, alias.alias, alias.version) == ("churn", "champion", None)
    version = parse_reference("mlflow:models:/churn.v2/12")
    assert (version.name, version.alias, version.version) == ("churn.v2", None, "12")


def test_rules_between_registry_fields_point_at_their_line(tmp_path: Path) -> None:
    both = problems(tmp_path, {"registry": "mlflow:models:/churn@champion", "path": "x.onnx"})
    assert both == [
        f"{tmp_path / 'exps' / 'm.yaml'}:{line_of('x.onnx', tmp_path)}: variants[0].model.path: "
        "'path' does not go with 'registry': the registry names the file"
    ]
    pinned_alias = problems(tmp_path, {"registry": "mlflow:models:/churn@champion", "sha256": SHA})
    assert len(pinned_alias) == 1
    assert (
        f":{line_of(SHA, tmp_path)}: variants[0].model.sha256: a checksum pins" in pinned_alias[0]
    )
    bad_uri = problems(tmp_path, {"registry": "mlflow:models:/churn@"})
    assert len(bad_uri) == 1 and "variants[0].model.registry: String should match" in bad_uri[0]
    assert f":{line_of('churn@', tmp_path)}:" in bad_uri[0]
    file_models = [{"key": "a", "weight": 0.5}, {"key": "b", "weight": 0.5}]
    file = write_experiment(
        tmp_path / "plain",
        minimal_experiment("p", variants=file_models, policy={"registry_alias": "champion"}),
    )
    found = [str(p) for p in load_experiments([file]).problems]
    assert len(found) == 1 and "policy.registry_alias: no variant's model comes from" in found[0]


def test_a_registry_model_needs_a_tracking_uri_and_a_registry_that_answers(
    tmp_path: Path,
) -> None:
    model = {"registry": "mlflow:models:/churn@champion"}
    unset = problems(tmp_path, model, ModelRegistry(None, tmp_path / "models"))
    line = line_of("churn@champion", tmp_path)
    assert unset[0] == (
        f"{tmp_path / 'exps' / 'm.yaml'}:{line}: variants[0].model.registry: "
        "a registry model needs ABX_MLFLOW_TRACKING_URI (the registry)"
    )
    nobody = ModelRegistry(f"http://127.0.0.1:{free_port()}", tmp_path / "models")
    away = problems(tmp_path, model, nobody)
    assert len(away) == 2  # each variant's reference, at its own line
    assert f":{line}: variants[0].model.registry: mlflow:models:/churn@champion: " in away[0]
    assert "variants[1].model.registry: mlflow:models:/churn/2 version 2: " in away[1]
