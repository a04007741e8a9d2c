"""Fixed log-spaced latency bins, so per-day histograms add up and quantiles come out of sums. Pure.

Bin i holds latencies in [EDGES[i-1], EDGES[i]) milliseconds (bin 0 everything below
EDGES[0], the last bin everything above the last edge); 100 bins a decade from 10 µs
to 100 s bound the relative error of any quantile to about 2.3 %. The width limits the
narrowest latency margin a guardrail can judge (docs/statistics.md): 20 bins a decade
(12 %) could not catch a harm of twice a 20 % margin, 100 bins catch it. Changing the
bins means a migration that rebuilds ``model_health`` from ``predictions`` (0024).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

BINS_PER_DECADE = 100
EDGES: tuple[float, ...] = tuple(
    0.01 * 10 ** (i / BINS_PER_DECADE) for i in range(7 * BINS_PER_DECADE + 1)
)
BIN_COUNT = len(EDGES) + 1


def bin_of(latency_ms: float) -> int:
    return bisect.bisect_right(EDGES, latency_ms)


def quantile(counts: Sequence[int], q: float) -> float | None:
    """The upper edge of the bin holding the q-quantile (an upper bound), None without data."""
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    running = 0
    for index, count in enumerate(counts):
        running += count
        if running >= rank and count:
            return EDGES[min(index, len(EDGES) - 1)]
    return EDGES[-1]


def add(a: Sequence[int], b: Sequence[int]) -> list[int]:
    return [x + y for x, y in zip(a, b, strict=True)]
