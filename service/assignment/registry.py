"""The experiments this process serves, compiled for assignment and swapped atomically."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from service.assignment.allocation import AllocationPlan
from service.assignment.core import (
    CompiledExperiment,
    CompiledHoldout,
    compile_experiment,
    compile_holdout,
)
from service.assignment.state import ExperimentState, override_for
from service.experiments.holdouts import Holdout
from service.experiments.schema import Experiment
from service.experiments.validation import LoadResult
from service.observability import metrics


@dataclass(frozen=True)
class ServedExperiment:
    """The compiled experiment now and, when a weight change is announced, from when on."""

    before_switch: CompiledExperiment
    after_switch: CompiledExperiment | None = None
    switch_at_epoch: float = float("inf")

    def at(self, epoch: float) -> CompiledExperiment:
        if self.after_switch is not None and epoch >= self.switch_at_epoch:
            return self.after_switch
        return self.before_switch


class LiveExperiments(Mapping[str, Experiment]):
    """The registry's experiments as they are at each read: hot reload replaces its dicts, so
    a long-lived reader (the app's rollup) must not hold one taken at start."""

    def __init__(self, read: Callable[[], Mapping[str, Experiment]]) -> None:
        self._read = read

    def __getitem__(self, key: str) -> Experiment:
        return self._read()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._read())

    def __len__(self) -> int:
        return len(self._read())


class Registry:
    def __init__(self, loaded: LoadResult) -> None:
        self.experiments: dict[str, Experiment] = {
            item.experiment.key: item.experiment for item in loaded.experiments
        }
        self.sources = {item.experiment.key: str(item.source.path) for item in loaded.experiments}
        self.holdouts: dict[str, Holdout] = {
            item.holdout.key: item.holdout for item in loaded.holdouts
        }
        self.holdout_experiments: dict[str, Experiment] = {
            key: holdout.as_experiment() for key, holdout in self.holdouts.items()
        }
        """Each holdout as the events pipeline and its analysis see it (two groups)."""
        self.with_holdouts: dict[str, Experiment] = {**self.experiments, **self.holdout_experiments}
        """Both of the above: what the outcome rollup attributes events to."""
        compiled_holdouts = [(h, compile_holdout(h)) for h in self.holdouts.values()]
        self._holdout_of: dict[str, CompiledHoldout] = {
            key: compiled
            for key, experiment in self.experiments.items()
            for holdout, compiled in compiled_holdouts
            if holdout.covers(experiment)
        }
        self._served = {
            key: ServedExperiment(
                compile_experiment(e, None, override_for(e, None), self._holdout_of.get(key))
            )
            for key, e in self.experiments.items()
        }
        self._plans: dict[str, AllocationPlan] = {}
        self._states: dict[str, ExperimentState] = {}
        self._clock_offset = 0.0
        self._lock = threading.Lock()
        self.allocations_loaded = False

    def served(self, key: str) -> ServedExperiment | None:
        return self._served.get(key)

    def get(self, key: str, epoch: float | None = None) -> CompiledExperiment | None:
        """The compiled experiment in force at ``epoch`` (local time.time(); default now)."""
        served = self._served.get(key)
        if served is None:
            return None
        return served.at(time.time() if epoch is None else epoch)

    def view(self) -> tuple[Mapping[str, ServedExperiment], Mapping[str, ExperimentState]]:
        """The served experiments and their decision states, as swapped in together; both
        are replaced, never changed in place, so identity tells a caller that nothing moved."""
        with self._lock:
            return self._served, self._states

    def publish_metrics(self) -> None:
        """Which experiments wait for new weights to take effect (``allocation-switching``)."""
        now = time.time()
        for key, served in self._served.items():
            pending = served.at(now).allocation.pending_weights is not None
            metrics.ALLOCATION_PENDING.labels(key).set(1 if pending else 0)

    def all(self) -> list[CompiledExperiment]:
        now = time.time()
        return [served.at(now) for served in self._served.values()]

    def apply_plans(
        self,
        plans: Mapping[str, AllocationPlan],
        clock_offset: float,
        states: Mapping[str, ExperimentState] | None = None,
    ) -> None:
        """Recompile experiments whose plan or decision state changed; swap the table at once.

        ``clock_offset`` is the database clock minus this process's clock, in seconds;
        ``states`` (None: unchanged) are the decision states read from ``experiment_state``.
        """
        with self._lock:
            served = dict(self._served)
            new_states = dict(self._states) if states is None else dict(states)
            for key, experiment in self.experiments.items():
                plan = plans.get(key, self._plans.get(key))
                unchanged = plan == self._plans.get(key) and new_states.get(
                    key
                ) == self._states.get(key)
                if unchanged and key in self._plans:
                    continue
                served[key] = _serve(
                    experiment, plan, clock_offset, new_states.get(key), self._holdout_of.get(key)
                )
                if plan is not None:
                    self._plans[key] = plan
            self._states = new_states
            self._served = served
            self._clock_offset = clock_offset
            self.allocations_loaded = True

    def live(self, with_holdouts: bool = False) -> LiveExperiments:
        """The experiments (and, ``with_holdouts``, each holdout as an experiment) as they are
        whenever read, across hot reloads."""
        if with_holdouts:
            return LiveExperiments(lambda: self.with_holdouts)
        return LiveExperiments(lambda: self.experiments)

    def replace(self, loaded: LoadResult) -> None:
        """Serve a reloaded configuration (hot reload) in one step.

        An experiment whose seed and variants are unchanged keeps the allocation plan
        in force (new weights wait for the state sync to announce them, as at start);
        a new or re-randomized one starts from its YAML weights.
        """
        fresh = Registry(loaded)
        refused = shrunk_holdouts(self.holdouts, fresh.holdouts)
        if refused:
            raise ValueError("; ".join(refused))
        with self._lock:
            served, plans = dict(fresh._served), {}
            for key, experiment in fresh.experiments.items():
                old, plan = self.experiments.get(key), self._plans.get(key)
                if old is None or plan is None or old.seed != experiment.seed:
                    continue
                if old.variant_keys == experiment.variant_keys:
                    state = self._states.get(key)
                    served[key] = _serve(
                        experiment, plan, self._clock_offset, state, fresh._holdout_of.get(key)
                    )
                    plans[key] = plan
            self.experiments, self.sources = fresh.experiments, fresh.sources
            self.holdouts, self.holdout_experiments = fresh.holdouts, fresh.holdout_experiments
            self.with_holdouts = fresh.with_holdouts
            self._holdout_of = fresh._holdout_of
            self._served, self._plans = served, plans


def _serve(
    experiment: Experiment,
    plan: AllocationPlan | None,
    clock_offset: float,
    state: ExperimentState | None,
    holdout: CompiledHoldout | None,
) -> ServedExperiment:
    serving = override_for(experiment, state)
    if plan is None:
        return ServedExperiment(compile_experiment(experiment, None, serving, holdout))
    after = None
    switch_at = float("inf")
    if plan.after_switch is not None and plan.switch_at is not None:
        after = compile_experiment(experiment, plan.after_switch, serving, holdout)
        switch_at = plan.switch_at.timestamp() - clock_offset
    return ServedExperiment(
        compile_experiment(experiment, plan.before_switch, serving, holdout), after, switch_at
    )


def shrunk_holdouts(old: Mapping[str, Holdout], new: Mapping[str, Holdout]) -> list[str]:
    """Why a reload is refused: a holdout whose share fell under the same seed.

    Membership is ``fraction < share``, so a larger share only adds units; a smaller one
    would release held-out units into launched treatments, ending their months of history.
    Shrinking takes a new ``version`` (or ``salt``): a new, re-randomized holdout. Across
    restarts ``abx serve`` checks the same with ``assignment.holdouts.record_shares``.
    """
    return [
        f"holdout {key!r}: share {before.share} -> {after.share} under seed {after.seed!r} "
        "would release held-out units; raise its version to start a new holdout instead"
        for key, before in old.items()
        if (after := new.get(key)) is not None
        and after.seed == before.seed
        and after.share < before.share
    ]
