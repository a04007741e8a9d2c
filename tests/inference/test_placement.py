"""Placement by measurement of the deployment: in-worker CPU sessions or the inference process."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import onnxruntime as ort
import pytest

from service.inference.placement import MARGIN, decide, measure, place_models
from service.inference.providers import CPU, CUDA
from service.inference.supervisor import Supervisor, device_count
from service.settings import Settings
from tests.conftest import wait_for
from tests.inference.inference_process import short_socket_dir
from tests.model_fixtures import MODELS, demo_models

HAS_CUDA = CUDA in ort.get_available_providers()


@pytest.fixture(scope="module", autouse=True)
def built() -> dict[str, str]:
    return demo_models()


def test_the_process_needs_a_margin_over_the_workers() -> None:
    assert decide(1000.0, 1000.0 * MARGIN, CUDA, 16).where == "process"
    kept = decide(1000.0, 1000.0 * MARGIN * 0.99, CUDA, 16)
    assert kept.where == "worker"
    assert "16 workers" in kept.reason and "1.2x" in kept.reason
    assert kept.worker_rows_per_second == 1000.0


def test_placement_follows_the_mode_the_yaml_and_the_host(built: dict[str, str]) -> None:
    logreg = (MODELS / "churn_logreg.onnx", built["churn_logreg.onnx"], None)
    pinned_cpu = (MODELS / "churn_mlp.onnx", built["churn_mlp.onnx"], [CPU])
    pinned_cuda = (MODELS / "mlp_heavy.onnx", built["mlp_heavy.onnx"], [CUDA])
    refs = [logreg, pinned_cpu, pinned_cuda]
    assert place_models(refs, "worker", 4, 4, 64, 2, [CPU]) == {}
    everything = place_models(refs, "process", 4, 4, 64, 2, [CPU])
    assert {p.where for p in everything.values()} == {"process"}
    cpu_host = place_models(refs, "auto", 4, 4, 64, 2, [CPU])
    assert {p.where for p in cpu_host.values()} == {"worker"}
    assert "no CUDA" in cpu_host[built["churn_logreg.onnx"]].reason
    assert "asks for CPUExecutionProvider" in cpu_host[built["churn_mlp.onnx"]].reason
    gpu_host = place_models(refs[1:], "auto", 16, 4, 512, 16, [CUDA, CPU])
    assert gpu_host[built["mlp_heavy.onnx"]].where == "process"


def test_measure_times_the_workers_against_one_process_on_the_cpu() -> None:
    placement = measure(MODELS / "churn_logreg.onnx", 2, 4, 64, 2, [CPU], seconds=0.1)
    assert placement.worker_rows_per_second and placement.process_rows_per_second
    assert placement.process_provider == CPU
    assert placement.where in ("worker", "process") and "measured" in placement.reason


@pytest.mark.skipif(not HAS_CUDA, reason="needs the CUDA execution provider")
def test_sixteen_workers_put_the_heavy_mlp_on_the_gpu_process() -> None:
    placement = measure(MODELS / "mlp_heavy.onnx", 16, 4, 512, 16, [CUDA, CPU], seconds=0.5)
    assert placement.process_provider == CUDA
    assert placement.where == "process", placement


def test_one_inference_process_per_device_each_restarted_when_it_dies(tmp_path: Path) -> None:
    assert device_count(3) == 3
    assert device_count(0, nvidia_smi=str(tmp_path / "no-such-program")) == 1
    settings = Settings(inference_socket=Path("/tmp/abx-x/infer.sock"))
    assert settings.inference_socket_for(0) == "/tmp/abx-x/infer.sock"
    assert settings.inference_socket_for(1) == "/tmp/abx-x/infer-1.sock"
    folder = short_socket_dir()
    supervisor = Supervisor(
        str(folder / "infer-1.sock"), ["churn_logreg.onnx"], env={"CUDA_VISIBLE_DEVICES": "1"}
    )
    supervisor.start()
    try:
        assert supervisor.wait_ready(120)
        first = supervisor.process
        assert first is not None
        environment = Path(f"/proc/{first.pid}/environ").read_bytes().split(b"\0")
        assert b"CUDA_VISIBLE_DEVICES=1" in environment  # it sees only its own GPU
        first.send_signal(signal.SIGKILL)
        assert wait_for(lambda: supervisor.starts == 2, timeout=30)
        assert supervisor.wait_ready(120) and supervisor.process is not first
    finally:
        supervisor.close()
        shutil.rmtree(folder, ignore_errors=True)
    assert supervisor.process is not None and supervisor.process.poll() is not None
