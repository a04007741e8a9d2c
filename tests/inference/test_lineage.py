"""GET /v1/experiments/<key>/models: the models that served each variant, from the log."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from service.experiments.schema import Experiment, RegistryVersion
from service.inference.records import (
    PREDICTIONS,
    REGISTRY_VERSIONS,
    JobModel,
    PredictionRecord,
    experiment_lineage,
    record_job_models,
    registry_version_rows,
)
from service.jobs import store
from service.storage.database import Database
from service.storage.writer import BatchWriter
from tests.conftest import Api, wait_for
from tests.experiment_files import minimal_experiment
from tests.inference.test_api import RAW, US_APP, built, predict

__all__ = ["built"]


def test_lineage_lists_each_variants_models_with_times_and_checksums(
    api: Api, built: dict[str, str]
) -> None:
    files = {"production": "churn_logreg.onnx", "ranker_v2": "churn_mlp.onnx",
             "ranker_v3": "mlp_heavy.onnx"}  # fmt: skip
    answered: dict[str, int] = {}
    for i in range(30):
        body = predict(api, "checkout_ranker", f"user-{i}", RAW, **US_APP).json()
        answered[body["variant"]] = answered.get(body["variant"], 0) + 1
    found: dict[str, Any] = {}

    def logged() -> bool:
        found.update(api.get("/v1/experiments/checkout_ranker/models").json())
        counts = {
            v["variant"]: sum(m["predictions"] for m in v["models"]) for v in found["variants"]
        }
        return all(counts.get(variant) == n for variant, n in answered.items())

    assert wait_for(logged, timeout=30)
    for entry in found["variants"]:
        if entry["variant"] not in answered:
            assert entry["models"] == []
            continue
        (model,) = entry["models"]
        assert model["served_by"] == entry["variant"]
        assert model["model_sha256"] == built[files[entry["variant"]]]
        assert model["model_path"] == files[entry["variant"]]
        assert model["provider"] == "CPUExecutionProvider" and model["shadow"] is False
        assert model["first_served_at"] <= model["last_served_at"]
    missing = api.get("/v1/experiments/nope/models")
    assert missing.status_code == 404
    assert missing.headers["Content-Type"] == "application/problem+json"


def _resolved(experiment: Experiment, versions: dict[str, tuple[str, str]]) -> Experiment:
    """The experiment as a serving process loads it: each variant's registry reference
    resolved to (checksum, version), as ``validation.resolve_registry_models`` does."""
    variants = []
    for variant in experiment.variants:
        ref = variant.model
        assert ref is not None and ref.registry is not None
        sha, version = versions[variant.key]
        found = RegistryVersion(uri=ref.registry, name="churn", version=version)
        resolved = ref.with_resolution(f".mlflow/churn/{version}/model.onnx", sha, found)
        variants.append(variant.model_copy(update={"model": resolved}))
    return experiment.model_copy(update={"variants": variants})


def _answer(variant: str, served_by: str, sha: str, at: datetime) -> PredictionRecord:
    return PredictionRecord(
        "lin", "u1", variant, "hash", True, served_by, sha, "CPUExecutionProvider", 1, 1.0,
        served_by != variant, None, False, False, None, None, at,
    )  # fmt: skip


def test_lineage_joins_the_versions_each_load_recorded(db: str) -> None:
    """Rows written through the batch writer as serving processes write them: several
    workers and a late spool replay keep the earliest load; every answer gets the version of
    the variant that answered, however the aliases moved since."""
    name = "churn"
    experiment = Experiment.model_validate(
        minimal_experiment(
            "lin",
            variants=[
                {"key": "a", "weight": 0.5, "model": {"registry": f"mlflow:models:/{name}@champion"}},
                {"key": "b", "weight": 0.5, "model": {"registry": f"mlflow:models:/{name}@challenger"}},
            ],
        )
    )  # fmt: skip
    sha1, sha2, sha3 = "1" * 64, "2" * 64, "3" * 64
    t0 = datetime(2026, 12, 1, tzinfo=UTC)
    first = _resolved(experiment, {"a": (sha1, "1"), "b": (sha2, "2")})
    moved = _resolved(experiment, {"a": (sha1, "1"), "b": (sha3, "3")})  # b's alias moved
    database = Database(db)
    database.open()
    writer = BatchWriter(
        database, {PREDICTIONS.table: PREDICTIONS, REGISTRY_VERSIONS.table: REGISTRY_VERSIONS}
    )
    try:
        # Two workers load in one batch; a third row of the first load, replayed late, in the
        # next batch, and a later load of the same versions after it.
        for at in (t0 + timedelta(seconds=2), t0 + timedelta(seconds=1)):
            for row in registry_version_rows([first], at):
                writer.put(REGISTRY_VERSIONS.table, row)
        assert writer.flush()
        for at in (t0, t0 + timedelta(minutes=5)):
            for row in registry_version_rows([first], at):
                writer.put(REGISTRY_VERSIONS.table, row)
        for row in registry_version_rows([moved], t0 + timedelta(hours=1)):
            writer.put(REGISTRY_VERSIONS.table, row)
        answers = [
            _answer("a", "a", sha1, t0 + timedelta(minutes=1)),
            _answer("b", "b", sha2, t0 + timedelta(minutes=2)),
            _answer("b", "a", sha1, t0 + timedelta(minutes=3)),  # b failed: a's model answered
            _answer("b", "b", sha3, t0 + timedelta(hours=2)),
        ]
        for answer in answers:
            writer.put(PREDICTIONS.table, answer)
        assert writer.flush()
        with psycopg.connect(db) as conn:
            loads = conn.execute(
                "SELECT variant_key, model_sha256, registry_uri, registry_name, registry_version,"
                " first_loaded_at FROM registry_versions ORDER BY variant_key, registry_version"
            ).fetchall()
            lineage = {v.variant: v.models for v in experiment_lineage(conn, experiment)}
    finally:
        writer.close(timeout=5)
        database.close()
    champion, challenger = (
        f"mlflow:models:/{name}@{alias}" for alias in ("champion", "challenger")
    )
    assert loads == [
        ("a", sha1, champion, name, "1", t0),
        ("b", sha2, challenger, name, "2", t0),
        ("b", sha3, challenger, name, "3", t0 + timedelta(hours=1)),
    ]
    shown = {
        variant: [(m.served_by, m.model_sha256, m.registry_name, m.registry_version,
                   m.predictions) for m in models]
        for variant, models in lineage.items()
    }  # fmt: skip
    # The experiment as loaded by the API (from the YAML, unresolved) names no checksum: every
    # version comes from the table, version 2 of b included, which no alias names now.
    assert shown == {
        "a": [("a", sha1, name, "1", 1)],
        "b": [("b", sha2, name, "2", 1), ("a", sha1, name, "1", 1), ("b", sha3, name, "3", 1)],
    }


def test_a_file_model_has_no_registry_version(db: str) -> None:
    """Answers of a model file (no load row) show no registry name or version."""
    experiment = Experiment.model_validate(minimal_experiment("lin"))
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO predictions (experiment_key, unit_id, variant_key, reason,"
            " in_experiment, served_by, model_sha256, provider, batch_rows, latency_ms,"
            " fallback, failure, cached, shadow, predicted_at)"
            " VALUES ('lin', 'u1', 'a', 'hash', true, 'a', %s, 'CPUExecutionProvider', 1, 1.0,"
            " false, NULL, false, false, now())",
            ("4" * 64,),
        )
        (a, b) = experiment_lineage(conn, experiment)
    (entry,) = a.models
    assert (entry.model_sha256, entry.registry_name, entry.registry_version) == (
        "4" * 64,
        None,
        None,
    )
    assert b.models == []


def test_batch_jobs_add_their_rows_to_the_lineage(db: str) -> None:
    """A scoring job's committed chunks count once per model in the lineage: merged into the
    entry of a model that also answered requests, or an entry of their own with the registry
    version the job ran (the experiment's file names no checksum for it)."""
    experiment = Experiment.model_validate(minimal_experiment("lin"))
    sha_a, sha_b = "5" * 64, "6" * 64
    with psycopg.connect(db, autocommit=True) as conn:
        jobs = [
            store.create_job(
                conn, experiment_key="lin", variant_key=None, input_path="in.csv",
                input_format="csv", output_path=f"out{i}.csv", output_format="csv",
                rejects_path=f"out{i}.rejects.ndjson", log_exposures=False, chunk_rows=10,
                created_by="test", request_id=None,
            ).job_id
            for i in range(2)
        ]  # fmt: skip
        conn.execute(
            "INSERT INTO predictions (experiment_key, unit_id, variant_key, reason,"
            " in_experiment, served_by, model_sha256, provider, batch_rows, latency_ms,"
            " fallback, failure, cached, shadow, predicted_at)"
            " VALUES ('lin', 'u1', 'a', 'hash', true, 'a', %s, 'CPUExecutionProvider', 1, 1.0,"
            " false, NULL, false, false, now() - interval '1 day')",
            (sha_a,),
        )
        own = JobModel("a", "a", sha_a, "CPUExecutionProvider", None, None)
        registry = JobModel("b", "b", sha_b, "CPUExecutionProvider", "churn", "7")
        fallback = JobModel("b", "a", sha_a, "CPUExecutionProvider", None, None)
        chunks = [(jobs[0], {own: 6, registry: 4}), (jobs[0], {own: 5, registry: 3, fallback: 2}),
                  (jobs[1], {own: 1})]  # fmt: skip
        for job_id, rows in chunks:
            with conn.transaction():
                record_job_models(conn, job_id, "lin", rows)
        a, b = experiment_lineage(conn, experiment)
    shown = {
        lineage.variant: [(m.served_by, m.model_sha256, m.registry_name, m.registry_version,
                           m.predictions, m.scored_rows, m.score_jobs) for m in lineage.models]
        for lineage in (a, b)
    }  # fmt: skip
    assert shown == {
        "a": [("a", sha_a, None, None, 1, 12, 2)],
        "b": [("b", sha_b, "churn", "7", 0, 7, 1), ("a", sha_a, None, None, 0, 2, 1)],
    }
    (merged,) = a.models
    assert merged.first_served_at < merged.last_served_at  # the answer a day before the jobs
