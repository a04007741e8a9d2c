"""The error hierarchy: every class maps to its status and renders as a problem document."""

from __future__ import annotations

import pytest
from flask import Flask

from service import errors
from service.api import problems


def all_error_classes() -> list[type[errors.AbxError]]:
    found: list[type[errors.AbxError]] = []
    pending: list[type[errors.AbxError]] = [errors.AbxError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


EXPECTED_STATUS = {
    "AbxError": 500,
    "BadRequest": 400,
    "MalformedJson": 400,
    "Unauthorized": 401,
    "Forbidden": 403,
    "TooManyRequests": 429,
    "NotFound": 404,
    "UnknownExperiment": 404,
    "UnknownHoldout": 404,
    "MethodNotAllowed": 405,
    "Conflict": 409,
    "PayloadTooLarge": 413,
    "UnsupportedMediaType": 415,
    "InvalidRequest": 422,
    "ServiceUnavailable": 503,
    "InputMismatch": 422,
    "ModelUnavailable": 503,
}


def test_every_error_class_has_a_status() -> None:
    assert {cls.__name__: cls.status for cls in all_error_classes()} == EXPECTED_STATUS


def test_hierarchy_is_drawn_in_the_docstring() -> None:
    for cls in all_error_classes():
        assert f"{cls.__name__} ({cls.status} {cls.slug})" in (errors.__doc__ or "")


@pytest.mark.parametrize("cls", all_error_classes(), ids=lambda c: c.__name__)
def test_each_error_renders_as_problem_json(cls: type[errors.AbxError]) -> None:
    app = Flask("t")
    problems.init_app(app)

    @app.get("/boom")
    def boom() -> None:
        raise cls("what went wrong", [{"field": "x", "message": "y"}])

    response = app.test_client().get("/boom")
    assert response.status_code == cls.status
    assert response.mimetype == "application/problem+json"
    assert response.get_json() == {
        "type": f"https://abx.dev/problems/{cls.slug}",
        "title": cls.title,
        "status": cls.status,
        "detail": "what went wrong",
        "errors": [{"field": "x", "message": "y"}],
    }


def test_an_unexpected_exception_is_a_bare_500() -> None:
    app = Flask("t")
    problems.init_app(app)

    @app.get("/crash")
    def crash() -> None:
        raise ZeroDivisionError("secret internals")

    response = app.test_client().get("/crash")
    assert response.status_code == 500
    assert response.get_json()["detail"] == "The server failed to handle this request."
    assert "secret internals" not in response.get_data(as_text=True)
