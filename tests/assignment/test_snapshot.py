"""The snapshot's moved ranges: exactly where the core may consult a unit's stored assignment."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from service.assignment.core import Allocation, assign, compile_experiment
from service.assignment.hashing import cumulative_bounds, hash_prefix, pick_index, unit_fraction
from service.assignment.snapshot import moved_ranges
from service.experiments.schema import Experiment
from tests.experiment_files import minimal_experiment


def test_one_allocation_moves_nothing_and_a_shift_moves_the_stretch_between() -> None:
    assert moved_ranges([(0.5, 1.0)]) == []
    assert moved_ranges([(0.5, 1.0), (0.5, 1.0)]) == []
    assert moved_ranges([(0.5, 1.0), (0.2, 1.0)]) == [(0.2, 0.5)]
    # A three-way split whose middle grew on both sides: two stretches, merged where adjacent.
    assert moved_ranges([(0.4, 0.6, 1.0), (0.3, 0.7, 1.0)]) == [(0.3, 0.4), (0.6, 0.7)]
    assert moved_ranges([(0.5, 1.0), (0.2, 1.0), (0.2, 0.5, 1.0)]) == [(0.2, 1.0)]


weights = st.lists(st.integers(0, 10), min_size=3, max_size=3).filter(lambda w: sum(w) > 0)


@settings(max_examples=60, deadline=None)
@given(st.lists(weights, min_size=1, max_size=4), st.lists(st.text(min_size=1), max_size=30))
def test_the_core_consults_history_only_inside_moved_ranges(
    history: list[list[int]], units: list[str]
) -> None:
    normalized = [tuple(x / sum(w) for x in w) for w in history]
    experiment = Experiment.model_validate(
        minimal_experiment(variants=[{"key": k, "weight": 1 / 3} for k in "abc"], control="a")
    )
    compiled = compile_experiment(experiment, Allocation(normalized[-1], tuple(normalized[:-1])))
    ranges = moved_ranges([compiled.bounds, *compiled.other_bounds])
    for unit in units:
        asked: list[str] = []

        def stored(asked: list[str] = asked) -> None:
            asked.append("asked")

        assign(compiled, unit, {}, stored)
        fraction = unit_fraction(hash_prefix("variant", "exp", experiment.seed), unit)
        inside = any(low <= fraction < high for low, high in ranges)
        assert bool(asked) == inside, (fraction, ranges)
    # Everywhere outside, every allocation picks the same variant.
    sets = [cumulative_bounds(w) for w in normalized if sum(w) > 0]
    for fraction in (i / 997 for i in range(997)):
        if not any(low <= fraction < high for low, high in ranges):
            assert len({pick_index(fraction, bounds) for bounds in sets}) == 1
