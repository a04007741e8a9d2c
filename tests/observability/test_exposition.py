"""Exporting a process family's metrics: binds, the multiprocess folder, the exporter."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from service.observability.exposition import enable_multiprocess, parse_bind
from service.settings import PROJECT_ROOT
from tests.conftest import free_port


@pytest.mark.parametrize(
    ("bind", "address"),
    [("127.0.0.1:9464", ("127.0.0.1", 9464)), (":9464", ("127.0.0.1", 9464)),
     ("[::1]:9464", ("::1", 9464)), ("0.0.0.0:0", ("0.0.0.0", 0))],
)  # fmt: skip
def test_binds(bind: str, address: tuple[str, int]) -> None:
    assert parse_bind(bind) == address


@pytest.mark.parametrize("bind", ["9464", "localhost", "host:port", "127.0.0.1:"])
def test_bad_binds(bind: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_bind(bind)


def test_too_late_once_the_metrics_exist(tmp_path: Path) -> None:
    import service.observability.metrics  # noqa: F401  (this process built them already)

    before = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    with pytest.raises(RuntimeError, match=r"before service\.observability\.metrics"):
        enable_multiprocess(tmp_path)
    assert os.environ.get("PROMETHEUS_MULTIPROC_DIR") == before


def test_children_s_values_are_summed_by_the_parent_s_exporter(tmp_path: Path) -> None:
    """A parent empties the folder and serves it; two forked children count into it."""
    folder = tmp_path / "metrics"
    folder.mkdir()
    (folder / "counter_4242.db").write_bytes(b"stale")
    program = textwrap.dedent(f"""
        import os, sys, urllib.request
        from pathlib import Path
        from service.observability.exposition import enable_multiprocess, mark_dead, start_exporter
        folder = enable_multiprocess(Path({str(folder)!r}))
        assert not (folder / "counter_4242.db").exists()
        exporter = start_exporter("127.0.0.1:0", folder)
        from service.observability import metrics
        children = []
        for n in (3, 4):
            pid = os.fork()
            if pid == 0:
                metrics.EVENTS.labels("plain", "accepted").inc(n)
                metrics.HTTP_IN_FLIGHT.inc()
                os._exit(0)
            children.append(pid)
        for pid in children:
            os.waitpid(pid, 0)
        before = urllib.request.urlopen(exporter.url, timeout=5).read().decode()
        mark_dead(children[0])
        after = urllib.request.urlopen(exporter.url, timeout=5).read().decode()
        print(before.count('abx_events_total{{experiment="plain",result="accepted"}} 7.0'),
              before.count("abx_http_requests_in_flight 2.0"),
              after.count("abx_http_requests_in_flight 1.0"),
              after.count('abx_events_total{{experiment="plain",result="accepted"}} 7.0'))
        exporter.close()
    """)
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    result = subprocess.run(
        [sys.executable, "-c", program], cwd=PROJECT_ROOT, env=env,
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # Summed over both children; a dead child's live gauge leaves, its counter stays.
    assert result.stdout.split() == ["1", "1", "1", "1"]
    assert folder.is_dir()  # the operator's folder is kept; only a temporary one is removed


def test_a_worker_whose_metrics_bind_is_taken_exits_with_the_reason(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "service.cli", "worker"],
            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60, check=False,
            env={**os.environ, "ABX_WORKER_METRICS_BIND": f"127.0.0.1:{port}",
                 "ABX_DATA_DIR": str(tmp_path), "ABX_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"},
        )  # fmt: skip
    assert result.returncode == 1
    assert f"cannot serve metrics on ABX_WORKER_METRICS_BIND=127.0.0.1:{port}" in result.stderr
