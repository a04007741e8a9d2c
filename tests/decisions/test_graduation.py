"""A shadow graduates to a treatment: its YAML rule, the interval-bound rule, and end to end on
real onnxruntime sessions, PostgreSQL, the decision workers' code and a real server.

Hours are simulated as in ``test_drift``: each past hour's requests run the control's and the
shadows' onnxruntime sessions, the shadow runs are compared by the serving code's own
``agreement`` and written through the batch writer with that hour's time; the analysis reads
the last complete hours before now, as in production.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import psycopg
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper
from prometheus_client import REGISTRY
from scipy import stats

from service.assignment.state import ExperimentState
from service.assignment.sync import allocated_weights, sync_experiments
from service.decisions.cycle import AnalysisOutcome
from service.decisions.graduation import check_graduation, graduated_weights
from service.decisions.rules import Decision
from service.decisions.tasks import publish_analysis
from service.experiments.schema import ShadowGraduation
from service.experiments.validation import load_experiments
from service.inference.records import PREDICTIONS, PredictionRecord
from service.inference.shadow import agreement, mean_abs_difference
from service.inference.shadow_report import ShadowHour
from service.storage.database import Database
from service.storage.writer import BatchWriter
from tests.conftest import Api, ServerFactory, wait_for
from tests.decisions.test_cli import FlakyReceiver, fresh_cli, reset_worker_context
from tests.decisions.test_drift import FEATURES, WEIGHTS, save_model
from tests.decisions.test_e2e import SECRET
from tests.experiment_files import minimal_experiment, write_experiment

NOW = datetime(2026, 12, 1, 10, 20, tzinfo=UTC)
RULE = ShadowGraduation(min_agreement=0.9, hours=3, min_rows=50)


def hour(back: int, rows: int, agreeing: int) -> ShadowHour:
    start = NOW.replace(minute=0) - timedelta(hours=back)
    return ShadowHour(start, rows, rows, float(agreeing), 0, 0.0, 0.0, None, rows, rows, 1.0, 1.0)


def test_an_hour_counts_by_its_interval_bound_not_its_point_estimate() -> None:
    steady = [hour(3, 2000, 1960), hour(2, 2000, 1960), hour(1, 2000, 1960)]
    assert check_graduation(RULE, "s", 0.1, steady, NOW).ready
    # 58/60 agree: 0.967 as a point, but its Wilson lower bound is under 0.9 (0.8864 by
    # Wilson (1927) eq. with z = 1.96, worked by hand: centre 0.9386, half-width 0.0522).
    noisy = [*steady[:2], hour(1, 60, 58)]
    check = check_graduation(RULE, "s", 0.1, noisy, NOW)
    assert not check.ready and check.hours_held == 0
    assert check.missed is not None and check.missed.startswith("agreement lower bound 0.88")
    # A missing hour breaks the run; too few rows too; the current, partial hour never counts.
    gap = check_graduation(RULE, "s", 0.1, [steady[0], steady[2]], NOW)
    assert (gap.hours_held, gap.ready) == (1, False)
    assert gap.history[1].missed == "no shadow runs"
    thin = check_graduation(RULE, "s", 0.1, [*steady[:2], hour(1, 40, 40)], NOW)
    assert thin.missed == "40 rated rows, fewer than 50"
    partial = check_graduation(RULE, "s", 0.1, [*steady[1:], hour(0, 2000, 2000)], NOW)
    assert partial.hours_held == 2 and not partial.ready


def wilson_low(k: int, n: int, z: float = 1.959963984540054) -> float:
    """Wilson (1927) lower bound, written out here, independent of statsmodels."""
    p = k / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - spread) / (1 + z * z / n)


def test_a_shadow_below_the_bound_rarely_graduates_and_the_rate_is_the_binomials() -> None:
    rows, hours, sims = 200, 3, 400
    rule = ShadowGraduation(min_agreement=0.9, hours=hours, min_rows=1)
    k_star = next(k for k in range(rows + 1) if wilson_low(k, rows) >= 0.9)

    def simulated(true: float, seed: int) -> float:
        draws = np.random.default_rng(seed).binomial(rows, true, size=(sims, hours))
        ready = 0
        for shadow in draws:
            hourly = [hour(hours - h, rows, int(k)) for h, k in enumerate(shadow)]
            ready += check_graduation(rule, "s", 0.1, hourly, NOW).ready
        return ready / sims

    # Independent hours: P(graduate) = P(k >= k*) ** hours, k* from the Wilson bound.
    exact = stats.binom.sf(k_star - 1, rows, 0.95) ** hours
    assert abs(simulated(0.95, 1) - exact) < 4 * math.sqrt(exact * (1 - exact) / sims)
    # A shadow that truly agrees 88% of the time: never here, about 4e-9 exactly, while
    # judging each hour's point estimate would graduate it about once in 90 tries.
    assert simulated(0.88, 2) == 0.0
    below = stats.binom.sf(k_star - 1, rows, 0.88) ** hours
    by_point = stats.binom.sf(math.ceil(0.9 * rows) - 1, rows, 0.88) ** hours
    assert below < 1e-8 and by_point > 0.01


def test_graduated_weights_come_from_the_control_only() -> None:
    weights = {"a": 0.5, "b": 0.5, "s": 0.0}
    assert graduated_weights(weights, "a", "s", 0.1) == pytest.approx(
        {"a": 0.4, "b": 0.5, "s": 0.1}
    )
    assert graduated_weights(weights, "a", "b", 0.1) is None  # already served
    assert graduated_weights({"a": 0.05, "b": 0.95, "s": 0.0}, "a", "s", 0.1) is None


def save_logistic(path: Path, weights: np.ndarray) -> str:
    """probability = sigmoid(x · weights), like ``test_drift.save_model`` with other weights."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "w"], ["z"]),
         helper.make_node("Sigmoid", ["z"], ["probability"])],
        "logistic",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", FEATURES])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["batch", 1])],
        [numpy_helper.from_array(weights.astype(np.float32), "w")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_mean_absolute_difference_is_over_every_value_of_the_run() -> None:
    served = {"p": np.array([[0.1], [0.5], [0.9]]), "other": np.array([1.0, 2.0])}
    shadow = {"p": np.array([[0.2], [0.5], [0.6]]), "other": np.array([1.0, 2.0, 3.0])}
    # Only outputs of the same shape count: |0.1 - 0.2| + 0 + |0.9 - 0.6| over 3 values.
    assert mean_abs_difference(served, shadow) == pytest.approx(0.4 / 3)
    assert mean_abs_difference(served, {}) is None


def shadow_variant(key: str, path: str, sha: str) -> dict[str, Any]:
    return {"key": key, "weight": 0.0, "model": {"path": path, "sha256": sha},
            "shadow": {"sample_rate": 1.0}}  # fmt: skip


def test_the_rule_is_validated_with_file_and_line(tmp_path: Path) -> None:
    models = tmp_path / "models"
    sha = save_model(models / "m.onnx")
    variants = [
        {"key": "a", "weight": 1.0, "model": {"path": "m.onnx", "sha256": sha}},
        shadow_variant("s", "m.onnx", sha),
    ]
    cases = [  # the rule, what the problem says, the word on the line it names
        ({"min_agreement": 1.5, "weight": 0.1}, "shadow_graduation.min_agreement", "min_agreement"),
        ({"min_agreement": 0.9, "weight": 0.1, "hours": "3"}, "shadow_graduation.hours", "hours"),
        ({"min_agreement": 0.9, "weight": 0.1, "action": "go"}, "shadow_graduation.action", "go"),
        ({"min_agreement": 0.9, "weight": 0.1, "typo": 1}, "shadow_graduation.typo", "typo"),
        ({"weight": 0.1}, "needs min_agreement or max_mean_abs_difference", "shadow_graduation"),
        ({"min_agreement": 0.9}, "needs a weight when the policy has no ramp", "shadow_graduation"),
        ({"min_agreement": 0.9, "weight": 0.6}, "taken from the control", "weight"),
        (
            {"min_agreement": 0.9, "weight": 0.1},
            "a bandit sets its own weights",
            "shadow_graduation",
        ),
    ]
    for index, (rule, expected, word) in enumerate(cases):
        folder = tmp_path / f"case{index}"
        document = minimal_experiment("g", variants=variants, policy={"shadow_graduation": rule})
        if "bandit" in expected:
            document["policy"]["method"] = "bandit"
        if "taken from the control" in expected:  # a control of 0.5 cannot give 0.6
            document["variants"] = [{**variants[0], "weight": 0.5}, {"key": "b", "weight": 0.5},
                                    variants[1]]  # fmt: skip
        path = write_experiment(folder, document)
        problems = load_experiments([folder]).problems
        [problem] = [p for p in problems if expected in str(p)] or [None]
        assert problem is not None and problem.file == path, (rule, [str(p) for p in problems])
        assert word in path.read_text().splitlines()[problem.line - 1], (rule, str(problem))
    no_shadow = minimal_experiment("g", policy={"shadow_graduation": {"min_agreement": 0.9,
                                                                      "weight": 0.1}})  # fmt: skip
    path = write_experiment(tmp_path / "plain", no_shadow)
    [problem] = load_experiments([tmp_path / "plain"]).problems
    assert "needs a shadow variant" in str(problem)
    assert "shadow_graduation" in path.read_text().splitlines()[problem.line - 1]
    ramped = minimal_experiment("g", variants=variants,
                                policy={"ramp": {"steps": [0.2, 1.0]},
                                        "shadow_graduation": {"min_agreement": 0.9}})  # fmt: skip
    write_experiment(tmp_path / "ramped", ramped)
    assert load_experiments([tmp_path / "ramped"]).ok  # the first ramp step is the weight


def graduation_folder(tmp_path: Path, key: str, action: str, webhook: str) -> Path:
    """Control ``a`` and treatment ``b`` share a model; shadow ``good`` nearly agrees with it,
    shadow ``bad`` answers the opposite (its weights negated)."""
    models = tmp_path / "models"
    sha = save_model(models / "control.onnx")
    good = save_logistic(
        models / "good.onnx", WEIGHTS + np.array([[0.06], [0.04], [-0.05], [0.03]])
    )
    bad = save_logistic(models / "bad.onnx", -WEIGHTS)
    variants = [
        {"key": "a", "weight": 0.5, "model": {"path": "control.onnx", "sha256": sha}},
        {"key": "b", "weight": 0.5, "model": {"path": "control.onnx", "sha256": sha}},
        shadow_variant("good", "good.onnx", good),
        shadow_variant("bad", "bad.onnx", bad),
    ]
    rule = {"min_agreement": 0.9, "max_mean_abs_difference": 0.05, "max_latency_p99_ms": 1000.0,
            "hours": 3, "min_rows": 200, "weight": 0.1, "action": action}  # fmt: skip
    folder = tmp_path / "experiments"
    policy = {"shadow_graduation": rule, "webhooks": [webhook], "min_units": 10_000}
    write_experiment(folder, minimal_experiment(key, variants=variants, policy=policy))
    return folder


def serve_shadow_hours(db: str, folder: Path, key: str, backs: list[int], rows: int) -> None:
    """Past hours (``backs`` hours ago) of requests of 20 rows: the control answers, every
    shadow runs on the same rows, each compared by ``agreement`` as the shadow runner does."""
    [loaded] = load_experiments([folder], folder.parent / "models").experiments
    experiment = loaded.experiment
    sessions = {
        v.key: (ort.InferenceSession(str(folder.parent / "models" / v.model.path)), v.model.sha256)
        for v in experiment.variants
        if v.model is not None and v.key != "b"
    }
    rng = np.random.default_rng(11)
    database = Database(db)
    database.open()
    writer = BatchWriter(database, {PREDICTIONS.table: PREDICTIONS}, max_rows=100_000)
    current_hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    try:
        for back in backs:
            at = current_hour - timedelta(hours=back, minutes=-30)
            for request in range(rows // 20):
                features = rng.normal(size=(20, FEATURES)).astype(np.float32)
                served_session, served_sha = sessions["a"]
                started = time.perf_counter()
                [served] = served_session.run(None, {"features": features})
                latency = (time.perf_counter() - started) * 1000
                unit = f"u{back}-{request}"
                writer.put(PREDICTIONS.table, PredictionRecord(
                    key, unit, "a", "hashed", True, "a", served_sha, "CPUExecutionProvider", 20,
                    latency, False, None, False, False, None, None, at))  # fmt: skip
                for shadow in ("good", "bad"):
                    session, sha = sessions[shadow]
                    started = time.perf_counter()
                    [output] = session.run(None, {"features": features})
                    latency = (time.perf_counter() - started) * 1000
                    pair = ({"probability": served}, {"probability": output})
                    agree, largest = agreement(*pair)
                    writer.put(PREDICTIONS.table, PredictionRecord(
                        key, unit, shadow, "shadow", False, shadow, sha, "CPUExecutionProvider",
                        20, latency, False, None, False, True, agree, largest, at,
                        mean_abs_difference(*pair)))  # fmt: skip
        writer.flush()
        assert writer.pending_rows() == 0
    finally:
        writer.close()
        database.close()


def env_for(db: str, folder: Path, tmp_path: Path) -> dict[str, str]:
    return {"ABX_DATABASE_URL": db, "ABX_EXPERIMENTS": str(folder),
            "ABX_MODELS": str(folder.parent / "models"), "ABX_WEBHOOK_SECRET": SECRET,
            "ABX_DATA_DIR": str(tmp_path / "data"), "ABX_ALLOCATION_SETTLE_SECONDS": "0"}  # fmt: skip


def analyze(runner: CliRunner, key: str, env: dict[str, str]) -> str:
    result = fresh_cli(runner, ["analyze", key], env)
    assert result.exit_code == 0, result.output
    return str(result.output[result.output.index(f"{key}: ") :])


def allocations(db: str, key: str) -> list[tuple[str, dict[str, float], str | None]]:
    with psycopg.connect(db) as conn:
        rows = conn.execute(
            "SELECT origin, weights, decision_id::text FROM allocations WHERE experiment_key = %s"
            " ORDER BY allocation_id",
            (key,),
        ).fetchall()
    return [(str(s), dict(w), d) for s, w, d in rows]


@pytest.fixture
def receiver() -> Any:
    found = FlakyReceiver(failures=0)
    yield found
    found.server.shutdown()
    found.server.server_close()


def test_an_agreeing_shadow_starts_as_a_treatment_after_n_hours_and_a_disagreeing_one_never(
    runner: CliRunner,
    db: str,
    tmp_path: Path,
    receiver: FlakyReceiver,
    server_factory: ServerFactory,
) -> None:
    folder = graduation_folder(tmp_path, "grad", "start", receiver.url)
    env = env_for(db, folder, tmp_path)
    [loaded] = load_experiments([folder], folder.parent / "models").experiments
    with psycopg.connect(db) as conn:  # what a serving process writes at start
        sync_experiments(conn, [(loaded.experiment, str(folder))], 0.0)
    serve_shadow_hours(db, folder, "grad", [2, 1], rows=400)
    early = analyze(runner, "grad", env)
    assert early.startswith("grad: continue"), early  # two hours held: not yet three
    serve_shadow_hours(db, folder, "grad", [3], rows=400)
    out = analyze(runner, "grad", env)
    assert out.startswith("grad: graduate good"), out
    assert "within bounds for 3 h in a row" in out and "weight 0.1" in out
    with psycopg.connect(db) as conn:
        decision_id, kind, status, actor, numbers = conn.execute(
            "SELECT decision_id::text, kind, status, actor, numbers FROM decisions"
            " WHERE experiment_key = 'grad'"
        ).fetchone()  # type: ignore[misc]
    assert (kind, status, actor) == ("graduate", "applied", "abx")
    checks = {c["variant"]: c for c in numbers["shadow_graduation"]}
    assert checks["good"]["ready"] and checks["good"]["hours_held"] == 3
    assert not checks["bad"]["ready"] and checks["bad"]["hours_held"] == 0
    assert checks["bad"]["missed"].startswith("agreement lower bound")
    *_, (origin, weights, by) = allocations(db, "grad")
    assert (origin, by) == ("graduation", decision_id)
    assert weights == pytest.approx({"a": 0.4, "b": 0.5, "good": 0.1, "bad": 0.0})
    assert wait_for(lambda: len(receiver.calls) == 1, timeout=10)
    announced = json.loads(receiver.calls[0])
    assert (announced["kind"], announced["variant"]) == ("graduate", "good")

    # A restart syncs the unchanged YAML: the graduation's allocation stays in force.
    with psycopg.connect(db) as conn:
        sync_experiments(conn, [(loaded.experiment, str(folder))], 0.0)
        assert allocated_weights(conn, loaded.experiment)["good"] == pytest.approx(0.1)
        # A YAML weight edit, synced or not yet, replaces the decision's allocation.
        edited = loaded.experiment.model_copy(update={"variants": [
            v.model_copy(update={"weight": {"a": 0.6, "b": 0.4}.get(v.key, 0.0)})
            for v in loaded.experiment.variants]})  # fmt: skip
        assert allocated_weights(conn, edited) == {"a": 0.6, "b": 0.4, "good": 0.0, "bad": 0.0}
    assert len(allocations(db, "grad")) == 2
    # The next analysis counts it as a treatment and does not graduate it again.
    again = analyze(runner, "grad", env)
    assert again.startswith("grad: continue"), again

    printed = fresh_cli(runner, ["shadow", "report", "grad", "--hours", "4"], env)
    assert printed.exit_code == 0, printed.output
    assert "graduation (start, weight 0.1): 3/3 hours within bounds; ready" in printed.output
    assert "graduation (start, weight 0.1): 0/3 hours within bounds; latest hour: agreement" in (
        printed.output
    )

    # Serving: new units now land on the graduated shadow and its own model answers them.
    good_sha = loaded.experiment.variants[2].model.sha256  # type: ignore[union-attr]
    server = server_factory(
        db,
        folder,
        ABX_MODELS=str(folder.parent / "models"),
        ABX_WEBHOOK_SECRET=SECRET,
        ABX_WORKERS="1",
    )
    api = Api(server.base_url)
    progress = api.get("/v1/experiments/grad/shadows").json()["graduation"]
    assert {c["variant"]: c["hours_held"] for c in progress} == {"good": 3, "bad": 0}
    page = api.get("/dashboards/grad")
    assert page.status_code == 200
    table = page.text[page.text.index('id="graduation-table"') :]
    assert '<td class="num">3 / 3</td>' in table and "ready" in table
    assert '<td class="num">0 / 3</td>' in table and "agreement lower bound" in table
    served: dict[str, int] = {}
    on_good: list[str] = []
    for unit in range(300):
        body = {"experiment": "grad", "unit": f"new-{unit}",
                "inputs": {"features": [[0.1, 0.2, 0.3, 0.4]]}}  # fmt: skip
        answer = api.post("/v1/predict", body)
        assert answer.status_code == 200, answer.text
        found = answer.json()
        served[found["variant"]] = served.get(found["variant"], 0) + 1
        if found["variant"] == "good":
            assert found["model"]["sha256"] == good_sha and not found["fallback"], found
            on_good.append(f"new-{unit}")
    assert set(served) == {"a", "b", "good"}, served
    assert 10 <= served["good"] <= 55, served  # 10% of 300: 30 expected

    def shadow_runs(variant: str) -> int:
        with psycopg.connect(db) as conn:
            return int(conn.execute(  # type: ignore[index]
                "SELECT count(*) FROM predictions WHERE shadow AND variant_key = %s"
                " AND unit_id = ANY(%s)", (variant, on_good)).fetchone()[0])  # fmt: skip

    # The other shadow still runs on its answers; the graduated one is not compared with itself.
    assert wait_for(lambda: shadow_runs("bad") == len(on_good), timeout=20)
    assert shadow_runs("good") == 0
    reset_worker_context()


def test_propose_waits_for_a_human_approval_that_applies_it(
    runner: CliRunner, db: str, tmp_path: Path, receiver: FlakyReceiver
) -> None:
    folder = graduation_folder(tmp_path, "prop", "propose", receiver.url)
    env = env_for(db, folder, tmp_path)
    [loaded] = load_experiments([folder], folder.parent / "models").experiments
    with psycopg.connect(db) as conn:  # what a serving process writes at start
        sync_experiments(conn, [(loaded.experiment, str(folder))], 0.0)
    serve_shadow_hours(db, folder, "prop", [3, 2, 1], rows=400)
    out = analyze(runner, "prop", env)
    assert out.startswith("prop: graduate good") and "proposed as a treatment" in out, out
    assert [s for s, _, _ in allocations(db, "prop")] == ["yaml"]  # nothing applied yet
    again = analyze(runner, "prop", env)
    assert "graduation of good awaits approval" in again, again
    paused = fresh_cli(runner, ["action", "prop", "pause", "--reason", "hold on"], env)
    assert paused.exit_code == 0, paused.output
    refused = fresh_cli(runner, ["action", "prop", "approve", "--reason", "now"], env)
    assert refused.exit_code == 1 and "only while the experiment runs (it is paused)" in (
        refused.output
    )
    assert fresh_cli(runner, ["action", "prop", "resume", "--reason", "go"], env).exit_code == 0
    approved = fresh_cli(runner, ["action", "prop", "approve", "--reason", "looks good"], env)
    assert approved.exit_code == 0, approved.output
    with psycopg.connect(db) as conn:
        rows = conn.execute(
            "SELECT decision_id::text, kind, status, variant_key, numbers FROM decisions"
            " WHERE experiment_key = 'prop' ORDER BY created_at"
        ).fetchall()
    (proposal, *_), *_, (_, kind, _, variant, numbers) = rows
    assert [r[1:3] for r in rows] == [("graduate", "applied"), ("pause", "applied"),
                                      ("resume", "applied"), ("approve", "applied")]  # fmt: skip
    assert (kind, variant, numbers["approves"]) == ("approve", "good", proposal)
    _, (origin, weights, by) = allocations(db, "prop")
    assert (origin, by) == ("graduation", proposal)
    assert weights == pytest.approx({"a": 0.4, "b": 0.5, "good": 0.1, "bad": 0.0})
    assert numbers["weights_after"] == pytest.approx(weights)
    assert wait_for(lambda: len(receiver.calls) == 4, timeout=10)
    kinds = [json.loads(c)["kind"] for c in receiver.calls]
    assert kinds == ["graduate", "pause", "resume", "approve"]


def test_the_worker_publishes_graduation_hours_and_the_worse_of_two_drift_checks() -> None:
    keep = Decision("continue", "nothing to change", ExperimentState())
    check = {"guardrail": "input_drift", "variant": "b", "measure": "psi", "feature": "x",
             "action": "alert"}  # fmt: skip
    numbers = {
        "shadow_graduation": [{"variant": "s", "hours_held": 2}],
        "drift": [
            {**check, "reference": "reference profile", "tripped": True, "distance": 0.9},
            {**check, "reference": "a", "tripped": False, "distance": 0.1},
        ],
    }
    publish_analysis("grad_metrics", AnalysisOutcome(keep, None, [], numbers), 0.01, 0)
    labels = {"experiment": "grad_metrics", "variant": "b", "guardrail": "input_drift"}
    assert REGISTRY.get_sample_value("abx_guardrail_breached", labels) == 1.0
    assert REGISTRY.get_sample_value("abx_drift_distance", labels) == pytest.approx(0.9)
    hours = {"experiment": "grad_metrics", "variant": "s"}
    assert REGISTRY.get_sample_value("abx_shadow_graduation_hours", hours) == 2.0
