"""Decide which stored allocation is in force. Pure: rows and times in, a plan out.

A weight change is announced ahead: its row gets ``effective_at`` a few
seconds in the future, so every serving process knows the switch time before
it comes. From that moment first assignments that the change would affect
stop being made under the old weights (they wait: control, unexposed), and a
lookup for such a unit first waits out one flush interval, so a first
assignment still buffered in another process reaches PostgreSQL before the
lookup reads it. The new weights become current once every live process has
(a) read the state after the switch time and (b) flushed every first
assignment it made under an earlier view (its heartbeat's ``flushed_through``).
A process that heard of the change late made first assignments after the switch
time under the old weights; they hold the switch until flushed, however late
they were made. Every process heartbeats at least twice within the time a
heartbeat counts as live (``ABX_STATE_POLL_SECONDS`` at most 5 s), so no live
process is skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from service.assignment.core import Allocation


@dataclass(frozen=True)
class AllocationRow:
    weights: dict[str, float]
    effective_at: datetime


@dataclass(frozen=True)
class AllocationPlan:
    """What to serve now (``before_switch``) and from ``switch_at`` on (``after_switch``)."""

    before_switch: Allocation
    after_switch: Allocation | None = None
    switch_at: datetime | None = None


def resolve_allocation(
    rows: Sequence[AllocationRow],
    variant_keys: Sequence[str],
    database_now: datetime,
    writers_flushed_through: datetime | None,
) -> AllocationPlan | None:
    """Plan the allocation from the history of one seed (rows in creation order).

    ``writers_flushed_through`` is the least flushed-through time over live
    writers (None when none is alive, so nothing can be buffered anywhere).
    Returns None when there is no history.
    """
    if not rows:
        return None

    def ordered(row: AllocationRow) -> tuple[float, ...]:
        return tuple(row.weights.get(key, 0.0) for key in variant_keys)

    current_index = 0  # the first allocation of a seed has nothing before it to wait for
    for index in range(1, len(rows)):
        due = rows[index].effective_at <= database_now
        flushed = (
            writers_flushed_through is None or writers_flushed_through > rows[index].effective_at
        )
        if due and flushed:
            current_index = index
    earlier = tuple(ordered(row) for i, row in enumerate(rows) if i != current_index)
    current = Allocation(ordered(rows[current_index]), earlier)
    latest = len(rows) - 1
    if latest == current_index:
        return AllocationPlan(current)
    switching = Allocation(current.weights, earlier, pending_weights=ordered(rows[latest]))
    return AllocationPlan(current, switching, rows[latest].effective_at)
