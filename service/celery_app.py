"""The Celery application: broker from ``ABX_BROKER_URL`` (RabbitMQ or Redis), else a folder.

With no broker configured, kombu's ``filesystem://`` transport passes messages
through files under ``ABX_DATA_DIR/broker``: real worker processes, nothing to
install, not for production.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from service.settings import Settings


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
    app = Celery("abx", broker=broker, include=["service.decisions.tasks"])
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
        },
    )
    return app


app = make_celery(Settings())
