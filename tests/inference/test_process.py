"""``abx infer`` on its own: rows of many clients batched together, checks, the OIP API."""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import requests

from service.inference.wire import InferenceClient, TransportError
from service.settings import PROJECT_ROOT
from tests.conftest import free_port, wait_for
from tests.inference.inference_process import InferProcess, running_infer
from tests.model_fixtures import MODELS, demo_models, slow_model

TOKEN = "test-inference-token-0123456789abcdef"


@pytest.fixture(scope="module")
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    demo_models()
    root = tmp_path_factory.mktemp("models")
    for name in ("churn_logreg.onnx", "mlp_heavy.onnx"):
        shutil.copy(MODELS / name, root / name)
    slow_model(root / "slow.onnx", steps=100)
    return root


@pytest.fixture(scope="module")
def infer(models_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[InferProcess]:
    log = tmp_path_factory.mktemp("infer") / "infer.log"
    with running_infer(
        models_root,
        log,
        "--model", "churn_logreg.onnx", "--model", "mlp_heavy.onnx", "--providers", "cpu",
        port=free_port(),
        ABX_INFERENCE_TOKEN=TOKEN,
        ABX_BATCH_MAX_SIZE="64",
    ) as process:  # fmt: skip
        yield process


def sha(root: Path, name: str) -> str:
    import hashlib

    return hashlib.sha256((root / name).read_bytes()).hexdigest()


def local(root: Path, name: str, rows: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(root / name), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"features": rows})[0])


def status(infer: InferProcess) -> dict[str, Any]:
    client = infer.client()
    try:
        models: dict[str, Any] = client.call({"op": "status"}, {}, 5)[0]["models"]
        return models
    finally:
        client.close()


def run(client: InferenceClient, root: Path, name: str, rows: np.ndarray, **extra: object):  # type: ignore[no-untyped-def]
    header = {"op": "run", "model": sha(root, name), "path": name, "timeout": 5.0, **extra}
    return client.call(header, {"features": rows}, 10.0)


def test_rows_of_many_clients_share_runs_and_each_gets_its_own(
    infer: InferProcess, models_root: Path
) -> None:
    rng = np.random.default_rng(7)
    rows = rng.normal(size=(8 * 30, 20)).astype(np.float32)
    expected = local(models_root, "mlp_heavy.onnx", rows)
    got: dict[int, np.ndarray] = {}
    before = status(infer)

    def client(offset: int) -> None:
        connection = infer.client()
        try:
            for index in range(offset, len(rows), 8):
                reply, outputs = run(
                    connection, models_root, "mlp_heavy.onnx", rows[index : index + 1]
                )
                assert reply["ok"], reply
                assert reply["provider"] == "CPUExecutionProvider"
                got[index] = outputs["probability"]
        finally:
            connection.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    answered = np.concatenate([got[i] for i in range(len(rows))])
    np.testing.assert_allclose(answered, expected, rtol=1e-5, atol=1e-6)
    after = status(infer)
    heavy = sha(models_root, "mlp_heavy.onnx")
    batches = after[heavy]["batching"]["batches"] - before[heavy]["batching"]["batches"]
    assert batches < len(rows), "eight clients' single rows never shared a run"


def test_requests_that_do_not_fit_are_refused_before_anything_runs(
    infer: InferProcess, models_root: Path
) -> None:
    client = infer.client()
    row = np.zeros((1, 20), dtype=np.float32)
    cases = {
        "float64": ({}, {"features": row.astype(np.float64)}, "bad-input"),
        "shape": ({}, {"features": np.zeros((1, 19), dtype=np.float32)}, "bad-input"),
        "name": ({}, {"other": row}, "bad-input"),
        "rows": ({}, {"features": np.zeros((65, 20), dtype=np.float32)}, "bad-input"),
        "outside": ({"path": "../x.onnx", "model": "0" * 64}, {"features": row}, "load-error"),
        "checksum": ({"model": "0" * 64}, {"features": row}, "load-error"),
        "op": ({"op": "drop"}, {}, "bad-request"),
    }
    good = sha(models_root, "churn_logreg.onnx")
    for name, (extra, arrays, reason) in cases.items():
        header = {"op": "run", "model": good, "path": "churn_logreg.onnx", **extra}
        reply, outputs = client.call(header, arrays, 10.0)
        assert (reply["ok"], reply.get("reason"), outputs) == (False, reason, {}), name
    reply, _ = run(client, models_root, "churn_logreg.onnx", row)
    client.close()
    assert reply["ok"]  # the connection and the process are fine after all that


def test_a_run_past_its_budget_is_answered_as_a_timeout(
    infer: InferProcess, models_root: Path
) -> None:
    client = infer.client()
    try:
        load = {"op": "load", "model": sha(models_root, "slow.onnx"), "path": "slow.onnx"}
        assert client.call(load, {}, 60)[0]["ok"]
        row = np.ones((1, 20), np.float32)
        reply, _ = run(client, models_root, "slow.onnx", row, timeout=0.01)
    finally:
        client.close()
    assert (reply["ok"], reply["reason"]) == (False, "timeout")


def _slow_stats(infer: InferProcess, models_root: Path) -> dict[str, Any]:
    stats: dict[str, Any] = status(infer)[sha(models_root, "slow.onnx")]["batching"]
    return stats


def _occupy_slow_model(infer: InferProcess, models_root: Path) -> threading.Thread:
    """A run of the slow model with a long budget, under way when this returns."""
    row = np.ones((1, 20), np.float32)

    def occupy() -> None:
        connection = infer.client()
        try:
            assert run(connection, models_root, "slow.onnx", row, timeout=60.0)[0]["ok"]
        finally:
            connection.close()

    thread = threading.Thread(target=occupy)
    thread.start()
    assert wait_for(lambda: _slow_stats(infer, models_root)["running"], timeout=30)
    return thread


def test_rows_whose_deadline_passes_while_queued_are_answered_and_never_run(
    infer: InferProcess, models_root: Path
) -> None:
    row = np.ones((1, 20), np.float32)
    client = infer.client()
    try:
        started = time.monotonic()
        assert run(client, models_root, "slow.onnx", row, timeout=60.0)[0]["ok"]  # loaded
        one_run = time.monotonic() - started
        before = _slow_stats(infer, models_root)
        occupying = _occupy_slow_model(infer, models_root)
        started = time.monotonic()
        reply, outputs = run(client, models_root, "slow.onnx", row, timeout=0.05)
        answered = time.monotonic() - started
    finally:
        client.close()
    occupying.join(60)
    assert (reply["ok"], reply["reason"], outputs) == (False, "timeout", {})
    assert answered < one_run / 2  # at its deadline, not after the run it queued behind
    assert wait_for(lambda: _slow_stats(infer, models_root)["expired"] == before["expired"] + 1)
    after = _slow_stats(infer, models_root)
    assert after["rows"] - before["rows"] == 1  # the occupying run's row only


def test_a_batch_whose_every_request_is_late_is_cut(models_root: Path, tmp_path: Path) -> None:
    """With a batch wait, every request goes through the batch thread: a batch whose latest
    deadline passes mid-run is stopped there (``cut``), not run to its end."""
    row = np.ones((1, 20), np.float32)
    with running_infer(
        models_root, tmp_path / "infer.log", "--model", "slow.onnx", "--providers", "cpu",
        ABX_BATCH_MAX_WAIT_MS="1",
    ) as process:  # fmt: skip
        client = process.client()
        try:
            started = time.monotonic()
            assert run(client, models_root, "slow.onnx", row, timeout=60.0)[0]["ok"]
            one_run = time.monotonic() - started
            started = time.monotonic()
            reply, outputs = run(client, models_root, "slow.onnx", row, timeout=one_run / 4)
            answered = time.monotonic() - started

            def stats() -> dict[str, Any]:
                found: dict[str, Any] = status(process)[sha(models_root, "slow.onnx")]["batching"]
                return found

            assert wait_for(lambda: stats()["cut"] == 1, timeout=one_run / 2)  # not at its end
            assert (stats()["expired"], stats()["running"]) == (0, False)
            assert run(client, models_root, "slow.onnx", row, timeout=60.0)[0]["ok"]  # still fine
        finally:
            client.close()
    assert (reply["ok"], reply["reason"], outputs) == (False, "timeout", {})
    assert answered < one_run / 2


def test_a_client_sees_a_dead_process_as_a_transport_error(
    models_root: Path, tmp_path: Path
) -> None:
    with running_infer(models_root, tmp_path / "infer.log", "--providers", "cpu") as process:
        client = process.client()
        row = np.zeros((1, 20), dtype=np.float32)
        assert run(client, models_root, "churn_logreg.onnx", row)[0]["ok"]
        process.process.send_signal(signal.SIGKILL)
        process.process.wait()
        with pytest.raises(TransportError):
            run(client, models_root, "churn_logreg.onnx", row)
        client.close()


# The Open Inference Protocol (KServe v2 REST).


def oip(
    infer: InferProcess, method: str, path: str, token: str | None = TOKEN, **kwargs: object
) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.request(method, f"{infer.url}{path}", headers=headers, timeout=10, **kwargs)  # type: ignore[arg-type]


def test_oip_health_metadata_and_inference_match_the_model(
    infer: InferProcess, models_root: Path
) -> None:
    assert oip(infer, "GET", "/v2/health/live", token=None).json() == {"live": True}
    assert oip(infer, "GET", "/v2/health/ready", token=None).json() == {"ready": True}
    meta = oip(infer, "GET", "/v2/models/churn_logreg").json()
    assert meta["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 20]}]
    assert meta["parameters"]["sha256"] == sha(models_root, "churn_logreg.onnx")
    rows = np.random.default_rng(1).normal(size=(3, 20)).astype(np.float32)
    body = {
        "id": "r-1",
        "inputs": [
            {
                "name": "features",
                "datatype": "FP32",
                "shape": [3, 20],
                "data": rows.ravel().tolist(),
            }
        ],
    }
    answer = oip(infer, "POST", "/v2/models/churn_logreg/infer", json=body)
    assert answer.status_code == 200, answer.text
    output = answer.json()["outputs"][0]
    assert (answer.json()["id"], output["name"], output["shape"]) == ("r-1", "probability", [3, 1])
    np.testing.assert_allclose(
        np.asarray(output["data"]).reshape(3, 1),
        local(models_root, "churn_logreg.onnx", rows),
        rtol=1e-6,
    )


def test_oip_refuses_without_the_token_and_on_bad_requests(infer: InferProcess) -> None:
    path = "/v2/models/churn_logreg/infer"
    good = {
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 20], "data": [0.0] * 20}]
    }
    assert oip(infer, "POST", path, token=None, json=good).status_code == 401
    assert oip(infer, "POST", path, token="wrong", json=good).status_code == 401
    assert oip(infer, "GET", "/v2/models/churn_logreg", token=None).status_code == 401
    bad = {
        "values": (
            [{"name": "features", "datatype": "FP32", "shape": [1, 20], "data": [0.0] * 19}],
            400,
        ),
        "type": (
            [{"name": "features", "datatype": "FP16", "shape": [1, 20], "data": [0.0] * 20}],
            400,
        ),
        "shape": (
            [{"name": "features", "datatype": "FP32", "shape": [2, 10], "data": [0.0] * 20}],
            400,
        ),
        "input": ([{"name": "x", "datatype": "FP32", "shape": [1, 20], "data": [0.0] * 20}], 400),
    }
    for name, (inputs, status) in bad.items():
        response = oip(infer, "POST", path, json={"inputs": inputs})
        assert response.status_code == status, (name, response.text)
        assert "error" in response.json()
    assert oip(infer, "POST", path, data=b"{not json").status_code == 400
    assert oip(infer, "POST", "/v2/models/nope/infer", json=good).status_code == 404
    unknown = {**good, "outputs": [{"name": "nope"}]}
    assert oip(infer, "POST", path, json=unknown).status_code == 400


def test_oip_request_timeout_is_a_deadline_and_is_checked(infer: InferProcess) -> None:
    """``parameters.timeout`` (microseconds, Triton's convention): the slow model's run is
    stopped there and answered 503; a timeout that is not a positive number is a 400."""
    body: dict[str, Any] = {
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 20], "data": [1.0] * 20}]
    }
    started = time.monotonic()
    assert oip(infer, "POST", "/v2/models/slow/infer", json=body).status_code == 200
    one_run = time.monotonic() - started
    started = time.monotonic()
    answer = oip(infer, "POST", "/v2/models/slow/infer",
                 json={**body, "parameters": {"timeout": 50_000}})  # fmt: skip
    assert answer.status_code == 503, answer.text
    assert time.monotonic() - started < one_run / 2
    for bad in ("soon", -5, 0, True):
        answer = oip(infer, "POST", "/v2/models/slow/infer",
                     json={**body, "parameters": {"timeout": bad}})  # fmt: skip
        assert answer.status_code == 400, (bad, answer.text)
        assert "parameters.timeout" in answer.json()["error"]


def test_oip_off_the_loopback_needs_a_token(models_root: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "infer", "--bind", f"0.0.0.0:{free_port()}"],
        env={"PATH": "/usr/bin:/bin", "ABX_MODELS": str(models_root)},
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        timeout=120,
    )
    assert result.returncode == 2
    assert "ABX_INFERENCE_TOKEN" in result.stderr


def _raw(url: str, request: bytes, timeout: float = 5.0) -> bytes:
    """Send bytes on a fresh connection and read until the server closes it or goes quiet."""
    import socket as socketlib

    host, port = url.removeprefix("http://").split(":")
    with socketlib.create_connection((host, int(port)), timeout=timeout) as conn:
        conn.sendall(request)
        received = b""
        with contextlib.suppress(TimeoutError):
            while chunk := conn.recv(65536):
                received += chunk
                if b"\r\n\r\n" in received and request.startswith(b"GET"):
                    break
    return received


def test_oip_caps_connections_and_drops_silent_ones(models_root: Path, tmp_path: Path) -> None:
    """Two connections at most here: a third is answered 503 at once, never queued behind a
    thread; a connection silent for the read timeout (3 s here) is closed, freeing its slot."""
    import select
    import socket as socketlib
    import time

    with running_infer(
        models_root, tmp_path / "infer.log", "--model", "churn_logreg.onnx", "--providers", "cpu",
        port=free_port(), ABX_INFERENCE_TOKEN=TOKEN, ABX_INFERENCE_MAX_CONNECTIONS="2",
        ABX_INFERENCE_READ_TIMEOUT_SECONDS="3",
    ) as process:  # fmt: skip
        assert process.url is not None
        host, port = process.url.removeprefix("http://").split(":")
        probe = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"

        def hold_both_slots() -> list[socketlib.socket]:
            """Two silent connections that each got a slot: the start-up probe's connection
            may still hold one for a moment, and a refused connection is answered at once."""
            for _ in range(20):
                held = [socketlib.create_connection((host, int(port))) for _ in range(2)]
                time.sleep(0.3)
                if not select.select(held, [], [], 0)[0]:
                    return held
                for conn in held:
                    conn.close()
                time.sleep(0.5)
            raise AssertionError("two connections never held both slots at once")

        silent = hold_both_slots()
        try:
            started = time.monotonic()
            refused = _raw(process.url, probe)
            assert refused.startswith(b"HTTP/1.1 503"), refused
            assert time.monotonic() - started < 1.0  # answered, not queued
            for conn in silent:  # closed by the server after 3 s of silence
                conn.settimeout(10.0)
                assert conn.recv(1) == b""
            assert _raw(process.url, probe).startswith(b"HTTP/1.1 200")
        finally:
            for conn in silent:
                conn.close()
        for length in (b"-5", b"abc"):
            request = (b"POST /v2/models/churn_logreg/infer HTTP/1.1\r\nHost: x\r\n"
                       b"Authorization: Bearer " + TOKEN.encode() + b"\r\nContent-Length: "
                       + length + b"\r\n\r\n{}")  # fmt: skip
            # The connections closed just before give their slots back a moment after the
            # client sees them closed: until then a new one is refused (503), as it should be.
            deadline = time.monotonic() + 5.0
            answer = _raw(process.url, request)
            while answer.startswith(b"HTTP/1.1 503") and time.monotonic() < deadline:
                time.sleep(0.1)
                answer = _raw(process.url, request)
            assert answer.startswith(b"HTTP/1.1 400"), answer
            assert b"Content-Length must be a byte count" in answer
        assert "Traceback" not in process.log()
