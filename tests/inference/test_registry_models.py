"""Models from a real MLflow registry: resolved at load and at reload, served from the cache
while the registry is away, and promotion moving an alias (and a rollback moving it back).

One SQLite-backed ``mlflow server`` serves the module (``tests/mlflow_registry.py``); each
test registers models under its own name.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest

from service.assignment.state import load_state
from service.decisions.actions import act
from service.decisions.rules import Decision
from service.decisions.store import decision_log, record_decision
from service.experiments.model_registry import ModelRegistry
from service.experiments.schema import Experiment
from tests.conftest import Api, ServerFactory, free_port, wait_for
from tests.experiment_files import minimal_experiment, write_experiment
from tests.mlflow_registry import Forwarder, MlflowServer, mlflow_server
from tests.model_fixtures import MODELS, demo_models

__all__ = ["mlflow_server"]  # the module-scoped fixture, used by name below
ROW = [[0.5] * 20]


@pytest.fixture(scope="module")
def built() -> dict[str, str]:
    return demo_models()


def registry_experiment(key: str, name: str, **fields: Any) -> dict[str, Any]:
    """Control ``a`` serves ``name@champion``, treatment ``b`` ``name@challenger``."""
    return minimal_experiment(
        key,
        variants=[
            {"key": "a", "weight": 0.5, "model": {"registry": f"mlflow:models:/{name}@champion"}},
            {"key": "b", "weight": 0.5, "model": {"registry": f"mlflow:models:/{name}@challenger"}},
        ],
        forced={"unit-a": "a", "unit-b": "b"},
        **fields,
    )


def predict(api: Api, key: str, unit: str) -> dict[str, Any]:
    response = api.post(
        "/v1/predict", {"experiment": key, "unit": unit, "inputs": {"features": ROW}}
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_registry_models_serve_reload_promote_and_outlive_the_registry(
    mlflow_server: MlflowServer,
    server_factory: ServerFactory,
    db: str,
    tmp_path: Path,
    built: dict[str, str],
) -> None:
    """One abx server (they take seconds to start): ``reg`` serves and reloads registry models,
    ``promo`` moves its ``champion`` alias on promotion and back on rollback; then the
    registry goes away."""
    name, promoted_name = "churn_serving", "churn_promotion"
    logreg, mlp = built["churn_logreg.onnx"], built["churn_mlp.onnx"]
    files = [MODELS / "churn_logreg.onnx", MODELS / "churn_mlp.onnx"]
    v1, v2 = mlflow_server.register(name, files)
    p1, p2 = mlflow_server.register(promoted_name, files)
    client = mlflow_server.client()
    for model, (first, second) in ((name, (v1, v2)), (promoted_name, (p1, p2))):
        client.set_registered_model_alias(model, "champion", first)
        client.set_registered_model_alias(model, "challenger", second)
    forwarder = Forwarder(int(mlflow_server.url.rsplit(":", 1)[1]))
    experiments, models = tmp_path / "registry-experiments", tmp_path / "models"
    models.mkdir()
    yaml_file = write_experiment(experiments, registry_experiment("reg", name))
    policy = {"registry_alias": "champion"}
    write_experiment(experiments, registry_experiment("promo", promoted_name, policy=policy))
    server = server_factory(
        db,
        experiments,
        ABX_MODELS=str(models),
        ABX_MLFLOW_TRACKING_URI=f"http://127.0.0.1:{forwarder.port}",
        ABX_RELOAD_POLL_SECONDS="0.1",
        ABX_REGISTRY_POLL_SECONDS="0.2",
    )
    api = Api(server.base_url)
    try:
        control, treatment = predict(api, "reg", "unit-a"), predict(api, "reg", "unit-b")
        # Each variant serves the version its alias names, checked against the file registered.
        assert control["model"]["sha256"] == logreg
        assert control["model"]["registry"] == {
            "uri": f"mlflow:models:/{name}@champion", "name": name, "version": v1,
            "from_cache": False,
        }  # fmt: skip
        assert treatment["model"]["sha256"] == mlp
        assert treatment["model"]["registry"]["version"] == v2

        # Promotion moves promo's champion alias to the winner's version; rollback moves it back.
        promote = api.post(
            "/v1/experiments/promo/actions",
            {"action": "promote", "variant": "b", "reason": "b wins"},
        )
        assert promote.status_code == 201, promote.text
        assert mlflow_server.alias(promoted_name, "champion") == p2
        rollback = api.post(
            "/v1/experiments/promo/actions",
            {"action": "rollback", "variant": "b", "reason": "b breaks a guardrail after all"},
        )
        assert rollback.status_code == 201, rollback.text
        assert mlflow_server.alias(promoted_name, "champion") == p1
        log = api.get("/v1/experiments/promo/decisions").json()["decisions"]
        moves = {entry["kind"]: entry["numbers"]["registry"] for entry in log}
        assert moves["promote"] == {
            "model": promoted_name, "alias": "champion", "variant": "b",
            "source": f"mlflow:models:/{promoted_name}@challenger", "version": p2,
            "previous_version": p1, "sha256": mlp,
        }  # fmt: skip
        ids = {entry["kind"]: entry["decision_id"] for entry in log}
        assert moves["rollback"] == {
            "model": promoted_name, "alias": "champion", "version": p1,
            "previous_version": p2, "reverts": ids["promote"],
        }  # fmt: skip

        # The registry moves an alias: each worker's reloader notices, downloads, and serves it
        # (20 answers in a row from whichever workers take them, before the registry goes).
        client.set_registered_model_alias(name, "challenger", v1)
        assert wait_for(
            lambda: all(
                predict(api, "reg", "unit-b")["model"]["registry"]["version"] == v1
                for _ in range(20)
            ),
            30,
        ), server.log()
        assert predict(api, "reg", "unit-b")["model"]["sha256"] == logreg
        # The registry goes away: serving goes on with the versions resolved last.
        forwarder.close()
        answers = [predict(api, "reg", unit) for unit in ("unit-a", "unit-b") * 5]
        assert {a["model"]["sha256"] for a in answers} == {logreg}
        # A reload while it is away (a YAML edit) keeps them, flagged as from the cache.
        yaml_file.write_text(yaml_file.read_text().replace("A test experiment.", "Edited."))
        assert wait_for(
            lambda: predict(api, "reg", "unit-b")["model"]["registry"]["from_cache"], 30
        ), server.log()
        after = predict(api, "reg", "unit-b")["model"]
        assert (after["sha256"], after["registry"]["version"]) == (logreg, v1)
        lineage = api.get("/v1/experiments/reg/models").json()
        served = {m["model_sha256"]: m["registry_version"] for v in lineage["variants"]
                  for m in v["models"]}  # fmt: skip
        # b's first version (mlp, v2) keeps its version though no alias names it any more.
        assert served == {logreg: v1, mlp: v2}
    finally:
        forwarder.close()
    # A process started while the registry is away serves the last version resolved here.
    cold = ModelRegistry(f"http://127.0.0.1:{forwarder.port}", models)
    resolved = cold.resolve(f"mlflow:models:/{name}@challenger")
    assert (resolved.version, resolved.sha256, resolved.from_cache) == (v1, logreg, True)


def test_an_approved_promotion_moves_the_alias_as_the_worker_sees_it(
    mlflow_server: MlflowServer, db: str, tmp_path: Path
) -> None:
    """The decision workers load the YAML without resolving models: the version to promote is
    the one the variant's reference names in the registry when the promotion is applied."""
    name = "churn_approval"
    _, v2 = mlflow_server.register(name, [MODELS / "churn_logreg.onnx", MODELS / "churn_mlp.onnx"])
    client = mlflow_server.client()
    client.set_registered_model_alias(name, "challenger", v2)  # no champion yet
    experiment = Experiment.model_validate(
        registry_experiment("approval", name, policy={"registry_alias": "champion"})
    )
    registry = ModelRegistry(mlflow_server.url, tmp_path / "models")
    with psycopg.connect(db, autocommit=True) as conn:
        before, _ = load_state(conn, experiment)
        promoted = replace(before, state="promoted", winner="b")
        awaiting = Decision("promote", "policy", promoted, "b", awaiting_approval=True)
        with conn.transaction():
            record_decision(conn, experiment, awaiting, before, {}, "abx", [])
        assert mlflow_server.alias(name, "champion") is None  # awaiting: nothing moves
        act(conn, experiment, "approve", None, "cli:test", "go", registry)
        assert mlflow_server.alias(name, "champion") == v2
        # The whole experiment rolled back: the alias named nothing before, so it goes.
        act(conn, experiment, "rollback", None, "cli:test", "stop", registry)
        assert mlflow_server.alias(name, "champion") is None
        # A registry that does not answer never stops a promotion; the audit entry says so.
        away = ModelRegistry(f"http://127.0.0.1:{free_port()}", tmp_path / "models")
        act(conn, experiment, "promote", "b", "cli:test", "again", away)
        after, _ = load_state(conn, experiment)
        entries = decision_log(conn, "approval")
    assert (after.state, after.winner) == ("promoted", "b")
    moves = [(e.kind, e.numbers.get("registry")) for e in entries]
    assert moves[0] == ("promote", None)  # the decision that awaited approval
    assert moves[1][0] == "approve" and moves[1][1]["version"] == v2
    assert moves[1][1]["previous_version"] is None
    assert moves[2][0] == "rollback" and moves[2][1]["version"] is None
    assert moves[3][0] == "promote" and "error" in moves[3][1]
    assert mlflow_server.alias(name, "champion") is None


def test_lineage_keeps_every_served_version_after_the_alias_moves(
    mlflow_server: MlflowServer,
    server_factory: ServerFactory,
    db: str,
    tmp_path: Path,
    built: dict[str, str],
) -> None:
    """Serve version 1, move the alias to version 2 (hot reload), serve: the lineage names
    both versions, the first one too though no reference resolves to it any more."""
    name = "churn_lineage"
    logreg, mlp = built["churn_logreg.onnx"], built["churn_mlp.onnx"]
    v1, v2 = mlflow_server.register(name, [MODELS / "churn_logreg.onnx", MODELS / "churn_mlp.onnx"])
    client = mlflow_server.client()
    # a serves version 2 throughout: once b moves on, no reference resolves to version 1.
    client.set_registered_model_alias(name, "champion", v2)
    client.set_registered_model_alias(name, "challenger", v1)
    experiments, models = tmp_path / "lineage-experiments", tmp_path / "models"
    models.mkdir()
    write_experiment(experiments, registry_experiment("lin", name))
    server = server_factory(
        db,
        experiments,
        ABX_MODELS=str(models),
        ABX_MLFLOW_TRACKING_URI=mlflow_server.url,
        ABX_RELOAD_POLL_SECONDS="0.1",
        ABX_REGISTRY_POLL_SECONDS="0.2",
    )
    api = Api(server.base_url)
    first = [predict(api, "lin", "unit-b") for _ in range(3)]
    assert {(a["model"]["sha256"], a["model"]["registry"]["version"]) for a in first} == {
        (logreg, v1)
    }
    client.set_registered_model_alias(name, "challenger", v2)
    assert wait_for(
        lambda: all(
            predict(api, "lin", "unit-b")["model"]["registry"]["version"] == v2 for _ in range(20)
        ),
        30,
    ), server.log()
    later = [predict(api, "lin", "unit-b") for _ in range(3)]
    assert {a["model"]["sha256"] for a in later} == {mlp}
    found: dict[str, Any] = {}

    def logged() -> bool:
        found.update(api.get("/v1/experiments/lin/models").json())
        b = next(v for v in found["variants"] if v["variant"] == "b")
        return {m["model_sha256"] for m in b["models"]} == {logreg, mlp}

    assert wait_for(logged, 30), found
    b = next(v for v in found["variants"] if v["variant"] == "b")
    shown = [(m["model_sha256"], m["registry_name"], m["registry_version"]) for m in b["models"]]
    assert shown == [(logreg, name, v1), (mlp, name, v2)]  # oldest first
    assert b["models"][0]["model_path"] is None  # no longer configured: the version stays
    assert all(m["served_by"] == "b" and m["provider"] == "CPUExecutionProvider"
               for m in b["models"])  # fmt: skip
