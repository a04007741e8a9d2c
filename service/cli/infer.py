"""``abx infer``: the inference process (``service/inference/process.py``).

Lean on purpose: ``abx serve``'s supervisor starts it as ``python -m service.cli.infer``,
which imports neither the web stack nor the stores (a restart is an outage's length).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time

import click

from service.settings import Settings


def _exit_with_parent(parent: int) -> None:
    """Stop when the process that started us is gone (it may have been SIGKILLed)."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGTERM)


def _stop(signum: int, frame: object) -> None:
    raise SystemExit(0)


@click.command()
@click.option("--socket", "socket_path", help="Unix socket (default: ABX_INFERENCE_SOCKET).")
@click.option(
    "--bind", help="Also serve the Open Inference Protocol (KServe v2 REST) on HOST:PORT."
)
@click.option(
    "--model",
    "models",
    multiple=True,
    help="A model file under ABX_MODELS to load at start (repeat); others load on first use.",
)
@click.option(
    "--providers",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="auto: CUDA when it measures faster, as the workers choose.",
)
@click.option("--max-batch", type=int, help="Rows per run (default: ABX_BATCH_MAX_SIZE).")
@click.option(
    "--threads", type=int, help="onnxruntime threads (default: ABX_MODEL_THREADS or all cores)."
)
@click.option(
    "--metrics-bind",
    help="Serve this process's Prometheus metrics on HOST:PORT (for abx infer on its own).",
)
@click.option("--parent-pid", type=int, hidden=True)
def infer(
    socket_path: str | None,
    bind: str | None,
    metrics_bind: str | None,
    models: tuple[str, ...],
    providers: str,
    max_batch: int | None,
    threads: int | None,
    parent_pid: int | None,
) -> None:
    """Serve models to every worker of this host from one process (one per GPU).

    With --bind, every *.onnx file at the top of ABX_MODELS is served by its stem and
    reloaded when it changes (checked every ABX_RELOAD_POLL_SECONDS).
    """
    from service.inference.host import LoadError, ModelHost
    from service.inference.process import serve
    from service.inference.providers import CPU, CUDA
    from service.observability import metrics

    settings = Settings()
    if bind is None and socket_path is None:
        socket_path = settings.inference_socket_path
    chosen = {"auto": None, "cpu": [CPU], "cuda": [CUDA, CPU]}[providers]
    host = ModelHost(
        settings.models,
        threads or settings.model_threads or os.cpu_count() or 1,
        max_batch or settings.batch_max_size,
        settings.batch_max_wait_ms / 1000,
        chosen,
        observe=lambda name: metrics.BATCH_SIZE.labels(name).observe,
    )
    for relative in models:
        try:
            hosted = host.load_file(relative)
        except LoadError as error:
            click.echo(f"cannot load {relative}: {error}", err=True)
            sys.exit(1)
        click.echo(f"loaded {relative} on {hosted.model.provider}", err=True)
    if metrics_bind is not None:
        from prometheus_client import start_http_server

        from service.observability.exposition import parse_bind

        try:
            metrics_host, metrics_port = parse_bind(metrics_bind)
            start_http_server(metrics_port, metrics_host)
        except (ValueError, OSError) as error:
            click.echo(f"--metrics-bind: {error}", err=True)
            sys.exit(2)
    http = None
    if bind is not None:
        from service.inference.folder import ModelFolder
        from service.inference.oip import http_server

        try:
            http = http_server(
                bind, host, settings.inference_token,
                max_connections=settings.inference_max_connections,
                read_timeout_seconds=settings.inference_read_timeout_seconds,
            )  # fmt: skip
        except ValueError as error:
            click.echo(str(error), err=True)
            sys.exit(2)

        def report(name: str, outcome: str) -> None:
            metrics.INFERENCE_MODEL_RELOADS.labels(name, outcome).inc()
            metrics.INFERENCE_MODEL_RELOAD_BROKEN.labels(name).set(outcome == "failed")

        # Every model of the folder is loaded before the server answers (the port is bound
        # above, so a bad --bind fails before the models load).
        folder = ModelFolder(host, settings.reload_poll_seconds, report)
        folder.scan(settled=True)
        if settings.reload_poll_seconds > 0:
            folder.start()
    signal.signal(signal.SIGTERM, _stop)
    if parent_pid is not None:
        threading.Thread(target=_exit_with_parent, args=(parent_pid,), daemon=True).start()
    with contextlib.suppress(KeyboardInterrupt):
        serve(host, socket_path, http)


if __name__ == "__main__":
    from service.observability.logging import configure_logging

    _settings = Settings()
    configure_logging(_settings.log_format, _settings.log_level, _settings.log_units)
    infer(prog_name="abx infer")
