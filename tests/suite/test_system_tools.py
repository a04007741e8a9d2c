"""Programs from the system: installed by scripts/test when it can, else skipped and counted."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from service.settings import PROJECT_ROOT
from tests.suite.system_tools import (
    SYSTEM_TOOLS,
    install_missing,
    requires_system_tool,
    skip_reason,
    skipped_for_missing_tools,
    system_tool_path,
)

# Python and the venv's tools, nothing from /usr/bin: every system tool is missing.
WITHOUT_SYSTEM_TOOLS = str(Path(sys.executable).parent)


def child_env(**env: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    return {**base, **env}


def test_an_unlisted_tool_is_an_error_that_says_where_to_list_it() -> None:
    with pytest.raises(KeyError, match=r"'wrk' is not in SYSTEM_TOOLS"):
        requires_system_tool("wrk")


def test_a_missing_tool_skips_with_one_line_naming_the_package(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATH", WITHOUT_SYSTEM_TOOLS)
    mark = requires_system_tool("chromium")
    assert mark.args == (True,)
    assert mark.kwargs["reason"] == (
        "missing system tool chromium: apt-get install chromium"
        " (scripts/test does it when run as root)"
    )
    assert "\n" not in mark.kwargs["reason"]


def test_skips_are_counted_per_tool() -> None:
    reasons = [skip_reason("chromium"), skip_reason("chromium"), "no CUDA execution provider"]
    assert skipped_for_missing_tools(reasons) == {"chromium (apt-get install chromium)": 2}


def test_the_end_of_a_run_counts_what_a_missing_tool_skipped() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist", "-rs",
         "tests/dashboards/test_browser.py"],
        cwd=PROJECT_ROOT, env=child_env(PATH=WITHOUT_SYSTEM_TOOLS), capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    skips = [line for line in lines if line.startswith("SKIPPED")]
    assert skips and all(skip_reason("chromium") in line for line in skips), result.stdout
    skipped = re.search(r"\b(\d+) skipped\b", lines[-1])
    assert skipped and int(skipped[1]) > 0 and "passed" not in lines[-1], result.stdout
    count = skipped[1]
    summary = f"{count} test(s): {count} for chromium (apt-get install chromium)"
    assert f"skipped for a missing system tool: {summary}" in lines, result.stdout


def test_without_root_or_apt_the_install_step_says_what_to_install() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tests.suite.system_tools", "install"],
        cwd=PROJECT_ROOT, env=child_env(PATH=WITHOUT_SYSTEM_TOOLS), capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0
    for tool in SYSTEM_TOOLS.values():
        assert (
            f"note: {tool.command} is missing, so {tool.needed_by} will be skipped"
            f" (install it: apt-get install {tool.debian_package})"
        ) in result.stderr


def test_a_failing_package_manager_leaves_the_tests_to_skip(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", WITHOUT_SYSTEM_TOOLS)
    install_missing(apt_get="/bin/false", is_root=True)  # the fault: apt-get fails
    out, err = capsys.readouterr()
    assert "installing Debian packages the tests need: chromium" in out
    assert "note: /bin/false update -qq failed (1), so the tests that need chromium" in err


def test_a_package_that_cannot_be_installed_keeps_no_other_out(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", WITHOUT_SYSTEM_TOOLS)
    calls = tmp_path / "calls"
    apt_get = tmp_path / "apt-get"  # the fault: a package manager without the kubectl package
    apt_get.write_text(
        f'#!/bin/sh\necho "$@" >> {calls}\ncase "$*" in *kubectl*) exit 100;; esac\n'
    )
    apt_get.chmod(0o755)
    install_missing(apt_get=str(apt_get), is_root=True)
    _, err = capsys.readouterr()
    asked = calls.read_text().splitlines()
    packages = sorted({tool.debian_package for tool in SYSTEM_TOOLS.values()})
    assert asked == ["update -qq"] + [
        f"install -y -qq --no-install-recommends {package}" for package in packages
    ]
    assert "so the tests that need kubectl will be skipped" in err
    assert err.count("failed (100)") == 1


def test_nothing_to_do_when_every_tool_is_there(capsys: pytest.CaptureFixture[str]) -> None:
    missing = [command for command in SYSTEM_TOOLS if system_tool_path(command) is None]
    if missing:
        pytest.skip(skip_reason(missing[0]))
    install_missing(apt_get="/bin/false", is_root=True)  # would fail if it ran
    assert capsys.readouterr() == ("", "")


def test_usage() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tests.suite.system_tools"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert "usage: python -m tests.suite.system_tools install" in result.stderr
