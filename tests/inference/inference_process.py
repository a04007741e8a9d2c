"""Start a real ``abx infer`` for a test: a short socket path, an optional OIP bind."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

from service.inference.wire import InferenceClient, TransportError
from service.settings import PROJECT_ROOT

START_SECONDS = float(os.environ.get("ABX_TEST_SERVER_START_SECONDS", "120"))


def short_socket_dir() -> Path:
    """A folder for a Unix socket: pytest's own paths can pass the 107-byte limit."""
    return Path(tempfile.mkdtemp(prefix="abx-i-", dir="/tmp"))


@dataclass
class InferProcess:
    process: subprocess.Popen[bytes]
    socket: str
    url: str | None
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def client(self) -> InferenceClient:
        return InferenceClient(self.socket, connect_timeout=1.0)


def _answers(infer: InferProcess) -> bool:
    client = infer.client()
    try:
        client.call({"op": "ping"}, {}, 1.0)
    except (TransportError, TimeoutError):
        return False
    finally:
        client.close()
    if infer.url is None:
        return True
    try:
        return requests.get(f"{infer.url}/v2/health/live", timeout=1).status_code == 200
    except requests.RequestException:
        return False


@contextmanager
def running_infer(
    models_root: Path, log_path: Path, *args: str, port: int | None = None, **env: str
) -> Iterator[InferProcess]:
    folder = short_socket_dir()
    socket_path = str(folder / "infer.sock")
    bind = ["--bind", f"127.0.0.1:{port}"] if port else []
    log_file = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "infer", "--socket", socket_path, *bind, *args],
        env={**os.environ, "ABX_MODELS": str(models_root), "ABX_LOG_FORMAT": "json", **env},
        stdout=log_file,
        stderr=subprocess.STDOUT,
        cwd=PROJECT_ROOT,
    )
    url = f"http://127.0.0.1:{port}" if port else None
    infer = InferProcess(process, socket_path, url, log_path)
    try:
        deadline = time.monotonic() + START_SECONDS
        while not _answers(infer):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"abx infer did not start:\n{infer.log()}")
            time.sleep(0.1)
        yield infer
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log_file.close()
        shutil.rmtree(folder, ignore_errors=True)
