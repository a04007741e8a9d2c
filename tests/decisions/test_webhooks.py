"""Webhooks per the Standard Webhooks spec: real deliveries to the receiver in
docs/webhooks.md, which verifies them and refuses replays and forgeries; rotation; secrets."""

from __future__ import annotations

import re
import threading
import types
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
from standardwebhooks.webhooks import Webhook
from werkzeug.serving import make_server

from service.decisions.actions import act
from service.decisions.webhooks import (
    WebhookSecretError,
    check_secrets,
    deliver_once,
    new_secret,
    signature_headers,
)
from service.experiments.validation import load_experiments
from service.settings import PROJECT_ROOT
from tests.conftest import ServerFactory, free_port
from tests.decisions.test_e2e import SECRET, decision_experiment
from tests.experiment_files import write_experiment

DOC = PROJECT_ROOT / "docs" / "webhooks.md"


class DocReceiver:
    """The receiver of docs/webhooks.md, run as written on a real HTTP server."""

    def __init__(self, secrets: str, monkeypatch: pytest.MonkeyPatch) -> None:
        code = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
        assert len(code) == 1
        monkeypatch.setenv("ABX_WEBHOOK_SECRET", secrets)
        self.module = types.ModuleType("doc_receiver")
        exec(compile(code[0], str(DOC), "exec"), self.module.__dict__)
        self.handled: list[dict[str, Any]] = []
        self.raw: list[tuple[dict[str, str], bytes]] = []
        self.module.handle = self.handled.append  # what the receiver does with a decision
        app = self.module.app

        @app.before_request
        def _capture() -> None:
            from flask import request

            self.raw.append((dict(request.headers), request.get_data()))

        self.server = make_server("127.0.0.1", free_port(), app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}/abx-webhook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def post(self, headers: dict[str, str], body: bytes) -> requests.Response:
        return requests.post(self.url, data=body, headers=headers, timeout=5)


@pytest.fixture
def receiver_factory(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    started: list[DocReceiver] = []

    def start(secrets: str) -> DocReceiver:
        receiver = DocReceiver(secrets, monkeypatch)
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        receiver.server.shutdown()


def _deliveries(db: str, tmp_path: Path, url: str) -> tuple[Any, list[str]]:
    folder = tmp_path / "experiments"
    write_experiment(folder, decision_experiment("lift", url))
    experiment = load_experiments([folder]).experiments[0].experiment
    conn = psycopg.connect(db, autocommit=True)
    _, _, deliveries = act(conn, experiment, "pause", None, "key:ops", "<b>checking</b>")
    return conn, deliveries


def test_the_documented_receiver_verifies_and_refuses_replays_and_forgeries(
    db: str, tmp_path: Path, receiver_factory: Any
) -> None:
    receiver = receiver_factory(SECRET)
    conn, deliveries = _deliveries(db, tmp_path, receiver.url)
    with conn:
        assert deliver_once(conn, deliveries[0], [SECRET], timeout=5) is True
    assert [d["kind"] for d in receiver.handled] == ["pause"]
    assert receiver.handled[0]["actor"] == "key:ops"
    headers, body = receiver.raw[0]
    assert headers["Webhook-Id"] == deliveries[0]
    assert abs(int(headers["Webhook-Timestamp"]) - datetime.now(UTC).timestamp()) < 30
    assert headers["Webhook-Signature"].startswith("v1,")
    assert Webhook(SECRET).verify(body, headers)["decision_id"]  # the reference library agrees

    replay = receiver.post(headers, body)  # the same request again, within the tolerance
    assert replay.status_code == 200 and replay.text == "already processed"
    forged = receiver.post(headers, body.replace(b'"pause"', b'"promote"'))
    assert forged.status_code == 400
    unsigned = receiver.post({**headers, "webhook-signature": "v1,AAAA"}, body)
    assert unsigned.status_code == 400
    stranger = receiver.post(signature_headers([new_secret()], deliveries[0] + "x", body), body)
    assert stranger.status_code == 400  # signed, but not with our secret
    stale = datetime.now(UTC) - timedelta(minutes=10)
    old = receiver.post(signature_headers([SECRET], "old-id", body, stale), body)
    assert old.status_code == 400  # a captured delivery replayed after the tolerance
    assert len(receiver.handled) == 1  # acted on once, whatever came after


def test_nothing_unsigned_is_ever_sent(db: str, tmp_path: Path, receiver_factory: Any) -> None:
    """A webhook added while a worker runs without a secret: counted as a failed attempt
    (retried a bounded number of times), never posted unsigned."""
    receiver = receiver_factory(SECRET)
    conn, deliveries = _deliveries(db, tmp_path, receiver.url)
    with conn:
        assert deliver_once(conn, deliveries[0], [], timeout=5) is False
        row = conn.execute("SELECT status, attempts, last_error FROM webhook_deliveries").fetchone()
    assert row is not None and row[:2] == ("pending", 1) and "ABX_WEBHOOK_SECRET" in row[2]
    assert receiver.raw == []


def test_rotation_signs_with_every_secret(db: str, tmp_path: Path, receiver_factory: Any) -> None:
    new = new_secret()
    old_only = receiver_factory(SECRET)
    new_only = receiver_factory(new)
    both = receiver_factory(f"{new} {SECRET}")
    for receiver in (old_only, new_only, both):
        conn, deliveries = _deliveries(db, tmp_path, receiver.url)
        with conn:
            assert deliver_once(conn, deliveries[0], [new, SECRET], timeout=5) is True
            conn.execute("DELETE FROM experiment_state")  # pause again next round
        headers = receiver.raw[0][0]
        assert len(headers["Webhook-Signature"].split(" ")) == 2
        assert len(receiver.handled) == 1


def test_secrets_are_checked_before_anything_starts(
    server_factory: ServerFactory, db: str, tmp_path: Path
) -> None:
    check_secrets([SECRET, new_secret()], webhooks_configured=True)
    check_secrets([], webhooks_configured=False)
    for secrets, configured, complaint in [
        ([], True, "policy.webhooks but ABX_WEBHOOK_SECRET is empty"),
        (["plain-text-secret"], False, "starts with 'whsec_'"),
        (["whsec_c2hvcnQ="], True, "24 to 64 random bytes (this one 5)"),
        (["whsec_not base64!"], True, "followed by base64"),
    ]:
        with pytest.raises(WebhookSecretError, match=re.escape(complaint)):
            check_secrets(secrets, configured)
    folder = tmp_path / "hooked"
    write_experiment(folder, decision_experiment("lift", "http://127.0.0.1:9/h"))
    with pytest.raises(RuntimeError, match="ABX_WEBHOOK_SECRET is empty"):
        server_factory(db, folder)
    with pytest.raises(RuntimeError, match="24 to 64 random bytes"):
        server_factory(db, folder, ABX_WEBHOOK_SECRET="whsec_c2hvcnQ=")
    assert new_secret().startswith("whsec_") and new_secret() != new_secret()
