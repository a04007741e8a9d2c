"""Export the metrics of a family of processes from their parent, on a bind of its own.

gunicorn workers and Celery's prefork children each write their values to files in
one folder (prometheus-client's multiprocess mode). The parent process (the gunicorn
master, the Celery main process) serves ``/metrics`` from that folder on
``ABX_METRICS_BIND`` / ``ABX_WORKER_METRICS_BIND``: a scrape takes no request thread
from a worker, still answers when every worker is busy or stuck, and needs no API key
because it never listens where the API does. The folder is emptied when the parent
starts (values of a previous run would be summed in otherwise) and a dead child's live
gauges are dropped (``mark_dead``); counters of dead children stay in the sums, as
counters must.

Multiprocess mode is chosen by ``PROMETHEUS_MULTIPROC_DIR`` before the first metric is
built, so ``enable_multiprocess`` runs in the parent before the children fork and before
``service.observability.metrics`` is imported.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def parse_bind(bind: str) -> tuple[str, int]:
    """``HOST:PORT`` (loopback by default for a bare ``:PORT``) as a socket address."""
    host, separator, port = bind.rpartition(":")
    if not separator or not port.isdigit():
        raise ValueError(f"a metrics bind is HOST:PORT, not {bind!r}")
    return (host.strip("[]") or "127.0.0.1"), int(port)


def enable_multiprocess(directory: Path | None) -> Path:
    """Point prometheus-client at an emptied ``directory`` (a new temporary one when None).

    Refuses when the metrics were already built in this process: they would keep counting
    in memory, where the exporter never looks.
    """
    if "service.observability.metrics" in sys.modules:
        raise RuntimeError(
            "enable_multiprocess must run before service.observability.metrics is imported"
        )
    if directory is None:
        directory = Path(tempfile.mkdtemp(prefix="abx-metrics-"))
    else:
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
    os.environ[MULTIPROC_ENV] = str(directory)
    if "prometheus_client.values" in sys.modules:  # imported, but no metric built yet
        from prometheus_client import values

        values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    return directory


def mark_dead(pid: int) -> None:
    """Drop the live gauges of a child that exited (gunicorn's ``child_exit``)."""
    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


def multiprocess_registry(directory: Path) -> Any:
    """A registry that reads every process's values from ``directory`` at each scrape."""
    from prometheus_client import CollectorRegistry, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, str(directory))  # type: ignore[no-untyped-call]
    return registry


def render(registry: Any) -> bytes:
    """The registry in Prometheus' text format (what ``/metrics`` answers)."""
    from prometheus_client import generate_latest

    return bytes(generate_latest(registry))


@dataclass
class Exporter:
    """The ``/metrics`` server of a family of processes."""

    address: tuple[str, int]
    directory: Path
    _server: Any
    _thread: threading.Thread
    _owns_directory: bool

    @property
    def url(self) -> str:
        return f"http://{self.address[0]}:{self.address[1]}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5.0)
        if self._owns_directory:
            shutil.rmtree(self.directory, ignore_errors=True)


def start_exporter(bind: str, directory: Path, owns_directory: bool = False) -> Exporter:
    """Serve the folder's metrics on ``bind`` from a daemon thread; OSError if it is taken."""
    from prometheus_client import start_http_server

    host, port = parse_bind(bind)
    server, thread = start_http_server(port, host, multiprocess_registry(directory))
    address = server.server_address
    return Exporter((str(address[0]), int(address[1])), directory, server, thread, owns_directory)
