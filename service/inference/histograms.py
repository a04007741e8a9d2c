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


def reference_edges(values: np.ndarray, bins: int = MAX_BINS) -> np.ndarray:
    """Bin edges from a reference sample: its quantiles, so each bin holds about as many rows.

    Ties collapse (a column of few values gets fewer bins); a constant column gets one bin of
    width 1 around its value.
    """
    finite = np.asarray(values, dtype=np.float64).ravel()
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        raise ValueError("no finite values to set bins from")
    edges = np.unique(np.quantile(finite, np.linspace(0.0, 1.0, bins + 1)))
    if edges.size < 2:
        edges = np.array([edges[0] - 0.5, edges[0] + 0.5])
    return edges


def build_profile(model_sha256: str, columns: Iterable[tuple[str, np.ndarray]]) -> dict[str, Any]:
    """A reference profile: per feature, bins set from the reference and its histogram on them."""
    features = {}
    for feature, values in columns:
        sketch = sketch_of(values, reference_edges(values))
        features[feature] = {
            "edges": list(sketch.edges), "counts": list(sketch.counts), "below": sketch.below,
            "above": sketch.above, "invalid": sketch.invalid, "n": sketch.n,
            "sum_value": sketch.sum_value, "sum_square": sketch.sum_square,
        }  # fmt: skip
    return {"format": "abx-reference-profile/1", "model_sha256": model_sha256, "features": features}


def profile_sketches(profile: Mapping[str, Any]) -> dict[str, Sketch]:
    """The reference histogram of every feature of a profile (``build_profile``'s output)."""
    found = {}
    for feature, item in profile["features"].items():
        found[feature] = Sketch(
            tuple(float(e) for e in item["edges"]), tuple(int(c) for c in item["counts"]),
            int(item["below"]), int(item["above"]), int(item["invalid"]), int(item["n"]),
            float(item["sum_value"]), float(item["sum_square"]),
        )  # fmt: skip
    return found
