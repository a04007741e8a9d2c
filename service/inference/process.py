"""``abx infer``: one process that owns the sessions and serves every worker of a host.

It listens on a Unix socket (``wire.py``: the format, and why a socket) with one thread per
connection: each gunicorn thread holds one connection and waits on it, so the rows of every
worker meet in the model's one micro-batcher (``host.py``). Optionally it also speaks the Open
Inference Protocol over HTTP (``oip.py``), for abx servers on other hosts.

The socket file is created owner-only (mode 0600 through the umask): the workers run as the
same user, and nobody else on the host may feed the models or read their answers.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import socketserver
import stat
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from service.inference.host import BadInput, LoadError, ModelHost
from service.inference.wire import FrameError, TransportError, decode, encode, read_frame

log = logging.getLogger(__name__)


def failure(reason: str, detail: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    return {"ok": False, "reason": reason, "detail": detail}, {}


def dispatch(
    host: ModelHost, header: dict[str, Any], arrays: dict[str, np.ndarray]
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """One request: ``run`` (rows of a model), ``load`` (before traffic), ``status``, ``ping``.

    A run's ``timeout`` is the caller's remaining budget in seconds, counted from the frame's
    arrival here: relative, since the caller's clock is not this process's to read.
    """
    received = time.monotonic()
    op = header.get("op")
    if op == "ping":
        return {"ok": True, "pid": os.getpid()}, {}
    if op == "status":
        models, problems = host.status(), dict(host.problems)
        return {"ok": True, "pid": os.getpid(), "models": models, "problems": problems}, {}
    if op not in ("run", "load"):
        return failure("bad-request", f"unknown op {op!r}")
    path, sha256 = header.get("path"), header.get("model")
    if not isinstance(path, str) or not isinstance(sha256, str):
        return failure("bad-request", "a run names the model's path and sha256")
    try:
        hosted = host.load(path, sha256)
    except LoadError as error:
        return failure("load-error", str(error))
    model = hosted.model
    described = {"ok": True, "provider": model.provider, "name": model.name}
    if op == "load":
        return {**described, "version": model.version, "timings_ms": model.timings_ms}, {}
    timeout = header.get("timeout")
    try:
        if timeout is not None and not (
            isinstance(timeout, int | float) and math.isfinite(timeout)
        ):
            raise BadInput(f"timeout is seconds, not {timeout!r}")
        outputs = host.run(hosted, arrays, None if timeout is None else float(timeout), received)
    except BadInput as error:
        return failure("bad-input", str(error))
    except TimeoutError as error:
        return failure("timeout", str(error))
    except Exception as error:  # onnxruntime's refusal or failure: the worker falls back
        return failure("error", str(error))
    return described, outputs


class _Connection(socketserver.BaseRequestHandler):
    server: UnixServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        while True:
            try:
                frame = read_frame(sock)
                if frame is None:
                    return
                try:
                    header, arrays = decode(frame)
                    reply = dispatch(self.server.host, header, arrays)
                except FrameError as error:
                    reply = failure("bad-request", str(error))
                sock.sendall(encode(*reply))
            except (OSError, TransportError, FrameError):
                return  # the worker hung up or gave up (its budget); nothing to answer


class UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    request_queue_size = 1024  # every thread of every worker connects at start-up

    def __init__(self, path: str, host: ModelHost) -> None:
        self.host = host
        _remove_stale(path)
        previous = os.umask(0o077)
        try:
            super().__init__(path, _Connection)
        finally:
            os.umask(previous)


def _remove_stale(path: str) -> None:
    """Remove the socket file a dead process left; refuse when a live one answers on it."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise SystemExit(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)
        return
    finally:
        probe.close()
    raise SystemExit(f"an inference process already answers on {path}")


def serve(
    host: ModelHost,
    socket_path: str | None,
    http: Any | None = None,
    ready: threading.Event | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT (raised as SystemExit/KeyboardInterrupt by the caller)."""
    servers: list[Any] = []
    if socket_path:
        Path(socket_path).parent.mkdir(parents=True, exist_ok=True)
        servers.append(UnixServer(socket_path, host))
    if http is not None:
        servers.append(http)
    threads = [
        threading.Thread(target=s.serve_forever, name="abx-infer-serve", daemon=True)
        for s in servers
    ]
    for thread in threads:
        thread.start()
    log.info("inference process serving (pid %s) on %s", os.getpid(), socket_path or "-")
    if ready is not None:
        ready.set()
    try:
        while all(t.is_alive() for t in threads):
            time.sleep(0.5)
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
        if socket_path:
            with contextlib.suppress(OSError):
                os.unlink(socket_path)
        host.close()
