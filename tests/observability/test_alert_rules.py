"""The shipped alert rules: valid, unit-tested with promtool, each with a runbook entry."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from service.settings import PROJECT_ROOT
from tests.suite.system_tools import requires_system_tool, system_tool_path

PROMTOOL = system_tool_path("promtool")
needs_promtool = requires_system_tool("promtool")
DEPLOY = PROJECT_ROOT / "deploy" / "prometheus"
RULES = DEPLOY / "abx-rules.yml"
TESTS = DEPLOY / "abx-rules.test.yml"
OPERATIONS = PROJECT_ROOT / "docs" / "operations.md"


def alerts() -> list[dict[str, object]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )


@needs_promtool
def test_rules_and_the_example_config_are_valid() -> None:
    for args in (("check", "rules", RULES), ("check", "config", DEPLOY / "prometheus.yml")):
        result = promtool(*args)
        assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_unit_tests_pass() -> None:
    result = promtool("test", "rules", TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_promtool_fails_a_rule_that_does_not_fire() -> None:
    """The unit tests can fail: with the fallback threshold raised, its test does."""
    with_threshold = RULES.read_text().replace(
        "abx:model_fallbacks:ratio_rate5m > 0.05", "abx:model_fallbacks:ratio_rate5m > 0.5"
    )
    assert with_threshold != RULES.read_text()
    folder = Path(TESTS.parent)
    broken = folder / f".broken-{TESTS.name}"
    rules = folder / ".broken-abx-rules.yml"
    try:
        rules.write_text(with_threshold)
        broken.write_text(TESTS.read_text().replace("- abx-rules.yml", f"- {rules.name}"))
        result = promtool("test", "rules", broken)
    finally:
        broken.unlink(missing_ok=True)
        rules.unlink(missing_ok=True)
    assert result.returncode != 0
    assert "AbxModelFallbackRateHigh" in result.stdout + result.stderr


def test_every_alert_is_tested_firing() -> None:
    tests = yaml.safe_load(TESTS.read_text())["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert {str(alert["alert"]) for alert in alerts()} <= fired


def test_every_alert_has_a_severity_and_a_runbook_section() -> None:
    headings = {
        heading.lower()
        for heading in re.findall(r"(?m)^#{2,4} (Abx\w+)\s*$", OPERATIONS.read_text())
    }
    for alert in alerts():
        name = str(alert["alert"])
        labels = alert["labels"]
        annotations = alert["annotations"]
        assert isinstance(labels, dict) and labels["severity"] in {"page", "ticket"}, name
        assert isinstance(annotations, dict), name
        assert annotations["runbook"] == f"docs/operations.md#{name.lower()}", name
        assert name.lower() in headings, f"docs/operations.md has no section {name}"
