"""The suite removes the PostgreSQL servers it started, however a run ends.

Each test runs ``interrupted_run.py`` in a pytest of its own (the way scripts/test
runs: a controller and two xdist workers) with its own embedded server, then ends
it: Ctrl-C to the whole process group as a terminal sends it, a failing test, or
SIGKILL. Afterwards no server process and no data folder may be left.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest

from service.settings import PROJECT_ROOT
from tests.conftest import wait_for
from tests.suite.postgres import FOLDER_PREFIX

TARGET = Path(__file__).with_name("interrupted_run.py")


@pytest.fixture
def scratch() -> Iterator[Path]:
    """The child run's TMPDIR: short (socket paths) and readable by the server's system user."""
    folder = Path(tempfile.mkdtemp(prefix="abx-cleanup-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


class ChildRun:
    def __init__(self, scratch: Path, then: str, **env: str) -> None:
        self.scratch = scratch
        self.holding = scratch / "holding.json"
        self.log_path = scratch / "run.log"
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
        child_env.update(
            ABX_TEST_DATABASE_URL="embedded",
            ABX_TEST_HOLDING=str(self.holding),
            ABX_TEST_THEN=then,
            TMPDIR=str(scratch),
            **env,
        )
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", "2", str(TARGET)],
                cwd=PROJECT_ROOT,
                env=child_env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, like a job in a terminal
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def holds(self) -> dict[str, Any]:
        assert wait_for(
            lambda: self.holding.exists() or self.process.poll() is not None, timeout=180
        ), self.log()
        assert self.holding.exists(), self.log()
        held: dict[str, Any] = json.loads(self.holding.read_text())
        return held

    def folders(self) -> list[Path]:
        return sorted(self.scratch.glob(f"{FOLDER_PREFIX}*"))

    def servers(self) -> list[psutil.Process]:
        """Postmasters whose data folder is under this run's TMPDIR."""
        found = []
        for process in psutil.process_iter(["cmdline"]):
            if any(str(self.scratch) in part for part in process.info["cmdline"] or []):
                found.append(process)
        return found

    def everything_started(self) -> list[psutil.Process]:
        return [*psutil.Process(self.process.pid).children(recursive=True), *self.servers()]

    def stop(self) -> None:
        """After a failed test: end the run and any server it left, so the failure stays here."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(30)
        for server in self.servers():
            server.send_signal(signal.SIGQUIT)  # PostgreSQL's immediate shutdown
        psutil.wait_procs(self.servers(), timeout=30)


def alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def child_runs(scratch: Path) -> Iterator[list[ChildRun]]:
    runs: list[ChildRun] = []
    yield runs
    for run in runs:
        run.stop()


def assert_all_gone(run: ChildRun, started: list[psutil.Process]) -> None:
    def gone() -> bool:
        return not run.folders() and not any(alive(p) for p in started)

    assert wait_for(gone, timeout=60), (
        f"left behind: {run.folders()} {[p for p in started if alive(p)]}\n{run.log()}"
    )


def start_holding(scratch: Path, runs: list[ChildRun], then: str, **env: str) -> ChildRun:
    run = ChildRun(scratch, then, **env)
    runs.append(run)
    return run


def test_ctrl_c_removes_the_runs_servers_and_folders(
    scratch: Path, child_runs: list[ChildRun]
) -> None:
    run = start_holding(scratch, child_runs, "wait")
    held = run.holds()
    folders = run.folders()
    assert len(folders) == 2 and Path(held["own_folder"]) in folders  # the run's and the test's
    started = run.everything_started()
    assert len(run.servers()) == 2, run.log()

    os.killpg(run.process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    assert run.process.wait(120) == pytest.ExitCode.INTERRUPTED, run.log()
    assert_all_gone(run, started)
    assert "KeyboardInterrupt" in run.log()


def test_a_failed_run_removes_them_and_names_its_databases_with_the_prefix(
    scratch: Path, child_runs: list[ChildRun]
) -> None:
    run = start_holding(scratch, child_runs, "fail", ABX_TEST_DB_PREFIX="abx_cleanup_")
    held = run.holds()
    started = run.everything_started()
    assert run.process.wait(120) == pytest.ExitCode.TESTS_FAILED, run.log()
    assert "failing on purpose" in run.log()
    assert psycopg.conninfo.conninfo_to_dict(held["db"])["dbname"].startswith("abx_cleanup_")
    assert_all_gone(run, started)


def test_a_killed_run_leaves_nothing_either(scratch: Path, child_runs: list[ChildRun]) -> None:
    run = start_holding(scratch, child_runs, "wait")
    run.holds()
    started = run.everything_started()
    assert len(run.servers()) == 2, run.log()
    os.killpg(run.process.pid, signal.SIGKILL)  # no handler runs: the guardians clean up
    run.process.wait(30)
    assert_all_gone(run, started)
