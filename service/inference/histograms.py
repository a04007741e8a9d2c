"""Fixed-bin histograms of model inputs and outputs (the sketches' pure core).

Bins are fixed per model, so sketches from any process and any hour add up bin by bin;
values outside the edges are counted below or above, NaN and infinities as invalid.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

MAX_FEATURES = 64
MAX_BINS = 32


def _default_edges() -> np.ndarray:
    """32 bins: 24 even ones over [-1, 1] (scores, probabilities, scaled features), then one
    per decade out to ±10,000 on each side."""
    inner = np.linspace(-1.0, 1.0, 25)
    outer = np.array([10.0, 100.0, 1000.0, 10_000.0])
    return np.concatenate([-outer[::-1], inner, outer])


DEFAULT_EDGES = _default_edges()


@dataclass(frozen=True)
class Sketch:
    """One feature's histogram: ``counts`` over ``edges``, plus what fell outside them."""

    edges: tuple[float, ...]
    counts: tuple[int, ...]
    below: int
    above: int
    invalid: int
    n: int
    """Finite values (in range or not); NaN and infinities are ``invalid``."""
    sum_value: float
    sum_square: float

    @property
    def histogram(self) -> list[int]:
        """(below, bins..., above): the layout ``analysis.drift`` measures."""
        return [self.below, *self.counts, self.above]

    @property
    def mean(self) -> float:
        return self.sum_value / self.n if self.n else float("nan")

    @property
    def variance(self) -> float:
        return self.sum_square / self.n - self.mean**2 if self.n else float("nan")

    def merge(self, other: Sketch) -> Sketch:
        if other.edges != self.edges:
            raise ValueError("sketches with different bins cannot be merged")
        return Sketch(
            self.edges,
            tuple(a + b for a, b in zip(self.counts, other.counts, strict=True)),
            self.below + other.below, self.above + other.above, self.invalid + other.invalid,
            self.n + other.n, self.sum_value + other.sum_value, self.sum_square + other.sum_square,
        )  # fmt: skip


def sketch_of(values: np.ndarray, edges: np.ndarray) -> Sketch:
    """Bin one feature's values (any shape) into ``edges``. Pure."""
    flat = np.asarray(values, dtype=np.float64).ravel()
    finite = np.isfinite(flat)
    good = flat[finite]
    counts, _ = np.histogram(good, bins=edges)
    return Sketch(
        tuple(float(e) for e in edges),
        tuple(int(c) for c in counts),
        int(np.count_nonzero(good < edges[0])),
        int(np.count_nonzero(good > edges[-1])),
        int(flat.size - good.size),
        int(good.size),
        float(good.sum()),
        float(np.square(good).sum()),
    )


def feature_columns(kind: str, arrays: Mapping[str, Any]) -> Iterable[tuple[str, np.ndarray]]:
    """Each numeric column of each array, named ``<kind>:<name>[<column>]``, at most MAX_FEATURES."""
    emitted = 0
    for name, value in arrays.items():
        array = np.asarray(value)
        if array.dtype.kind not in "fiub" or array.size == 0:
            continue  # strings and maps: nothing to bin
        table = array.reshape(array.shape[0], -1) if array.ndim > 1 else array.reshape(-1, 1)
        for column in range(table.shape[1]):
            if emitted >= MAX_FEATURES:
                return
            emitted += 1
            yield f"{kind}:{name}[{column}]", table[:, column]
