"""Stickiness across processes when weights change while first assignments are still buffered.

Two runtimes in one test process stand for two serving processes: they share
only PostgreSQL, exactly like two gunicorn workers or two hosts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from pydantic import ValidationError

from service.app import Runtime, build_runtime
from service.assignment.core import Reason
from service.settings import LIVE_WRITER_SECONDS, Settings
from tests.conftest import wait_for
from tests.experiment_files import minimal_experiment, write_experiment


def stored_variants(db: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    with psycopg.connect(db) as conn:
        for unit, variant in conn.execute("SELECT unit_id, variant_key FROM exposures"):
            found.setdefault(unit, set()).add(variant)
    return found


def test_buffered_first_assignments_survive_a_weight_change(
    db: str, tmp_path: Path, runtime_with_weights: Callable[..., Runtime]
) -> None:
    # Process A buffers its first assignments and does not flush on its own.
    first = runtime_with_weights(
        tmp_path / "a", "switch_test", 0.5, 0.5, flush_interval_seconds=3600
    )
    units = [f"user-{i}" for i in range(400)]
    seen = {unit: first.assignments.assign("switch_test", unit, {}).variant for unit in units}
    assert first.writer.pending_rows() > 0

    # Process B starts with new weights: the change is announced, then due...
    second = runtime_with_weights(tmp_path / "b", "switch_test", 0.9, 0.1)
    served = second.registry.served("switch_test")
    assert served is not None and served.after_switch is not None
    time.sleep(max(0.0, served.switch_at_epoch - time.time()) + 0.5)
    # ...but cannot become current while A still holds unflushed first assignments.
    compiled = second.registry.get("switch_test")
    assert compiled is not None and compiled.allocation.pending_weights == (0.9, 0.1)
    assert compiled.allocation.weights == (0.5, 0.5)

    first.writer.flush()
    for unit in units:
        result = second.assignments.assign("switch_test", unit, {})
        assert result.variant == seen[unit], unit
        assert result.reason in {Reason.STICKY, Reason.HASHED}

    def switched() -> bool:
        current = second.registry.get("switch_test")
        return current is not None and current.allocation.weights == (0.9, 0.1)

    assert wait_for(switched, timeout=5)
    assert second.registry.get("switch_test").allocation.pending_weights is None  # type: ignore[union-attr]
    for runtime in (first, second):
        for unit in units:
            assert runtime.assignments.assign("switch_test", unit, {}).variant == seen[unit]
    fresh = [second.assignments.assign("switch_test", f"new-{i}", {}).variant for i in range(2000)]
    assert 0.87 < fresh.count("a") / len(fresh) < 0.93

    first.writer.flush()
    second.writer.flush()
    assert all(len(variants) == 1 for variants in stored_variants(db).values())


def test_a_lookup_just_after_the_switch_waits_for_other_buffers(
    db: str, tmp_path: Path, runtime_with_weights: Callable[..., Runtime]
) -> None:
    # The default flush interval (0.2 s), so the lookup grace is the default too: 0.5 s for a
    # flush that is due within 0.2 s. With 0.05 s (a 0.2 s grace) a CI machine busy with the
    # rest of the suite once delayed A's flush past B's lookup.
    first = runtime_with_weights(
        tmp_path / "a", "switch_test", 0.5, 0.5, flush_interval_seconds=0.2
    )
    second = runtime_with_weights(
        tmp_path / "b", "switch_test", 0.1, 0.9, flush_interval_seconds=0.2
    )
    served = second.registry.served("switch_test")
    assert served is not None and served.after_switch is not None
    time.sleep(max(0.0, served.switch_at_epoch - time.time() - 0.02))
    # A assigns right before the switch; B asks right after, before A's next flush.
    answers = {
        f"late-{i}": first.assignments.assign("switch_test", f"late-{i}", {}) for i in range(60)
    }
    # Under load some of these run past the switch: those that the change would move are held
    # (control, unexposed) and have no first assignment to keep. The rest must be kept.
    seen = {unit: answer.variant for unit, answer in answers.items() if answer.exposed}
    assert len(seen) > 20
    time.sleep(max(0.0, served.switch_at_epoch - time.time()))
    # About 40 % of them are units the change moves from 'a' to 'b': B must read A's record.
    for unit, variant in seen.items():
        result = second.assignments.assign("switch_test", unit, {})
        assert result.variant == variant, f"{unit}: {result}"


def test_a_late_process_holds_the_switch_until_its_old_view_is_flushed(
    db: str,
    tmp_path: Path,
    runtimes: list[Runtime],
    runtime_with_weights: Callable[..., Runtime],
) -> None:
    # A reads the allocations every 5 s (the most allowed), so it hears of B's change after
    # the switch time and assigns under the old weights meanwhile; it flushes only when told.
    variants = [{"key": "a", "weight": 0.5}, {"key": "b", "weight": 0.5}]
    write_experiment(tmp_path / "a", minimal_experiment("switch_test", variants=variants))
    first = build_runtime(Settings(
        database_url=db, experiments=tmp_path / "a", data_dir=tmp_path / "a" / "data",
        state_poll_seconds=5.0, allocation_settle_seconds=0.5, flush_interval_seconds=3600,
    ))  # fmt: skip
    runtimes.append(first)
    second = runtime_with_weights(tmp_path / "b", "switch_test", 0.9, 0.1)
    served = second.registry.served("switch_test")
    assert served is not None and served.after_switch is not None
    time.sleep(max(0.0, served.switch_at_epoch - time.time()) + 0.2)
    late = first.registry.served("switch_test")
    assert late is not None and late.after_switch is None, "A heard in time: not late"

    # Past the switch time, A still serves the old weights: first assignments under them.
    units = [f"late-{i}" for i in range(400)]
    seen = {unit: first.assignments.assign("switch_test", unit, {}).variant for unit in units}
    assert first.writer.pending_rows() > 0

    def switched() -> bool:
        current = second.registry.get("switch_test")
        return current is not None and current.allocation.weights == (0.9, 0.1)

    # A's next polls: it reads the announcement, then reads again after it. Its late rows,
    # made under the view it read before the announcement, are still buffered: B must wait.
    assert first.state.poll_once()
    assert first.state.poll_once()
    assert not wait_for(switched, timeout=1.5)
    first.writer.flush()
    assert first.state.poll_once()
    assert wait_for(switched, timeout=5)
    for unit in units:
        assert second.assignments.assign("switch_test", unit, {}).variant == seen[unit], unit
    first.writer.flush()
    second.writer.flush()
    assert all(len(variants) == 1 for variants in stored_variants(db).values())


def test_a_process_polls_at_least_twice_within_the_time_its_heartbeat_lives(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Polling less often, a live process would count as gone between two of its heartbeats,
    # and a switch could go ahead while it still serves (and buffers) the old weights.
    assert Settings(state_poll_seconds=LIVE_WRITER_SECONDS / 2).state_poll_seconds == 5.0
    monkeypatch.setenv("ABX_STATE_POLL_SECONDS", "5.5")
    with pytest.raises(ValidationError, match="state_poll_seconds"):
        Settings()
