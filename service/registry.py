"""The experiments this process serves, compiled for assignment and swapped atomically."""

from __future__ import annotations

from collections.abc import Mapping

from service.assignment import Allocation, CompiledExperiment, compile_experiment
from service.experiment_schema import Experiment
from service.experiment_validation import LoadResult


class Registry:
    def __init__(self, loaded: LoadResult) -> None:
        self.experiments: dict[str, Experiment] = {
            item.experiment.key: item.experiment for item in loaded.experiments
        }
        self.sources = {item.experiment.key: str(item.source.path) for item in loaded.experiments}
        self._compiled = {key: compile_experiment(e) for key, e in self.experiments.items()}
        self.allocations_loaded = False

    def get(self, key: str) -> CompiledExperiment | None:
        return self._compiled.get(key)

    def all(self) -> list[CompiledExperiment]:
        return list(self._compiled.values())

    def apply_allocations(self, allocations: Mapping[str, Allocation]) -> None:
        """Recompile experiments whose allocation changed; replace the table in one step."""
        compiled = dict(self._compiled)
        for key, allocation in allocations.items():
            current = compiled.get(key)
            if current is not None and current.allocation != allocation:
                compiled[key] = compile_experiment(current.experiment, allocation)
        self._compiled = compiled
        self.allocations_loaded = True
