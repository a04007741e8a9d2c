"""A revoked key's open SSE stream closes within ~2 s, on a real server (issue #19).

Without this a stream opened before the revocation kept pushing configuration for up to
``ABX_SDK_STREAM_SECONDS`` (here 60, so that only the revocation can end it in time). Another
key's stream on the same worker stays open.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import requests
from click.testing import CliRunner

from service.cli.main import main
from tests.conftest import ServerFactory, make_key


def open_stream(base_url: str, token: str) -> requests.Response:
    response = requests.get(
        base_url + "/v1/sdk/stream",
        headers={"Authorization": f"Bearer {token}", "Accept": "text/event-stream"},
        stream=True,
        timeout=(5, 90),
    )
    assert response.status_code == 200, response.text
    return response


def read_until_closed(
    response: requests.Response, lines: list[str], closed: threading.Event
) -> None:
    try:
        for raw in response.iter_lines():
            lines.append(raw.decode())
        closed.set()  # the server ended the stream
    except Exception:  # the test closed the response under this thread at its end
        pass


def test_a_revoked_keys_stream_closes_within_two_seconds(
    server_factory: ServerFactory, db: str, experiments_dir: Path, runner: CliRunner
) -> None:
    server = server_factory(
        db, experiments_dir,
        ABX_WORKERS="1", ABX_SDK_STREAM_SECONDS="60", ABX_SDK_MAX_STREAMS="2",
    )  # fmt: skip
    doomed = make_key(db, "sdk-doomed", ["assign"])
    kept = make_key(db, "sdk-kept", ["assign"])
    streams = {name: open_stream(server.base_url, token) for name, token in
               (("doomed", doomed), ("kept", kept))}  # fmt: skip
    lines: dict[str, list[str]] = {name: [] for name in streams}
    closed = {name: threading.Event() for name in streams}
    readers = [
        threading.Thread(
            target=read_until_closed, args=(streams[n], lines[n], closed[n]), daemon=True
        )
        for n in streams
    ]
    for reader in readers:
        reader.start()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not all(
            any(line.startswith("event: config") for line in lines[n]) for n in streams
        ):
            time.sleep(0.05)
        assert all("event: config" in lines[n] for n in streams), lines
        result = runner.invoke(main, ["keys", "revoke", doomed], env={"ABX_DATABASE_URL": db})
        assert result.exit_code == 0, result.output
        revoked_at = time.monotonic()
        assert closed["doomed"].wait(timeout=10), "the revoked key's stream is still open"
        took = time.monotonic() - revoked_at
        assert took < 2.5, f"the stream closed {took:.2f} s after the revocation"
        assert "event: revoked" in lines["doomed"], lines["doomed"]
        assert not closed["kept"].wait(timeout=1.0), "another key's stream was closed too"
    finally:
        for response in streams.values():
            response.close()
    reopened = requests.get(
        server.base_url + "/v1/sdk/stream",
        headers={"Authorization": f"Bearer {doomed}"},
        timeout=5,
    )
    assert reopened.status_code == 401
