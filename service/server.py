"""Run the app under gunicorn with a worker layout chosen for the machine."""

from __future__ import annotations

from typing import Any

from gunicorn.app.base import BaseApplication

from service.settings import Settings, default_workers


def _close_runtime(server: Any, worker: Any) -> None:
    app = getattr(worker, "wsgi", None)
    runtime = getattr(app, "extensions", {}).get("abx") if app is not None else None
    if runtime is not None:
        runtime.close()  # graceful shutdown: flush buffered assignments and exposures


class AbxServer(BaseApplication):  # type: ignore[misc]
    """gunicorn without a config file: every worker builds its own app (no preload, so the
    writer and state threads start in the worker, after the fork)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        options = {
            "bind": self.settings.bind,
            "workers": self.settings.workers or default_workers(),
            "worker_class": "gthread",
            "threads": self.settings.threads,
            "keepalive": 5,
            "graceful_timeout": 10,
            "timeout": 30,
            "accesslog": None,
            "worker_exit": _close_runtime,
            "control_socket_disable": True,  # several servers may run side by side
        }
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from service.app import create_app

        return create_app(self.settings)
