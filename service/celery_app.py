"""The Celery application: broker from ``ABX_BROKER_URL`` (RabbitMQ or Redis), else a folder.

With no broker configured, kombu's ``filesystem://`` transport passes messages
through files under ``ABX_DATA_DIR/broker``: real worker processes, nothing to
install, not for production.

Every task published while a request (or another task) is handled carries its request id
in a ``request_id`` header; the task binds it to its log context, so the lines and the
webhooks a request causes share its id. Celery's own logging setup is replaced by abx's
(one JSON object per line).
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery, signals

from service.observability.exposition import mark_dead
from service.observability.logging import (
    configure_logging,
    current_request_id,
    end_context,
    start_context,
)
from service.settings import Settings

REQUEST_ID_TASK_HEADER = "request_id"


def broker_settings(settings: Settings) -> tuple[str, dict[str, Any]]:
    if settings.broker_url:
        return settings.broker_url, {}
    folder = (settings.data_dir / "broker").resolve()
    queue, processed, control = folder / "queue", folder / "processed", folder / "control"
    for path in (queue, processed, control):
        path.mkdir(parents=True, exist_ok=True)
    options = {
        "data_folder_in": str(queue),
        "data_folder_out": str(queue),
        "processed_folder": str(processed),
        # the exchange bindings; kombu's default is the working directory
        "control_folder": str(control),
        "store_processed": False,
    }
    return "filesystem://", options


def make_celery(settings: Settings) -> Celery:
    broker, options = broker_settings(settings)
    app = Celery("abx", broker=broker, include=["service.decisions.tasks", "service.jobs.tasks"])
    app.conf.update(
        broker_transport_options=options,
        broker_connection_retry_on_startup=True,
        task_acks_late=True,  # a task whose worker dies is delivered again
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_default_queue=settings.queue,
        beat_schedule={
            "analyze-running-experiments": {
                "task": "abx.analyze_all",
                "schedule": settings.analysis_interval_seconds,
            },
            "redeliver-webhooks": {"task": "abx.redeliver_webhooks", "schedule": 60.0},
            "resume-score-jobs": {"task": "abx.resume_score_jobs", "schedule": 60.0},
        },
    )
    return app


app = make_celery(Settings())


def _configure_logging(**_: Any) -> None:
    settings = Settings()
    configure_logging(settings.log_format, settings.log_level, settings.log_units)


def _carry_request_id(headers: dict[str, Any] | None = None, **_: Any) -> None:
    request_id = current_request_id()
    if headers is not None and request_id and REQUEST_ID_TASK_HEADER not in headers:
        headers[REQUEST_ID_TASK_HEADER] = request_id


def _bind_task_context(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    carried = getattr(task.request, REQUEST_ID_TASK_HEADER, None) if task is not None else None
    start_context(request_id=carried or task_id, task=getattr(task, "name", None))


def _end_task_context(**_: Any) -> None:
    end_context()


def _drop_live_gauges(**_: Any) -> None:
    mark_dead(os.getpid())


signals.setup_logging.connect(_configure_logging)
signals.before_task_publish.connect(_carry_request_id)
signals.task_prerun.connect(_bind_task_context)
signals.task_postrun.connect(_end_task_context)
signals.worker_process_shutdown.connect(_drop_live_gauges)
