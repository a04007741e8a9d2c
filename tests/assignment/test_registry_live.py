"""The app's long-lived readers see a hot reload: the registry's live views, not a copy."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from service.assignment.registry import Registry
from service.events.ratios import configured_pairs_from
from service.events.rollup import metric_windows_from, windows_from
from service.events.segments import segment_specs_from
from service.experiments.validation import load_experiments
from tests.experiment_files import minimal_experiment, write_experiment


def test_the_rollups_readers_follow_a_reload(tmp_path: Path) -> None:
    write_experiment(tmp_path, minimal_experiment("exp"))
    registry = Registry(load_experiments([tmp_path]))
    window = windows_from(registry.live(with_holdouts=True))
    metric_window = metric_windows_from(registry.live(with_holdouts=True))
    specs = segment_specs_from(registry.live())
    pairs = configured_pairs_from(registry.live())
    assert window("exp") == timedelta(hours=168) and window("new") == timedelta(hours=168)
    assert metric_window("exp", "conversion") is None
    assert specs("exp") == () and pairs() == []

    metrics = minimal_experiment("exp")["metrics"]
    metrics["primary"] = {**metrics["primary"], "window": "20h"}
    metrics["secondary"] = [
        {"name": "clicks", "type": "count"},
        {"name": "views", "type": "count"},
        {"name": "ctr", "type": "ratio", "numerator": "clicks", "denominator": "views"},
    ]
    changed = minimal_experiment(
        "exp", metrics=metrics, segments=["platform"], outcome_window_hours=24
    )
    write_experiment(tmp_path, changed)
    write_experiment(tmp_path, minimal_experiment("new", outcome_window_hours=48))
    reloaded = load_experiments([tmp_path])
    assert reloaded.ok, reloaded.problems
    registry.replace(reloaded)

    assert window("exp") == timedelta(hours=24) and window("new") == timedelta(hours=48)
    assert metric_window("exp", "conversion") == timedelta(hours=20)
    assert [s.attribute for s in specs("exp")] == ["platform", "abx.client"]
    assert pairs() == [("exp", "exp.v1", "clicks", "views")]
