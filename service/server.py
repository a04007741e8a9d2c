"""Run the app under gunicorn with a worker layout chosen for the machine.

The master process also serves the workers' metrics on ``ABX_METRICS_BIND``
(``service/observability/exposition.py`` says why there) and logs, like the workers,
one JSON object per line.

A master that is SIGKILLed leaves its workers behind: they notice within a second that their
parent changed, then finish their connections for up to the graceful timeout. So that a new
``abx serve`` can bind at once, a worker closes its listening sockets as soon as it notices
(``AbxWorker``), and never holds the metrics exporter's socket, which it would otherwise
inherit at fork; a new master still waits up to ``BIND_WAIT_SECONDS`` for each address.
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import socket
import time
from collections.abc import Callable
from typing import Any, TypeVar

from gunicorn import glogging
from gunicorn.app.base import BaseApplication
from gunicorn.workers.gthread import ThreadWorker

from service.observability.exposition import (
    Exporter,
    enable_multiprocess,
    mark_dead,
    parse_bind,
    start_exporter,
)
from service.observability.logging import configure_logging, get_logger
from service.settings import Settings, default_workers

log = get_logger(__name__)
GRACEFUL_TIMEOUT_SECONDS = 10
BIND_WAIT_SECONDS = GRACEFUL_TIMEOUT_SECONDS + 5
"""How long a new master waits for an address a killed master's workers may still hold."""
T = TypeVar("T")


class AbxWorker(ThreadWorker):  # type: ignore[misc]
    """gunicorn's gthread worker that lets go of the listening sockets once its master is gone.

    gunicorn keeps them open through the graceful shutdown (up to the graceful timeout), which
    after a SIGKILLed master keeps the next one from binding. The connections in flight are
    still finished; only new ones go to the next master.
    """

    def is_parent_alive(self) -> bool:
        if super().is_parent_alive():
            return True
        self.set_accept_enabled(False)
        for listener in self.sockets:
            listener.close()
        return False


def _retry_while_in_use(bind: Callable[[], T], seconds: float, what: str) -> T:
    """``bind()``, retried while its address is in use, for at most ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return bind()
        except OSError as error:
            if error.errno != errno.EADDRINUSE or time.monotonic() >= deadline:
                raise
            log.warning("address in use, retrying (a killed server's workers?)", bind=what)
            time.sleep(0.25)


def _probe_bind(bind: str) -> None:
    """Bind ``bind`` (HOST:PORT) once and let go: raises OSError while it is taken."""
    host, port = parse_bind(bind)
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds
        probe.bind((host, port))
        probe.listen(1)


def _close_runtime(server: Any, worker: Any) -> None:
    app = getattr(worker, "wsgi", None)
    runtime = getattr(app, "extensions", {}).get("abx") if app is not None else None
    if runtime is not None:
        runtime.close()  # graceful shutdown: flush buffered assignments and exposures


def _watch_worker(worker: Any) -> None:
    state = getattr(worker, "wsgi", None) and worker.wsgi.extensions.get("abx.sdk")
    if state is not None:
        state.worker_alive = lambda: worker.alive  # SDK streams end when the worker stops


def _worker_exited(server: Any, worker: Any) -> None:
    mark_dead(worker.pid)  # its live gauges (in flight, buffered rows) leave the sums


class StructuredLogger(glogging.Logger):  # type: ignore[misc]
    """gunicorn's own lines (start, workers booted and lost) through the root handler."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for logger in (self.error_log, self.access_log):
            for handler in list(logger.handlers):
                logger.removeHandler(handler)
            logger.propagate = True


class AbxServer(BaseApplication):  # type: ignore[misc]
    """gunicorn without a config file: every worker builds its own app (no preload, so the
    writer and state threads start in the worker, after the fork)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.exporter: Exporter | None = None
        self.supervisors: list[Any] = []
        self._master_pid = os.getpid()
        configure_logging(settings.log_format, settings.log_level, settings.log_units)
        self._metrics_dir = (
            enable_multiprocess(settings.metrics_dir) if settings.metrics_bind else None
        )
        super().__init__()

    def load_config(self) -> None:
        options = {
            "bind": self.settings.bind,
            "workers": self.settings.workers or default_workers(),
            "worker_class": AbxWorker,
            "threads": self.settings.threads,
            "keepalive": 5,
            "graceful_timeout": GRACEFUL_TIMEOUT_SECONDS,
            "timeout": 30,
            "accesslog": None,  # the app writes the access log, with the request id
            "logger_class": StructuredLogger,
            "loglevel": self.settings.log_level.lower(),
            "post_fork": lambda server, worker: self._drop_exporter_socket(),
            "post_worker_init": _watch_worker,
            "worker_exit": _close_runtime,
            "child_exit": _worker_exited,
            "on_exit": lambda server: self._close_all(),
            "control_socket_disable": True,  # several servers may run side by side
        }
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from service.app import create_app

        return create_app(self.settings)

    def _place_models(self) -> None:
        """Measure where each model runs; start the inference process if any runs there."""
        import onnxruntime as ort

        from service.experiments.model_refs import resolve_model_path
        from service.experiments.model_registry import count_resolutions, model_registry
        from service.experiments.validation import load_experiments
        from service.inference.placement import place_models
        from service.inference.supervisor import Supervisor, device_count

        settings = self.settings
        registry = model_registry(settings.mlflow_tracking_uri, settings.models)
        count_resolutions(registry)
        loaded = load_experiments([settings.experiments], settings.models, registry)
        files = [  # endpoints run elsewhere: nothing to place
            v.model
            for item in loaded.experiments
            for v in item.experiment.variants
            if v.model is not None and v.model.path is not None and v.model.sha256 is not None
        ]
        paths = {ref.sha256: ref.path for ref in files if ref.sha256 and ref.path}
        refs = [
            (resolve_model_path(settings.models, path) or settings.models, sha, ref.providers)
            for ref in files
            if (path := ref.path) is not None and (sha := ref.sha256) is not None
        ]
        available = ort.get_available_providers()
        arguments = (
            refs,
            settings.inference,
            settings.workers or default_workers(),
            settings.threads,
            settings.batch_max_size,
            os.cpu_count() or 1,
            available,
        )
        if settings.inference == "auto" and "CUDAExecutionProvider" in available:
            # Measure in a spawned process: a CUDA context made here, in the master, would be
            # inherited broken by every worker gunicorn forks.
            with multiprocessing.get_context("spawn").Pool(1) as pool:
                placed = pool.apply(place_models, arguments)
        else:
            placed = place_models(*arguments)
        for sha, placement in placed.items():
            log.info(
                "model placed", model=paths[sha], runs_in=placement.where, reason=placement.reason
            )
        devices = device_count(settings.inference_devices)
        self.settings = settings.model_copy(
            update={
                "placements": {sha: p.as_dict() for sha, p in placed.items()},
                "inference_devices": devices,
            }
        )
        in_process = sorted({paths[sha] for sha, p in placed.items() if p.where == "process"})
        if in_process or settings.inference == "process":
            # One process per GPU, each seeing only its own; each worker uses one of them.
            self.supervisors = [
                Supervisor(
                    settings.inference_socket_for(device),
                    in_process,
                    env={"CUDA_VISIBLE_DEVICES": str(device)} if devices > 1 else None,
                )
                for device in range(devices)
            ]
            for supervisor in self.supervisors:
                supervisor.start()
            for supervisor in self.supervisors:
                if not supervisor.wait_ready(60):
                    log.error(
                        "an inference process is not answering yet; workers fall back",
                        socket=supervisor.socket_path,
                    )

    def run(self) -> None:
        self._place_models()
        if self._metrics_dir is not None:
            bind = self.settings.metrics_bind
            directory, owns = self._metrics_dir, self.settings.metrics_dir is None
            try:
                self.exporter = _retry_while_in_use(
                    lambda: start_exporter(bind, directory, owns_directory=owns),
                    BIND_WAIT_SECONDS,
                    bind,
                )
            except OSError as error:
                raise SystemExit(
                    f"cannot serve metrics on ABX_METRICS_BIND={bind}: {error}"
                ) from None
            log.info("serving metrics", url=self.exporter.url)
        if not self.settings.bind.startswith(("unix:", "fd://")):
            try:
                _retry_while_in_use(
                    lambda: _probe_bind(self.settings.bind), BIND_WAIT_SECONDS, self.settings.bind
                )
            except (OSError, ValueError) as error:
                log.warning("bind not checked ahead", bind=self.settings.bind, error=str(error))
        try:
            super().run()
        finally:
            self._close_supervisor()
            self._close_exporter()

    def _drop_exporter_socket(self) -> None:
        """In a new worker: close the exporter's socket inherited at fork (the master serves it)."""
        if self.exporter is not None and os.getpid() != self._master_pid:
            self.exporter._server.socket.close()

    def _close_all(self) -> None:
        self._close_supervisor()
        self._close_exporter()

    def _close_supervisor(self) -> None:
        if os.getpid() == self._master_pid:
            supervisors, self.supervisors = self.supervisors, []
            for supervisor in supervisors:
                supervisor.close()

    def _close_exporter(self) -> None:
        # A worker leaves gunicorn by raising SystemExit through this same stack: only the
        # master owns the exporter and its folder.
        if self.exporter is not None and os.getpid() == self._master_pid:
            exporter, self.exporter = self.exporter, None
            exporter.close()
