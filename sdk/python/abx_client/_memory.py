"""A bounded memory of answers by unit, kept off the garbage collector and free of long pauses.

The client remembers which units it has queued an exposure for, and the server's answers for
moved-range units, for the newest ``size`` units of each (100,000 by default). An
``OrderedDict`` keyed by ``(experiment, seed, unit)`` tuples did that, and with a stopped
server cost one call in ~50,000 several milliseconds (benchmarks/README.md, "The
server-stopped stall"), twice over:

* Each new key was a tuple, tracked by the garbage collector until a collection looked at it.
  Once the memory is full every call adds one tracked object and frees another, so the
  collector's young-generation count barely moves: collections become rare and the young
  generation grows to ~85,000 tuples, which the next one walks (7.8 ms measured). Here a unit
  id (a string) maps to a small dict of strings, which the collector never tracks.
* A dict added to at the back and deleted from at the front fills its entries table and is
  then rebuilt in one call: ~75,000 additions after it filled, O(size), and an
  ``OrderedDict`` rebuilds its node index too (13-17 ms of CPU measured at 100,000). Here the
  memory is split by the unit's hash into shards of at most ``SHARD_SIZE`` units, so a
  rebuild touches one shard. Each shard forgets its own oldest unit first, so the memory keeps
  about, not exactly, the newest ``size`` units (exactly, while ``size`` fits one shard).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

SHARD_SIZE = 512


def memory_key(experiment: str, seed: str) -> str:
    """Which experiment and seed an answer belongs to: ``experiment`` and ``seed`` joined so
    that no two pairs give the same text (their lengths go with them)."""
    return f"{len(experiment)}:{experiment}{len(seed)}:{seed}"


class UnitMemory:
    """(unit, ``memory_key(...)``) -> variant: lock-free reads, writes under ``lock``.

    The application's hottest path reads ``shards[hash(unit) % count].get(unit)`` itself and
    then the entry's ``.get(key)``: the unit's hash is computed once, cached in its string."""

    def __init__(self, size: int, lock: threading.Lock) -> None:
        size = max(1, size)
        count = -(-size // SHARD_SIZE)
        self.shards = tuple(OrderedDict[str, dict[str, str]]() for _ in range(count))
        self.count = count
        self._limit = -(-size // count)
        self._lock = lock

    def get(self, unit: str, key: str) -> str | None:
        entry = self.shards[hash(unit) % self.count].get(unit)
        return None if entry is None else entry.get(key)

    def put(self, unit: str, key: str, value: str) -> None:
        shard = self.shards[hash(unit) % self.count]
        with self._lock:
            entry = shard.get(unit)
            if entry is not None:
                entry[key] = value
                return
            shard[unit] = {key: value}
            if len(shard) > self._limit:
                shard.popitem(last=False)

    def __len__(self) -> int:
        """Units remembered."""
        return sum(len(shard) for shard in self.shards)
