"""``abx infer --bind`` serves its models folder by name and reloads a model when its file
changes: under concurrent requests, with a run in flight, and with a broken new file."""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import requests

from service.inference.folder import look
from service.inference.host import LoadError, ModelHost
from tests.conftest import free_port, wait_for
from tests.inference.inference_process import InferProcess, running_infer
from tests.model_fixtures import MODELS, demo_models, slow_model

TOKEN = "test-inference-token-0123456789abcdef"
HEADERS = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module", autouse=True)
def built() -> dict[str, str]:
    return demo_models()


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def put(source: Path | bytes, target: Path) -> None:
    """Replace ``target`` in one step, as a deployment should (a file beside it, renamed)."""
    staging = target.with_suffix(".staging")
    if isinstance(source, bytes):
        staging.write_bytes(source)
    else:
        shutil.copyfile(source, staging)
    os.replace(staging, target)


@functools.cache
def session_of(name: str) -> ort.InferenceSession:
    return ort.InferenceSession(str(MODELS / name), providers=["CPUExecutionProvider"])


def answer_of(name: str, rows: np.ndarray) -> np.ndarray:
    return np.asarray(session_of(name).run(None, {"features": rows})[0])


def infer_body(rows: np.ndarray) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "features", "datatype": "FP32", "shape": list(rows.shape),
             "data": rows.ravel().tolist()}
        ]
    }  # fmt: skip


def get(infer: InferProcess, path: str) -> requests.Response:
    return requests.get(f"{infer.url}{path}", headers=HEADERS, timeout=10)


def post(infer: InferProcess, name: str, rows: np.ndarray, timeout: float = 30) -> Any:
    return requests.post(
        f"{infer.url}/v2/models/{name}/infer", json=infer_body(rows), headers=HEADERS,
        timeout=timeout,
    )  # fmt: skip


def serving_sha(infer: InferProcess, name: str) -> str | None:
    response = get(infer, f"/v2/models/{name}")
    return response.json()["parameters"]["sha256"] if response.status_code == 200 else None


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    root.mkdir()
    shutil.copyfile(MODELS / "churn_logreg.onnx", root / "churn.onnx")
    return root


@pytest.fixture
def metrics_port() -> int:
    return free_port()


@pytest.fixture
def infer(folder: Path, tmp_path: Path, metrics_port: int) -> Iterator[InferProcess]:
    with running_infer(
        folder, tmp_path / "infer.log", "--providers", "cpu",
        "--metrics-bind", f"127.0.0.1:{metrics_port}",
        port=free_port(), ABX_INFERENCE_TOKEN=TOKEN, ABX_RELOAD_POLL_SECONDS="0.2",
    ) as process:  # fmt: skip
        yield process


def scraped(metrics_port: int, series: str) -> float:
    text = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    found = [row for row in text.splitlines() if row.startswith(f"{series} ")]
    return float(found[0].removeprefix(f"{series} ")) if found else 0.0


def reloads(metrics_port: int, name: str, outcome: str) -> float:
    return scraped(
        metrics_port, f'abx_inference_model_reloads_total{{model="{name}",outcome="{outcome}"}}'
    )


def broken(metrics_port: int, name: str) -> float:
    return scraped(metrics_port, f'abx_inference_model_reload_broken{{model="{name}"}}')


def test_a_changed_file_is_swapped_in_under_load_and_fails_no_request(
    infer: InferProcess, folder: Path, metrics_port: int
) -> None:
    old, new = sha(MODELS / "churn_logreg.onnx"), sha(MODELS / "churn_mlp.onnx")
    expected = {old: "churn_logreg.onnx", new: "churn_mlp.onnx"}
    assert serving_sha(infer, "churn") == old  # every file of the folder loaded at start
    statuses: Counter[int] = Counter()
    served: Counter[str] = Counter()
    wrong: list[str] = []
    stop = threading.Event()

    def client(seed: int) -> None:
        rng = np.random.default_rng(seed)
        while not stop.is_set():
            rows = rng.normal(size=(int(rng.integers(1, 4)), 20)).astype(np.float32)
            response = post(infer, "churn", rows)
            statuses[response.status_code] += 1
            if response.status_code != 200:
                continue
            body = response.json()
            digest = body["parameters"]["sha256"]
            served[digest] += 1
            got = np.asarray(body["outputs"][0]["data"]).reshape(body["outputs"][0]["shape"])
            if not np.allclose(got, answer_of(expected[digest], rows), rtol=1e-5, atol=1e-6):
                wrong.append(digest)  # the answer of another version than the one named

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    try:
        assert wait_for(lambda: served[old] > 20)
        put(MODELS / "churn_mlp.onnx", folder / "churn.onnx")
        assert wait_for(lambda: served[new] > 20, timeout=60), infer.log()
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert set(statuses) == {200}, statuses
    assert not wrong
    assert serving_sha(infer, "churn") == new
    assert get(infer, "/v2/models/churn/ready").json() == {"name": "churn", "ready": True}
    assert reloads(metrics_port, "churn", "loaded") == 2  # at start, then the new version

    # A file that appears is served under its stem; one that disappears is not any more.
    put(MODELS / "churn_logreg.onnx", folder / "extra.onnx")
    assert wait_for(lambda: get(infer, "/v2/models/extra/ready").status_code == 200), infer.log()
    rows = np.ones((2, 20), np.float32)
    body = post(infer, "extra", rows).json()
    np.testing.assert_allclose(
        np.asarray(body["outputs"][0]["data"]).reshape(2, 1),
        answer_of("churn_logreg.onnx", rows), rtol=1e-5, atol=1e-6,
    )  # fmt: skip
    (folder / "extra.onnx").unlink()
    assert wait_for(lambda: get(infer, "/v2/models/extra/ready").status_code == 404)
    assert get(infer, "/v2/models/extra").status_code == 404
    assert post(infer, "extra", rows).status_code == 404
    assert reloads(metrics_port, "extra", "removed") == 1
    assert "Traceback" not in infer.log()


def test_a_request_in_flight_finishes_on_the_version_it_started_on(
    infer: InferProcess, folder: Path
) -> None:
    """The slow model's run is under way when its file is replaced: it is answered by the
    slow model (its 512x512 output), and the next request by the new file's model.

    The run must outlast the reload, which takes longer on a loaded machine: when it did
    not, the model is made four times longer and the swap tried again."""
    for steps in (200, 800, 3200):
        outcome = swap_during_a_run(infer, folder, steps)
        if outcome is not None:
            break
    assert outcome is not None, "every slow run ended before its swap: nothing shown"
    slow_sha, old, after = outcome
    logreg = sha(MODELS / "churn_logreg.onnx")
    assert old.status_code == 200, old.text
    body = old.json()
    assert (body["parameters"]["sha256"], body["outputs"][0]["shape"]) == (slow_sha, [512, 512])
    assert after.status_code == 200
    assert after.json()["parameters"]["sha256"] == logreg
    assert after.json()["outputs"][0]["shape"] == [1, 1]


def swap_during_a_run(
    infer: InferProcess, folder: Path, steps: int
) -> tuple[str, Any, Any] | None:
    """Serve a slow model of ``steps`` MatMuls, start a run, replace the file with the
    logistic model and wait until it serves. Returns the slow model's digest, the in-flight
    answer and the next answer, or None when the run ended before the swap was seen."""
    slow_sha = slow_model(folder / "slow.staging", steps=steps)
    os.replace(folder / "slow.staging", folder / "slow.onnx")
    assert wait_for(lambda: serving_sha(infer, "slow") == slow_sha, timeout=120), infer.log()
    row = np.ones((1, 20), np.float32)
    answers: list[Any] = []
    finished_at: list[float] = []

    def in_flight() -> None:
        answers.append(post(infer, "slow", row, timeout=300))
        finished_at.append(time.monotonic())

    thread = threading.Thread(target=in_flight)
    thread.start()
    assert wait_for(lambda: slow_stats(infer, slow_sha).get("running", False), timeout=30)
    put(MODELS / "churn_logreg.onnx", folder / "slow.onnx")
    logreg = sha(MODELS / "churn_logreg.onnx")
    assert wait_for(lambda: serving_sha(infer, "slow") == logreg, timeout=60), infer.log()
    swapped_at = time.monotonic()
    after = post(infer, "slow", row)
    thread.join(300)
    assert not thread.is_alive(), "the slow run never answered"
    return (slow_sha, answers[0], after) if finished_at[0] > swapped_at else None


def slow_stats(infer: InferProcess, digest: str) -> dict[str, Any]:
    client = infer.client()
    try:
        models = client.call({"op": "status"}, {}, 5)[0]["models"]
    finally:
        client.close()
    found: dict[str, Any] = models.get(digest, {}).get("batching", {})
    return found


def test_a_broken_new_file_keeps_the_old_version_serving_and_is_reported(
    infer: InferProcess, folder: Path, metrics_port: int
) -> None:
    old = sha(MODELS / "churn_logreg.onnx")
    put(b"these bytes are not an ONNX model", folder / "churn.onnx")
    assert wait_for(lambda: reloads(metrics_port, "churn", "failed") == 1), infer.log()
    assert broken(metrics_port, "churn") == 1
    meta = get(infer, "/v2/models/churn").json()
    assert meta["parameters"]["sha256"] == old
    assert "churn.onnx" in meta["parameters"]["reload_error"]
    assert get(infer, "/v2/models/churn/ready").status_code == 200
    rows = np.ones((1, 20), np.float32)
    response = post(infer, "churn", rows)
    assert response.status_code == 200
    assert response.json()["parameters"]["sha256"] == old
    assert "model churn: the new file did not load" in infer.log()
    assert f"sha256 {old[:12]} serves on" in infer.log()

    # A new file that does not load is not served, and says why.
    put(b"nor are these", folder / "fresh.onnx")
    assert wait_for(lambda: reloads(metrics_port, "fresh", "failed") == 1)
    missing = get(infer, "/v2/models/fresh")
    assert missing.status_code == 404
    assert "did not load" in missing.json()["error"]

    # A good version after the broken one is loaded, and the problem is gone.
    new = sha(MODELS / "churn_mlp.onnx")
    put(MODELS / "churn_mlp.onnx", folder / "churn.onnx")
    assert wait_for(lambda: serving_sha(infer, "churn") == new, timeout=60), infer.log()
    assert "reload_error" not in get(infer, "/v2/models/churn").json()["parameters"]
    assert broken(metrics_port, "churn") == 0
    assert post(infer, "churn", rows).json()["parameters"]["sha256"] == new
    assert "Traceback" not in infer.log()


def test_only_top_level_onnx_files_a_url_can_name_are_served(tmp_path: Path) -> None:
    for relative in ("churn.onnx", "v1.2-b_c.onnx", "with space.onnx", "notes.txt", "sub/x.onnx"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(b"x" * len(relative))
    (tmp_path / "folder.onnx").mkdir()
    marks = look(tmp_path)
    assert sorted(marks) == ["churn", "v1.2-b_c"]
    assert marks["churn"][0] == len("churn.onnx")  # the size, then the modification time


def test_failed_loads_leave_nothing_behind(tmp_path: Path) -> None:
    """Any SHA-256 may be asked for: a load that fails keeps no per-version lock."""
    put(MODELS / "churn_logreg.onnx", tmp_path / "churn_logreg.onnx")
    host = ModelHost(tmp_path, threads=1, max_rows=8, max_wait=0.001)
    for number in range(50):
        with pytest.raises(LoadError):
            host.load("churn_logreg.onnx", f"{number:064x}")  # not its checksum
    with pytest.raises(LoadError, match="no model file"):
        host.load("missing.onnx", "0" * 64)
    assert host._loading == {}
    hosted = host.load("churn_logreg.onnx", sha(tmp_path / "churn_logreg.onnx"))
    assert hosted.model.sha256 == sha(tmp_path / "churn_logreg.onnx")
    assert host._loading == {}
    hosted.batcher.close()
