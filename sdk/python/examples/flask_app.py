"""A Flask app that assigns with abx-client: ABX_URL and ABX_TOKEN name the server and key.

ABX_URL=http://127.0.0.1:8000 ABX_TOKEN=abx_live_... flask --app flask_app run
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, request

from abx_client import Client

app = Flask(__name__)
abx = Client(os.environ.get("ABX_URL", "http://127.0.0.1:8000"), os.environ["ABX_TOKEN"])


@app.get("/checkout/<user>")
def checkout(user: str) -> dict[str, Any]:
    attributes = {"country": request.args.get("country", "US"),
                  "app_version": request.args.get("app_version", "2.1.0")}  # fmt: skip
    assignment = abx.assign("checkout_ranker", user, attributes, default="production")
    return {"user": user, "ranker": assignment.variant, "reason": assignment.reason}


@app.post("/checkout/<user>/converted")
def converted(user: str) -> dict[str, Any]:
    return {"event_id": abx.track(user, "checkout_conversion", 1)}


if __name__ == "__main__":
    app.run(port=int(os.environ.get("PORT", "5000")))
