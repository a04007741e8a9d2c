"""Programs from the system that some tests need, such as Chromium for the browser tests.

Each is listed once in ``SYSTEM_TOOLS`` with the Debian package that provides
it. ``scripts/test`` runs ``python -m tests.suite.system_tools install``, which
installs the missing ones with apt-get when it runs as root, and otherwise says
what to install. A test module declares its need with
``pytestmark = requires_system_tool("chromium")``: without the program its tests
are skipped with one line naming the package, and the end of the run counts them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class SystemTool:
    command: str
    debian_package: str
    needed_by: str


SYSTEM_TOOLS = {
    tool.command: tool
    for tool in (
        SystemTool("chromium", "chromium", "the dashboards' browser tests (Playwright drives it)"),
        SystemTool("promtool", "prometheus", "the alert rules' unit tests (promtool test rules)"),
        SystemTool(
            "prometheus", "prometheus", "the test of a real Prometheus scraping a real server"
        ),
        SystemTool("haproxy", "haproxy", "the load balancer in front of the replicas (topology)"),
        SystemTool("kubectl", "kubectl", "rendering the Kustomize overlays (kubectl kustomize)"),
    )
}
_SKIP = re.compile(r"missing system tool (?P<command>\S+): apt-get install (?P<package>\S+)")


def _tool(command: str) -> SystemTool:
    try:
        return SYSTEM_TOOLS[command]
    except KeyError:
        raise KeyError(
            f"{command!r} is not in SYSTEM_TOOLS (tests/suite/system_tools.py): add it there with"
            " its Debian package, so that scripts/test can install it"
        ) from None


def system_tool_path(command: str) -> str | None:
    """Where the program is on PATH, or None."""
    return shutil.which(_tool(command).command)


def skip_reason(command: str) -> str:
    tool = _tool(command)
    return (
        f"missing system tool {tool.command}: apt-get install {tool.debian_package}"
        " (scripts/test does it when run as root)"
    )


def requires_system_tool(command: str) -> pytest.MarkDecorator:
    """Skip the marked tests, with one line saying what to install, when the program is missing."""
    return pytest.mark.skipif(system_tool_path(command) is None, reason=skip_reason(command))


def skipped_for_missing_tools(reasons: Iterable[str]) -> Counter[str]:
    """How many skips each missing tool caused, keyed by its install command."""
    counts: Counter[str] = Counter()
    for reason in reasons:
        match = _SKIP.search(reason)
        if match:
            counts[f"{match['command']} (apt-get install {match['package']})"] += 1
    return counts


def install_missing(apt_get: str | None, is_root: bool) -> None:
    """Install what is missing where possible, else say what to install; never fail the run.

    A tool that stays missing only skips the tests that need it, which the run reports.
    """
    missing = [tool for tool in SYSTEM_TOOLS.values() if shutil.which(tool.command) is None]
    if not missing:
        return
    packages = sorted({tool.debian_package for tool in missing})
    if apt_get is None or not is_root:
        for tool in missing:
            print(
                f"note: {tool.command} is missing, so {tool.needed_by} will be skipped"
                f" (install it: apt-get install {tool.debian_package})",
                file=sys.stderr,
            )
        return
    print(f"installing Debian packages the tests need: {' '.join(packages)}")
    update = [apt_get, "update", "-qq"]
    result = subprocess.run(update, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        _note_failure(update, result, missing)
        return
    # One package at a time: one that this machine's sources lack (kubectl comes from the
    # Kubernetes repository, not Debian's) must not keep the others out.
    for package in packages:
        install = [apt_get, "install", "-y", "-qq", "--no-install-recommends", package]
        result = subprocess.run(install, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            _note_failure(install, result, [t for t in missing if t.debian_package == package])


def _note_failure(
    command: list[str], result: subprocess.CompletedProcess[str], tools: list[SystemTool]
) -> None:
    print(
        f"note: {' '.join(command)} failed ({result.returncode}), so the tests that need"
        f" {', '.join(tool.command for tool in tools)} will be skipped:\n"
        f"{(result.stdout + result.stderr).strip()[-2000:]}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    if sys.argv[1:] != ["install"]:
        sys.exit("usage: python -m tests.suite.system_tools install")
    install_missing(shutil.which("apt-get"), os.geteuid() == 0)
