"""A plain WSGI app (no framework) that assigns with abx-client, on the standard library's
server: ABX_URL and ABX_TOKEN name the abx server and key, PORT the port to serve.

    ABX_URL=http://127.0.0.1:8000 ABX_TOKEN=abx_live_... PORT=8080 python wsgi_app.py
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from abx_client import Client

abx = Client(os.environ.get("ABX_URL", "http://127.0.0.1:8000"), os.environ["ABX_TOKEN"])


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    user = environ.get("PATH_INFO", "/").strip("/") or "anonymous"
    assignment = abx.assign("search_reranker", user, {"platform": "ios"}, default="baseline")
    if environ["REQUEST_METHOD"] == "POST":
        abx.track(user, "search_click", 1, experiment="search_reranker")
    body = json.dumps({"user": user, "variant": assignment.variant,
                       "reason": assignment.reason, "ready": abx.ready}).encode()  # fmt: skip
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


if __name__ == "__main__":
    with make_server("127.0.0.1", int(os.environ.get("PORT", "8080")), app,
                     handler_class=QuietHandler) as server:  # fmt: skip
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            abx.close()  # flush exposures and events before leaving
