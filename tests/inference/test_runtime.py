"""The model runtime without a server: signatures, sessions, batching, cache, fallback."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from numpy.testing import assert_allclose

from service.errors import InputMismatch, ModelUnavailable
from service.experiments.schema import ModelRef
from service.inference.batching import MicroBatcher
from service.inference.cache import PredictionCache, input_digest
from service.inference.catalog import ExperimentModels, ServingModel, input_plans
from service.inference.providers import CPU, CUDA, choose_provider, session_providers
from service.inference.runner import FailureCounts, SessionRunner, run_with_fallback
from service.inference.sessions import intra_op_threads, load_model
from service.inference.shadow import agreement
from service.inference.signature import InputPlan, TensorSpec, convert_inputs
from tests.model_fixtures import (
    MODELS,
    corrupt_model,
    demo_models,
    nan_model,
    raising_model,
    slow_model,
)

FEATURES = TensorSpec("features", np.float32, (None, 20))
PLANS = (InputPlan("features", FEATURES),)


@pytest.fixture(scope="session")
def built() -> dict[str, str]:
    return demo_models()


def served(
    name: str, path: Path, sha: str, threads: int = 1, providers: list[str] | None = None
) -> ServingModel:
    ref = ModelRef(path=path.name, sha256=sha)
    try:
        model = load_model(path, sha, providers, threads)
    except Exception as error:
        return ServingModel(name, ref, None, str(error), ())
    return ServingModel(name, ref, model, None, input_plans(ref, model.inputs))


def test_inputs_convert_to_the_models_dtype_and_shape() -> None:
    feeds, rows = convert_inputs({"features": [[1] * 20, [2.5] * 20]}, PLANS, 100)
    assert rows == 2 and feeds["features"].dtype == np.float32
    assert feeds["features"].shape == (2, 20)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({}, "inputs.features: missing; expected float32 [N, 20]"),
        ({"features": [[1.0] * 19]}, "shape [1, 19] does not match float32 [N, 20]"),
        ({"features": [1.0] * 20}, "shape [20] does not match"),
        ({"features": [[1.0] * 20, [1.0] * 3]}, "not a rectangular list of numbers"),
        ({"features": [["a"] * 20]}, "not a rectangular list of numbers"),
        ({"features": [[float("nan")] * 20]}, "values must be finite numbers"),
        ({"features": [[1.0] * 20] * 101}, "101 rows; expected 1 to 100"),
        ({"features": [[1.0] * 20], "extra": [1]}, "inputs.extra: unknown input"),
    ],
)
def test_mismatched_inputs_are_named_and_nothing_runs(inputs: dict, message: str) -> None:
    with pytest.raises(InputMismatch) as caught:
        convert_inputs(inputs, PLANS, 100)
    assert caught.value.status == 422
    assert message in str(caught.value)


def test_integer_inputs_refuse_fractions() -> None:
    plans = (InputPlan("ids", TensorSpec("ids", np.int64, (None,))),)
    assert convert_inputs({"ids": [1, 2]}, plans, 10)[0]["ids"].dtype == np.int64
    with pytest.raises(InputMismatch, match="values must be integers"):
        convert_inputs({"ids": [1.5]}, plans, 10)


@pytest.mark.parametrize(
    ("dtype", "value", "message"),
    [
        (np.float32, 1e300, "values must be finite numbers within the range of float32"),
        (np.float32, 10**400, "values must be finite numbers within the range of float32"),
        (np.float64, -(10**400), "values must be finite numbers within the range of float64"),
        (np.int32, 2**40, "values must be integers within the range of int32"),
        (np.int64, 2**63, "values must be integers within the range of int64"),
        (np.int64, -(10**400), "values must be integers within the range of int64"),
    ],
)
def test_finite_numbers_the_models_dtype_cannot_hold_are_refused_by_input(
    dtype: type, value: int | float, message: str
) -> None:
    plans = (InputPlan("x", TensorSpec("x", dtype, (None, 2))),)
    with pytest.raises(InputMismatch) as caught:
        convert_inputs({"x": [[1, value]]}, plans, 10)
    assert f"inputs.x: {message}" in str(caught.value)
    assert caught.value.status == 422


def test_values_that_overflow_once_scaled_are_refused() -> None:
    ref = ModelRef.model_validate(
        {
            "path": "m.onnx",
            "sha256": "0" * 64,
            "inputs": {"raw": {"model_input": "features", "factor": 1e30}},
        }
    )
    plans = input_plans(ref, [FEATURES])
    with pytest.raises(InputMismatch, match=r"inputs\.raw: values overflow the model's float32"):
        convert_inputs({"raw": [[1e10] * 20]}, plans, 10)


def test_preprocessing_scales_before_the_model_sees_the_inputs() -> None:
    ref = ModelRef.model_validate(
        {
            "path": "m.onnx",
            "sha256": "0" * 64,
            "inputs": {"raw": {"model_input": "features", "offset": 1.0, "factor": 0.5}},
        }
    )
    plans = input_plans(ref, [FEATURES])
    feeds, _ = convert_inputs({"raw": [[3.0] * 20]}, plans, 10)
    assert np.allclose(feeds["features"], 1.0)


def test_provider_choice_and_threads() -> None:
    assert choose_provider({CUDA: {1: 0.2, 64: 0.3}, CPU: {1: 0.05, 64: 2.0}}) == CUDA
    assert choose_provider({CUDA: {1: 0.1}, CPU: {1: 0.02}}) == CPU
    assert choose_provider({CUDA: {1: 0.1}, CPU: {1: 0.1}}) == CPU
    assert intra_op_threads(cores=16, workers=4) == 4
    assert intra_op_threads(cores=2, workers=4) == 1
    assert intra_op_threads(cores=2, workers=2, override=3) == 3


def test_cpu_serves_when_cuda_is_absent(built: dict[str, str]) -> None:
    if CUDA in ort.get_available_providers():
        pytest.skip("this machine has CUDA")
    model = load_model(MODELS / "churn_logreg.onnx", built["churn_logreg.onnx"], [CUDA, CPU], 1)
    assert model.provider == CPU


@pytest.mark.gpu
def test_cuda_is_chosen_for_the_heavy_model_at_large_batches(built: dict[str, str]) -> None:
    if CUDA not in ort.get_available_providers():
        pytest.skip("no CUDA execution provider here")
    model = load_model(MODELS / "mlp_heavy.onnx", built["mlp_heavy.onnx"], None, 1, (1, 512))
    assert set(model.timings_ms) == {CUDA, CPU}
    assert model.provider == choose_provider(model.timings_ms) == CUDA
    rows = np.random.default_rng(0).standard_normal((512, 20)).astype(np.float32)
    on_cpu = ort.InferenceSession(str(model.path), providers=[CPU]).run(None, {"features": rows})
    # Full float32 on CUDA: with TF32 (onnxruntime's default) an H200 was 1.8e-3 off.
    assert_allclose(list(model.run({"features": rows}).values()), on_cpu, rtol=0, atol=1e-5)


def test_cuda_sessions_ask_for_full_float32_and_others_take_no_options() -> None:
    assert session_providers([CUDA, CPU]) == [(CUDA, {"use_tf32": "0"}), CPU]
    assert session_providers([CPU]) == [CPU]


def test_micro_batcher_groups_concurrent_rows_and_slices_outputs() -> None:
    sizes: list[int] = []

    def run(feeds: dict) -> dict:
        sizes.append(len(feeds["x"]))
        time.sleep(0.01)
        return {"y": feeds["x"] * 2}

    batcher = MicroBatcher(run, max_rows=8, max_wait=0.05)
    results: dict[int, np.ndarray] = {}

    def client(i: int) -> None:
        results[i] = batcher.submit({"x": np.array([[i]])}, 1).wait(5)["y"]

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    batcher.close()
    assert all(results[i].tolist() == [[2 * i]] for i in range(16))
    assert max(sizes) > 1 and all(size <= 8 for size in sizes) and sum(sizes) == 16


def test_a_lone_request_runs_at_once_and_what_queues_meanwhile_is_one_batch() -> None:
    started, release = threading.Event(), threading.Event()
    sizes: list[int] = []

    def run(feeds: dict) -> dict:
        sizes.append(len(feeds["x"]))
        started.set()
        release.wait(5)
        return {"y": feeds["x"] * 10}

    batcher = MicroBatcher(run, max_rows=64, max_wait=0.0)
    lone = batcher.submit({"x": np.array([[1]])}, 1)
    assert started.wait(5)  # running with one row of 64: nobody was waited for
    queued = [batcher.submit({"x": np.array([[v]])}, 1) for v in (2, 3, 4)]
    release.set()
    assert lone.wait(5)["y"].tolist() == [[10]]
    assert [p.wait(5)["y"].tolist() for p in queued] == [[[20]], [[30]], [[40]]]
    batcher.close()
    assert sizes == [1, 3]
    stats = batcher.stats()
    assert (stats["batches"], stats["rows"], stats["mean_rows"]) == (2, 4, 2.0)
    assert 0 < stats["answer_p50_ms"] <= stats["answer_p99_ms"]


def test_an_idle_batcher_runs_a_lone_request_in_its_thread_and_queues_the_rest() -> None:
    started, release = threading.Event(), threading.Event()
    threads: list[str] = []
    sizes: list[int] = []

    def run(feeds: dict) -> dict:
        threads.append(threading.current_thread().name)
        sizes.append(len(feeds["x"]))
        started.set()
        release.wait(5)
        return {"y": feeds["x"] * 10}

    batcher = MicroBatcher(run, max_rows=64, max_wait=0.0)
    answers: list[Any] = []
    inline = threading.Thread(
        target=lambda: answers.append(batcher.run_if_idle({"x": np.array([[1]])}, 1)),
        name="request-1",
    )
    inline.start()
    assert started.wait(5)
    assert batcher.run_if_idle({"x": np.array([[9]])}, 1) is None  # busy: not inline
    queued = [batcher.submit({"x": np.array([[v]])}, 1) for v in (2, 3)]
    release.set()
    inline.join(5)
    assert answers[0]["y"].tolist() == [[10]]
    assert [p.wait(5)["y"].tolist() for p in queued] == [[[20]], [[30]]]
    batcher.close()
    assert threads[0] == "request-1" and threads[1] != "request-1"
    assert sizes == [1, 2]  # what queued during the inline run was the next batch
    assert batcher.stats()["batches"] == 2


def test_micro_batcher_gives_multi_row_requests_their_rows_and_times_out_a_slow_run() -> None:
    release = threading.Event()

    def run(feeds: dict) -> dict:
        release.wait(5)
        return {"y": feeds["x"] + 100}

    batcher = MicroBatcher(run, max_rows=16, max_wait=0.3)
    first = batcher.submit({"x": np.array([[1], [2], [3]])}, 3)
    second = batcher.submit({"x": np.array([[4], [5]])}, 2)
    with pytest.raises(TimeoutError, match="latency budget"):
        first.wait(0.01)  # the run has not finished: the caller falls back
    release.set()
    assert second.wait(5)["y"].tolist() == [[104], [105]]
    assert first.wait(5)["y"].tolist() == [[101], [102], [103]]  # still answered, once done
    assert first.wait(0)["y"].tolist() == [[101], [102], [103]]
    batcher.close()
    assert (batcher.batches, batcher.rows) == (1, 5)


def test_a_request_that_gives_up_does_not_stop_the_wake_up_chain_of_its_batch() -> None:
    release = threading.Event()

    def run(feeds: dict) -> dict:
        release.wait(5)
        return {"y": feeds["x"] + 1}

    batcher = MicroBatcher(run, max_rows=3, max_wait=5.0)
    first, middle, last = (batcher.submit({"x": np.array([[v]])}, 1) for v in (1, 2, 3))
    with pytest.raises(TimeoutError):
        middle.wait(0.01)  # its caller falls back; ``last`` (no budget) still waits behind it
    answers: dict[str, list] = {}
    waiters = [
        threading.Thread(
            target=lambda p=p, k=k: answers.update({k: p.wait(None)["y"].tolist()}), daemon=True
        )
        for k, p in (("first", first), ("last", last))
    ]
    for waiter in waiters:
        waiter.start()
    release.set()
    for waiter in waiters:
        waiter.join(5)
    assert answers == {"first": [[2]], "last": [[4]]}
    assert middle.wait(0)["y"].tolist() == [[3]]  # answered all the same, once asked again
    batcher.close()


def test_concurrent_requests_with_budgets_are_all_answered_or_time_out() -> None:
    def run(feeds: dict) -> dict:
        time.sleep(0.002)
        return {"y": feeds["x"] * 3}

    batcher = MicroBatcher(run, max_rows=8, max_wait=0.0)
    outcomes: list[str] = []

    def client(i: int) -> None:
        for n in range(30):
            value = i * 100 + n
            try:
                got = batcher.submit({"x": np.array([[value]])}, 1).wait((n % 4) * 0.001 or None)
                outcomes.append("ok" if got["y"].tolist() == [[3 * value]] else "wrong")
            except TimeoutError:
                outcomes.append("timeout")

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    batcher.close()
    assert not any(thread.is_alive() for thread in threads)  # nobody left waiting for a wake-up
    assert len(outcomes) == 16 * 30 and "wrong" not in outcomes
    assert {"ok", "timeout"} <= set(outcomes), Counter(outcomes)


def test_rows_whose_deadline_passes_in_the_queue_are_never_run() -> None:
    """A request that waited past its deadline behind a running batch is answered with a
    TimeoutError and its rows are never fed to the model; one still in time runs."""
    started, release = threading.Event(), threading.Event()
    fed: list[list[int]] = []

    def run(feeds: dict) -> dict:
        fed.append(feeds["x"].ravel().tolist())
        started.set()
        release.wait(5)
        return {"y": feeds["x"] * 2}

    batcher = MicroBatcher(run, max_rows=8, max_wait=0.0)
    running = batcher.submit({"x": np.array([[1]])}, 1)
    assert started.wait(5)
    now = time.monotonic()
    late = batcher.submit({"x": np.array([[2]])}, 1, deadline=now + 0.05)
    timely = batcher.submit({"x": np.array([[3]])}, 1, deadline=now + 30)
    unbounded = batcher.submit({"x": np.array([[4]])}, 1)
    time.sleep(0.1)  # past ``late``'s deadline while the first batch still runs
    release.set()
    assert running.wait(5)["y"].tolist() == [[2]]
    with pytest.raises(TimeoutError, match="not run"):
        late.wait(5)
    assert timely.wait(5)["y"].tolist() == [[6]]
    assert unbounded.wait(5)["y"].tolist() == [[8]]
    batcher.close()
    assert fed == [[1], [3, 4]]  # the late row never reached the model
    assert (batcher.stats()["expired"], batcher.stats()["rows"]) == (1, 3)


def test_a_batch_of_budgeted_requests_runs_until_the_latest_deadline_only() -> None:
    """``run_until`` gets the latest deadline of a batch whose requests all have one; a batch
    with a request without a deadline runs with ``run`` (nobody may cut it)."""
    started, release = threading.Event(), threading.Event()
    given: list[float | None] = []

    def run(feeds: dict) -> dict:
        given.append(None)
        started.set()
        release.wait(5)
        return {"y": feeds["x"]}

    def run_until(feeds: dict, deadline: float) -> dict:
        given.append(deadline)
        raise TimeoutError("cut at the deadline")

    batcher = MicroBatcher(run, max_rows=8, max_wait=0.0, run_until=run_until)
    first = batcher.submit({"x": np.array([[1]])}, 1)
    assert started.wait(5)
    now = time.monotonic()
    both = [batcher.submit({"x": np.array([[v]])}, 1, now + d) for v, d in ((2, 20), (3, 30))]
    release.set()
    first.wait(5)
    for pending in both:
        with pytest.raises(TimeoutError, match="cut"):
            pending.wait(5)
    batcher.close()
    assert given == [None, now + 30]
    assert batcher.stats()["cut"] == 1


def test_micro_batcher_hands_the_models_error_to_every_request() -> None:
    def run(feeds: dict) -> dict:
        raise RuntimeError("model exploded")

    batcher = MicroBatcher(run, max_rows=4, max_wait=0.001)
    with pytest.raises(RuntimeError, match="exploded"):
        batcher.submit({"x": np.zeros((1, 1))}, 1).wait(5)
    batcher.close()
    assert batcher.submit({"x": np.zeros((1, 1))}, 1).error is not None  # closed: inline


def test_prediction_cache_is_bounded_expires_and_keys_on_the_model() -> None:
    now = [0.0]
    cache = PredictionCache(max_entries=2, ttl_seconds=10, clock=lambda: now[0])
    a, b, c = (input_digest({"x": np.array([[v]], dtype=np.float32)}) for v in (1, 2, 3))
    assert a == input_digest({"x": np.array([[1.0]], dtype=np.float32)})
    cache.put("m1", a, {"y": np.ones(1)})
    assert cache.get("m1", a) is not None and cache.get("m2", a) is None
    cache.put("m1", b, {"y": np.ones(1)})
    cache.put("m1", c, {"y": np.ones(1)})
    assert len(cache) == 2 and cache.get("m1", a) is None
    now[0] = 11.0
    assert cache.get("m1", c) is None


def test_agreement_of_shadow_and_served_outputs() -> None:
    served_out = {"probability": np.array([[0.2], [0.7], [0.9]])}
    shadow_out = {"probability": np.array([[0.3], [0.4], [0.95]])}
    share, largest = agreement(served_out, shadow_out)
    assert share == pytest.approx(2 / 3) and largest == pytest.approx(0.3)


@pytest.fixture(scope="module")
def fault_models(
    tmp_path_factory: pytest.TempPathFactory, built: dict[str, str]
) -> dict[str, ServingModel]:
    folder = tmp_path_factory.mktemp("faults")
    models = {
        "control": served("control", MODELS / "churn_logreg.onnx", built["churn_logreg.onnx"])
    }
    for name, make in [
        ("nan", nan_model),
        ("raises", raising_model),
        ("slow", slow_model),
        ("corrupt", corrupt_model),
    ]:
        path = folder / f"{name}.onnx"
        # On the CPU the slow model is slow everywhere; calibrated, an H200 ran it within budget.
        models[name] = served(name, path, make(path), providers=[CPU] if name == "slow" else None)
    return models


@pytest.mark.parametrize("variant", ["nan", "raises", "slow", "corrupt"])
def test_every_failure_is_answered_by_the_control(
    fault_models: dict[str, ServingModel], variant: str
) -> None:
    experiment = ExperimentModels("faults", fault_models, "control", 0.05, None, ())
    failures = FailureCounts()
    feeds = {"features": np.ones((1, 20), dtype=np.float32)}
    started = time.perf_counter()
    result = run_with_fallback(
        SessionRunner(64), experiment, fault_models[variant], feeds, 1, lambda s: feeds, failures
    )
    assert result.served_by is fault_models["control"]
    expected = {"nan": "non-finite", "raises": "error", "slow": "timeout", "corrupt": "load-error"}[
        variant
    ]
    assert result.failure == expected
    assert failures.snapshot() == {"faults": {variant: {expected: 1}}}
    direct = ort.InferenceSession(str(fault_models["control"].model.path)).run(None, feeds)[0]  # type: ignore[union-attr]
    assert np.array_equal(result.outputs["probability"], direct)
    if variant == "slow":
        assert time.perf_counter() - started < 1.0  # the watchdog stopped the run


def test_a_failing_fallback_is_a_503_never_a_500(fault_models: dict[str, ServingModel]) -> None:
    experiment = ExperimentModels("faults", fault_models, "nan", None, None, ())
    feeds = {"features": np.ones((1, 20), dtype=np.float32)}
    with pytest.raises(ModelUnavailable):
        run_with_fallback(
            SessionRunner(64),
            experiment,
            fault_models["raises"],
            feeds,
            1,
            lambda s: feeds,
            FailureCounts(),
        )


def test_gpu_check_runs_on_the_cpu_alone(built: dict[str, str]) -> None:
    import subprocess
    import sys

    from service.settings import PROJECT_ROOT

    result = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "benchmarks" / "gpu_check.py"), "--seconds", "0.01"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for batch in (1, 8, 64, 512):
        assert f"mlp_heavy.onnx         batch {batch:>4}:   CPU" in result.stdout
    assert "churn_gbm.onnx         batch    1:   CPU" in result.stdout
    if CUDA not in ort.get_available_providers():
        assert "measuring the CPU only" in result.stdout
        assert (
            "mlp_heavy.onnx: the calibration would serve it on CPU unbatched, CPU micro-batched"
            in result.stdout
        )
