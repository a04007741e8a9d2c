"""A bare Flask JSON endpoint: the floor that ``/v1/assign`` is measured against.

``POST /v1/assign`` here reads the JSON body and answers a dict of the same
shape as abx's, with no validation, assignment, stickiness or logging. It is
served by ``AbxServer`` itself with only ``load()`` replaced, so worker class,
workers, threads, keep-alive and timeouts are exactly abx's (``assign_http.py``
starts it; ``ABX_THREADS`` applies as it does to ``abx serve``).

Run: ``python benchmarks/bare_app.py --bind 127.0.0.1:8001 [--workers N]``.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import common  # noqa: F401  (puts the repository root on sys.path)
from flask import Flask, request

from service.server import AbxServer
from service.settings import Settings


def create_bare_app() -> Flask:
    app = Flask("abx-bare")
    app.json.sort_keys = False  # type: ignore[attr-defined]  # as abx's app does

    @app.post("/v1/assign")
    def assign() -> dict[str, Any]:
        body = json.loads(request.get_data(cache=False))
        return {
            "experiment": body.get("experiment"),
            "variant": "control",
            "reason": "hashed",
            "in_experiment": True,
        }

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok"}

    return app


class BareServer(AbxServer):
    """abx's gunicorn settings, serving the bare app."""

    def load(self) -> Any:
        return create_bare_app()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bind", default="127.0.0.1:8001", help="HOST:PORT")
    parser.add_argument("--workers", type=int, help="gunicorn workers (default: as abx serve)")
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {"bind": args.bind}
    if args.workers is not None:
        overrides["workers"] = args.workers
    BareServer(Settings(**overrides)).run()


if __name__ == "__main__":
    main()
