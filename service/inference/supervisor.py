"""``abx serve`` runs the inference process beside its workers, and restarts it when it dies.

The process is ``abx infer`` in a child process of the gunicorn master, told the master's pid
so that it exits when the master is gone however it went (SIGKILL included). When it dies the
workers answer from their fallbacks (``runner.py``) while this thread starts a new one, after
a back-off that doubles while it keeps dying young (0.1 s to 5 s).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence

from service.background import BackgroundThread
from service.inference.wire import InferenceClient, TransportError

log = logging.getLogger(__name__)

HEALTHY_SECONDS = 10.0
"""A process that lived this long resets the back-off."""


def device_count(configured: int, nvidia_smi: str = "nvidia-smi") -> int:
    """Inference processes to run: ``configured``, or one per GPU ``nvidia-smi -L`` lists."""
    if configured > 0:
        return configured
    try:
        listed = subprocess.run(
            [nvidia_smi, "-L"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return 1
    return max(1, sum(line.startswith("GPU ") for line in listed.splitlines()))


class Supervisor(BackgroundThread):
    def __init__(
        self,
        socket_path: str,
        models: Sequence[str],
        extra: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__("abx-inference-supervisor")
        self.env = {**os.environ, **env} if env else None
        self.socket_path = socket_path
        self._command = [
            sys.executable, "-m", "service.cli.infer",
            "--socket", socket_path, "--parent-pid", str(os.getpid()),
            *[arg for model in models for arg in ("--model", model)], *extra,
        ]  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._lock = threading.Lock()
        self._wake_event = threading.Event()

    def wait_ready(self, timeout: float) -> bool:
        """Whether the process answers within ``timeout`` seconds (its models loaded)."""
        client = InferenceClient(self.socket_path)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                client.call({"op": "ping"}, {}, 1.0)
                return True
            except (TransportError, TimeoutError):
                time.sleep(0.05)
            finally:
                client.close()
        return False

    def _run(self) -> None:
        from service.observability import metrics

        backoff = 0.1
        while not self.stopping:
            started = time.monotonic()
            with self._lock:
                if self.stopping:
                    return
                self.process = subprocess.Popen(self._command, env=self.env)
                self.starts += 1
            log.info("inference process started (pid %s)", self.process.pid)
            code = self.process.wait()
            if self.stopping:
                return
            metrics.INFERENCE_RESTARTS.inc()
            backoff = 0.1 if time.monotonic() - started > HEALTHY_SECONDS else min(backoff * 2, 5)
            log.error(
                "inference process %s exited with %s; restarting in %.1f s",
                self.process.pid,
                code,
                backoff,
            )
            self._wake_event.wait(backoff)

    def _wake(self) -> None:
        self._wake_event.set()
        with self._lock:
            process = self.process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
