"""A real MLflow registry for the tests: a SQLite-backed ``mlflow server`` on a free port.

The server runs from ``.venv-mlflow`` (full ``mlflow``), a virtual environment of its own
that ``scripts/bootstrap test`` makes: the server's dependencies (an older gunicorn and
pyarrow, SQLAlchemy, ...) stay out of abx's environment, which has only the client
(``mlflow-skinny``, the ``mlflow`` extra). ``ABX_TEST_MLFLOW`` may name another ``mlflow``
executable.

``Forwarder`` stands between abx and the registry to cut it off (fault injection): closing
it refuses every connection, as a registry that went down does.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from service.settings import PROJECT_ROOT
from tests.conftest import free_port

MLFLOW = os.environ.get("ABX_TEST_MLFLOW") or str(PROJECT_ROOT / ".venv-mlflow" / "bin" / "mlflow")
START_SECONDS = 180.0


@dataclass
class MlflowServer:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def client(self):  # type: ignore[no-untyped-def]
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.url, registry_uri=self.url)

    def register(self, name: str, files: list[Path]) -> list[str]:
        """Register each ONNX file as the next version of ``name``; their version numbers."""
        client = self.client()
        experiment = client.get_experiment_by_name("abx-tests")
        experiment_id = (
            experiment.experiment_id if experiment else client.create_experiment("abx-tests")
        )
        run = client.create_run(experiment_id)
        client.create_registered_model(name)
        versions = []
        for index, path in enumerate(files):
            client.log_artifact(run.info.run_id, str(path), f"model-{index}")
            source = f"{run.info.artifact_uri}/model-{index}"
            created = client.create_model_version(
                name, source, run.info.run_id, await_creation_for=0
            )
            versions.append(str(created.version))
        client.set_terminated(run.info.run_id)
        return versions

    def alias(self, name: str, alias: str) -> str | None:
        try:
            return str(self.client().get_model_version_by_alias(name, alias).version)
        except Exception as error:  # no such alias
            if "RESOURCE_DOES_NOT_EXIST" in str(error) or "not found" in str(error).lower():
                return None
            raise


def start_mlflow(folder: Path) -> MlflowServer:
    if shutil.which(MLFLOW) is None:
        pytest.fail(
            f"no MLflow server at {MLFLOW}: run scripts/bootstrap test (it makes .venv-mlflow)"
            " or set ABX_TEST_MLFLOW to an mlflow executable"
        )
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = folder / "mlflow.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [MLFLOW, "server", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
             "--artifacts-destination", str(folder / "artifacts"),
             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, cwd=folder,
            # No job runner (huey): the registry needs none, and it is one process less.
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )  # fmt: skip
    server = MlflowServer(f"http://127.0.0.1:{port}", process, log_path)
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"mlflow server exited:\n{log_path.read_text(errors='replace')}")
        try:
            if requests.get(f"{server.url}/health", timeout=0.5).status_code == 200:
                return server
        except requests.RequestException:
            time.sleep(0.2)
    process.kill()
    pytest.fail(f"mlflow server did not start:\n{log_path.read_text(errors='replace')}")


def stop_mlflow(server: MlflowServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(20)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """One registry per test module (it takes seconds to start); tests use their own names."""
    server = start_mlflow(tmp_path_factory.mktemp("mlflow"))
    yield server
    stop_mlflow(server)


class Forwarder:
    """A TCP port that forwards to ``target_port`` until closed, then refuses connections."""

    def __init__(self, target_port: int) -> None:
        self._target = ("127.0.0.1", target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self._target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._closed:
                    client.close()
                    upstream.close()
                    return
                self._open += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
            self._listener.close()
            for end in self._open:
                end.close()
