"""``current_settings``: built once per ``ABX_*`` environment, never stale after a change."""

from __future__ import annotations

import pytest

from service.settings import Settings, current_settings


def test_current_settings_are_built_once_and_follow_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ABX_STATE_POLL_SECONDS", "1.5")
    first = current_settings()
    assert current_settings() is first  # the same environment: not built again
    assert first == Settings() and first.state_poll_seconds == 1.5
    monkeypatch.setenv("ABX_STATE_POLL_SECONDS", "2.5")
    assert current_settings().state_poll_seconds == 2.5
    monkeypatch.delenv("ABX_STATE_POLL_SECONDS")
    monkeypatch.setenv("abx_allocation_settle_seconds", "0.25")  # read in any case, as Settings
    assert current_settings().allocation_settle_seconds == Settings().allocation_settle_seconds
    assert current_settings().allocation_settle_seconds == 0.25
    monkeypatch.delenv("abx_allocation_settle_seconds")
    monkeypatch.setenv("ABX_STATE_POLL_SECONDS", "1.5")
    assert current_settings() is first  # back to the first environment: its settings again
    monkeypatch.setenv("UNRELATED_VARIABLE", "x")
    assert current_settings() is first  # only ABX_* variables make settings
