"""The log format: one JSON object per line, context carried, nothing secret, no unit ids."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.observability.logging import (
    REDACTED,
    annotate,
    configure_logging,
    current_request_id,
    end_context,
    flush_access_log,
    get_logger,
    log_access,
    request_id_from,
    scrub_text,
    start_context,
    whole_line_chunks,
)


@pytest.fixture
def output() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    yield stream
    end_context()
    for handler in list(logging.getLogger().handlers):
        if getattr(handler, "_fixed", None) is stream:
            logging.getLogger().removeHandler(handler)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_ours_and_a_library_s_lines_are_json_with_the_request_context(
    output: io.StringIO,
) -> None:
    configure_logging("json", "INFO", stream=output)
    start_context(request_id="req-1")
    annotate(experiment="checkout", variant="b")
    get_logger("abx.test").info("assigned", status=200, duration_ms=1.5)
    logging.getLogger("some.library").warning("flush failed: %s", "timeout")
    logging.getLogger("some.library").debug("below the level")
    first, second = lines(output)
    assert list(first)[:4] == ["timestamp", "level", "logger", "event"]
    assert first["timestamp"].endswith("Z")
    assert {k: first[k] for k in ("level", "logger", "event", "request_id", "experiment")} == {
        "level": "info", "logger": "abx.test", "event": "assigned", "request_id": "req-1",
        "experiment": "checkout",
    }  # fmt: skip
    assert (first["variant"], first["status"], first["duration_ms"]) == ("b", 200, 1.5)
    assert {k: second[k] for k in ("level", "logger", "event", "request_id")} == {
        "level": "warning", "logger": "some.library", "event": "flush failed: timeout",
        "request_id": "req-1",
    }  # fmt: skip
    end_context()
    get_logger("abx.test").info("after")
    assert "request_id" not in lines(output)[-1]


def test_exceptions_are_one_line_with_their_traceback(output: io.StringIO) -> None:
    configure_logging("json", "INFO", stream=output)
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("abx.test").exception("unhandled error")
    (line,) = output.getvalue().splitlines()
    record = json.loads(line)
    assert record["level"] == "error" and "ValueError: boom" in record["exception"]


def test_secrets_never_reach_a_line(output: io.StringIO) -> None:
    configure_logging("json", "INFO", stream=output)
    get_logger("abx.test").info(
        "connecting to postgresql://abx:hunter2@db:5432/abx",
        api_key="key-123456",
        authorization="Bearer key-123456",
        webhook_secret="s3cr3t-webhook",
        header="Authorization: Bearer key-123456",
        dsn="host=db password=hunter2 dbname=abx",
        experiment_key="checkout",
    )
    text = output.getvalue()
    assert "hunter2" not in text and "key-123456" not in text and "s3cr3t" not in text
    (record,) = lines(output)
    assert record["api_key"] == record["authorization"] == record["webhook_secret"] == REDACTED
    assert record["event"] == f"connecting to postgresql://abx:{REDACTED}@db:5432/abx"
    assert record["experiment_key"] == "checkout"  # a key that is no secret stays


def test_unit_ids_only_when_allowed(output: io.StringIO) -> None:
    configure_logging("json", "INFO", log_units=False, stream=output)
    get_logger("abx.test").info("assigned", unit="user-42", unit_id="user-42", variant="b")
    configure_logging("json", "INFO", log_units=True, stream=output)
    get_logger("abx.test").info("assigned", unit="user-42", variant="b")
    hidden, shown = lines(output)
    assert "unit" not in hidden and "unit_id" not in hidden and hidden["variant"] == "b"
    assert shown["unit"] == "user-42"


def test_console_format_is_for_people(output: io.StringIO) -> None:
    configure_logging("console", "INFO", stream=output)
    start_context(request_id="req-2")
    get_logger("abx.test").info("assigned", variant="b")
    text = output.getvalue()
    assert "assigned" in text and "request_id=req-2" in text and not text.startswith("{")


def test_configuring_twice_keeps_one_handler(output: io.StringIO) -> None:
    configure_logging("json", "INFO", stream=output)
    configure_logging("json", "INFO", stream=output)
    logging.getLogger("abx.test").warning("once")
    assert len(output.getvalue().splitlines()) == 1


@pytest.mark.parametrize(
    "header",
    ["abc-123", "0f9c2b7e4d1a4c2f9e8b7a6d5c4b3a21", "trace:span/1+2=3", "x" * 128],
)
def test_a_plain_request_id_is_kept(header: str) -> None:
    assert request_id_from(header) == header


@pytest.mark.parametrize(
    "header", [None, "", "x" * 129, "has space", 'quote"d', "semi;colon", "é", "-leading"]
)
def test_any_other_request_id_is_replaced(header: str | None) -> None:
    made = request_id_from(header)
    assert made != header and len(made) == 32 and int(made, 16) >= 0


def test_current_request_id_follows_the_context() -> None:
    start_context(request_id="req-3")
    assert current_request_id() == "req-3"
    end_context()
    assert current_request_id() is None


def test_scrub_text_leaves_plain_text_alone() -> None:
    for text in ("GET /v1/experiments/basic returned 200 after 3 ms", "bearer of news", ""):
        assert scrub_text(text) == text
    assert scrub_text("Basic dXNlcjpwYXNz") == f"Basic {REDACTED}"


def test_access_lines_are_batched_in_whole_lines(tmp_path: Path) -> None:
    """Written through the file descriptor in chunks of whole lines, each one JSON."""
    target = tmp_path / "access.log"
    with target.open("w") as stream:
        configure_logging("json", "INFO", stream=stream)
        start_context(request_id="req-9")
        for status in range(1000):
            log_access(method="GET", route="/healthz", status=status, unit="hidden")
        logging.getLogger("abx.test").warning("between")
        flush_access_log()
        end_context()
        for handler in list(logging.getLogger().handlers):
            if getattr(handler, "_fixed", None) is stream:
                logging.getLogger().removeHandler(handler)
    records = [json.loads(line) for line in target.read_text().splitlines()]
    access = [r for r in records if r["logger"] == "abx.access"]
    assert [r["status"] for r in access] == list(range(1000))
    assert all(r["request_id"] == "req-9" and "unit" not in r for r in access)
    assert list(access[0])[:4] == ["timestamp", "level", "logger", "event"]
    assert any(r["event"] == "between" for r in records)


def test_chunks_hold_whole_lines_within_a_pipe_s_atomic_write() -> None:
    lines = [b"x" * 1000 + b"\n"] * 9 + [b"y" * 5000 + b"\n", b"z\n"]
    chunks = whole_line_chunks(lines)
    assert b"".join(chunks) == b"".join(lines)
    assert [len(c) for c in chunks] == [4004, 4004, 1001, 5001, 2]
    assert whole_line_chunks([]) == []
