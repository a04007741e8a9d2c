"""`abx serve` started right after its master was SIGKILLed binds (issue #14, item 8).

The master's workers outlive it: gunicorn workers notice their parent changed within a second
and then finish in-flight connections for up to the graceful timeout (10 s). They held the
listening socket and the metrics exporter's (inherited at fork) meanwhile, so the next
`abx serve` exited with "address already in use". Here a stream and a half-sent body keep
both workers busy, the master is SIGKILLed, and a new server on the same binds must answer
`/healthz` and `/metrics` well before the graceful timeout would have freed anything.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import requests

from service.settings import PROJECT_ROOT
from tests.conftest import free_port, make_key


def serve(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as output:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--no-migrate"],
            env=env, cwd=PROJECT_ROOT, stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip


def bindable(port: int) -> bool:
    """Whether a new listener could bind the port now (as gunicorn binds: SO_REUSEADDR)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=0.5).status_code == 200
    except requests.RequestException:
        return False


def test_serve_binds_right_after_its_master_was_sigkilled(
    db: str, experiments_dir: Path, tmp_path: Path
) -> None:
    port, metrics_port = free_port(), free_port()
    key = make_key(db, "restart", ["assign"])
    env = {**os.environ, "ABX_DATABASE_URL": db, "ABX_EXPERIMENTS": str(experiments_dir),
           "ABX_DATA_DIR": str(tmp_path / "data"), "ABX_BIND": f"127.0.0.1:{port}",
           "ABX_METRICS_BIND": f"127.0.0.1:{metrics_port}", "ABX_WORKERS": "2",
           "ABX_SDK_STREAM_SECONDS": "60"}  # fmt: skip
    base, metrics = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics"
    first = serve(env, tmp_path / "first.log")
    second: subprocess.Popen[bytes] | None = None
    orphans: list[int] = []
    held: list[object] = []
    try:
        deadline = time.monotonic() + 120
        while not answers(base + "/healthz"):
            assert first.poll() is None and time.monotonic() < deadline, (
                tmp_path / "first.log"
            ).read_text(errors="replace")[-3000:]
            time.sleep(0.2)
        # Connections in flight: each keeps a worker in its graceful shutdown for 10 s.
        for _ in range(2):
            held.append(requests.get(base + "/v1/sdk/stream", stream=True, timeout=30,
                                     headers={"Authorization": f"Bearer {key}"}))  # fmt: skip
            half_sent = socket.create_connection(("127.0.0.1", port))
            half_sent.sendall(
                b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"
            )
            held.append(half_sent)
        orphans = [child.pid for child in psutil.Process(first.pid).children(recursive=True)]
        assert orphans
        first.send_signal(signal.SIGKILL)
        first.wait()
        killed = time.monotonic()
        # The orphans let go of both addresses within seconds, while still finishing the
        # connections they hold (the graceful timeout is 10 s).
        while not (bindable(port) and bindable(metrics_port)):
            assert time.monotonic() - killed < 5, "the killed master's workers hold the binds"
            time.sleep(0.05)
        freed = time.monotonic() - killed
        assert any(psutil.pid_exists(pid) for pid in orphans)
        second = serve(env, tmp_path / "second.log")
        while not (answers(base + "/healthz") and answers(metrics)):
            assert second.poll() is None, (tmp_path / "second.log").read_text(errors="replace")
            assert time.monotonic() - killed < 60
            time.sleep(0.1)
        took = time.monotonic() - killed
        assert requests.get(base + "/readyz", timeout=5).status_code in (200, 503)
        # Served by the new server's workers, not the orphans (they no longer accept).
        new_workers = {c.pid for c in psutil.Process(second.pid).children(recursive=True)}
        assert new_workers and not new_workers & set(orphans)
        waits = (tmp_path / "second.log").read_text(errors="replace").count("address in use")
        print(
            f"binds free {freed:.1f} s after the SIGKILL; second server answered after"
            f" {took:.1f} s, {waits} bind retries"
        )
    finally:
        for item in held:
            item.close()  # type: ignore[attr-defined]
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(30)
        for pid in orphans:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_a_new_master_waits_for_an_address_in_use_then_binds() -> None:
    from service.server import _probe_bind, _retry_while_in_use

    holder = socket.create_server(("127.0.0.1", 0))
    port = holder.getsockname()[1]
    bind = f"127.0.0.1:{port}"
    with pytest.raises(OSError) as refused:
        _retry_while_in_use(lambda: _probe_bind(bind), 0.3, bind)
    assert refused.value.errno == errno.EADDRINUSE
    threading.Timer(0.5, holder.close).start()  # the killed master's last worker lets go
    started = time.monotonic()
    _retry_while_in_use(lambda: _probe_bind(bind), 5.0, bind)
    assert 0.4 < time.monotonic() - started < 5.0
