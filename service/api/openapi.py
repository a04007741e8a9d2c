"""The OpenAPI description, served as written (service/api/openapi.yaml)."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import yaml
from flask import Blueprint, Response

bp = Blueprint("openapi", __name__)
OPENAPI_PATH = Path(__file__).resolve().parent / "openapi.yaml"


@cache
def openapi_document() -> dict[str, Any]:
    """Parsed once per process (every worker reads it at start: libyaml's parser when there)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    document: dict[str, Any] = yaml.load(OPENAPI_PATH.read_text("utf-8"), Loader=loader)
    return document


@bp.get("/openapi.yaml")
def openapi_yaml() -> Response:
    return Response(OPENAPI_PATH.read_text("utf-8"), mimetype="application/yaml")


@bp.get("/openapi.json")
def openapi_json() -> dict[str, Any]:
    return openapi_document()
