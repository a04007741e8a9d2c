"""Fixtures of the assignment tests: serving runtimes that share only PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from service.app import Runtime, build_runtime
from service.settings import Settings
from tests.experiment_files import minimal_experiment, write_experiment


@pytest.fixture
def runtimes() -> Iterator[list[Runtime]]:
    """The runtimes a test started, closed after it."""
    started: list[Runtime] = []
    yield started
    for runtime in started:
        runtime.close()


@pytest.fixture
def runtime_with_weights(db: str, runtimes: list[Runtime]) -> Callable[..., Runtime]:
    """Start a runtime (closed after the test) serving ``experiment_key`` with variants ``a``
    and ``b`` weighted so, from its own experiments folder: two of them stand for two serving
    processes that read different YAML."""

    def start(folder: Path, experiment_key: str, a: float, b: float, **settings: Any) -> Runtime:
        variants = [{"key": "a", "weight": a}, {"key": "b", "weight": b}]
        write_experiment(folder, minimal_experiment(experiment_key, variants=variants))
        runtime = build_runtime(
            Settings(
                database_url=db,
                experiments=folder,
                data_dir=folder / "data",
                state_poll_seconds=0.1,
                allocation_settle_seconds=0.5,
                **settings,
            )
        )
        runtimes.append(runtime)
        return runtime

    return start
