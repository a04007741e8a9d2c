"""Decide which stored allocation is in force. Pure: rows and times in, an ``Allocation`` out.

A newer allocation becomes current only once every live serving process has
(a) read the state after the allocation became due and (b) flushed every first
assignment it made before that read. Until then it is *pending*: first
assignments that the change would affect wait, so no unit can get one variant
from a buffered write in one process and another from a different process.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from service.assignment import Allocation


@dataclass(frozen=True)
class AllocationRow:
    weights: dict[str, float]
    effective_at: datetime


def resolve_allocation(
    rows: Sequence[AllocationRow],
    variant_keys: Sequence[str],
    database_now: datetime,
    writers_flushed_through: datetime | None,
) -> Allocation | None:
    """Pick current, earlier and pending weights from the allocation history of one seed.

    ``rows`` are in creation order; ``writers_flushed_through`` is the least
    flushed-through time over live writers (None when none is alive, so
    nothing can be buffered anywhere). Returns None when there is no history.
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
    latest = len(rows) - 1
    pending = None
    if latest != current_index and rows[latest].effective_at <= database_now:
        pending = ordered(rows[latest])
    earlier = tuple(ordered(row) for i, row in enumerate(rows) if i != current_index)
    return Allocation(ordered(rows[current_index]), earlier, pending)
