"""Fixed-bin histograms of model inputs and outputs (the sketches' pure core).

Bins are fixed per model, so sketches from any process and any hour add up bin by bin;
values outside the edges are counted below or above, NaN and infinities as invalid.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
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


MAX_CHUNK_VALUES = 1 << 18
"""Values binned at once by ``sketch_columns``: its working arrays (the values as float64 and
their squares, their bins, a finite mask: 18 bytes a value) stay near 4.5 MiB, or one column's
worth when a column alone is longer."""


_CACHE_VALUES = 1 << 15
"""Values compared with every edge before moving on (256 KiB as float64: they stay in cache)."""


def _binnable(edges: np.ndarray) -> bool:
    """Edges ``sketch_columns`` bins itself: finite, non-decreasing, at least two. Anything else
    goes through ``sketch_of`` (``np.histogram``), which answers it as it always did."""
    return (
        edges.ndim == 1 and edges.size >= 2 and bool(np.all(np.isfinite(edges)))
        and not bool(np.any(edges[:-1] > edges[1:]))
    )  # fmt: skip


def sketch_columns(table: np.ndarray, edges: Sequence[np.ndarray]) -> list[Sketch]:
    """``sketch_of`` of every column of a ``[rows, columns]`` table, column ``j`` into
    ``edges[j]``, with the same results, computed a block of columns at a time. Pure.

    The sketch thread bins a whole drain this way. ``np.histogram`` sorts each column and
    ``np.searchsorted`` takes about 40 ns a value in its branchy binary search; here a value's
    bin is the number of edges at or below it, counted one edge at a time over the whole
    block (one vectorised comparison per edge, about 12 ns a value for 33 edges), and one
    ``bincount`` counts every column's bins at once. Bin ``i`` holds
    ``edges[i] <= x < edges[i + 1]``, the last one ``x == edges[-1]`` too, as in
    ``np.histogram``. A column is never split across blocks and its sums are taken over its
    own contiguous values, so they add up in ``sketch_of``'s (pairwise) order: equal to the
    last bit, not merely close.
    """
    if table.ndim != 2 or table.shape[1] != len(edges):
        raise ValueError("one set of edges per column of a two-dimensional table")
    rows, width = table.shape
    found: dict[int, Sketch] = {}
    groups: dict[int, list[int]] = {}  # columns sharing one edges array: usually all of them
    for column, column_edges in enumerate(edges):
        groups.setdefault(id(column_edges), []).append(column)
    per_block = max(1, MAX_CHUNK_VALUES // max(rows, 1))
    for columns in groups.values():
        bins = np.asarray(edges[columns[0]])
        if not _binnable(bins):
            for column in columns:
                found[column] = sketch_of(table[:, column], bins)
            continue
        as_tuple = tuple(float(e) for e in bins)
        for start in range(0, len(columns), per_block):
            block = columns[start : start + per_block]
            found.update(zip(block, _sketch_block(table, block, bins, as_tuple), strict=True))
    return [found[column] for column in range(width)]


def _sketch_block(
    table: np.ndarray, columns: list[int], edges: np.ndarray, as_tuple: tuple[float, ...]
) -> list[Sketch]:
    """Columns ``columns`` of ``table``, all into ``edges``, as one [columns, rows] block."""
    contiguous = columns[-1] - columns[0] == len(columns) - 1
    picked = table[:, columns[0] : columns[-1] + 1] if contiguous else table[:, columns]
    values = np.ascontiguousarray(picked.T, dtype=np.float64)  # each column's values in a row
    # slot: 0 below the first edge, i + 1 in bin i, edges.size above the last, + 1 invalid.
    slot = np.zeros(values.shape, np.uint8 if edges.size < 255 else np.int32)
    flat, flat_slot = values.ravel(), slot.ravel()
    inner, last = edges[:-1].tolist(), float(edges[-1])
    over = np.empty(min(_CACHE_VALUES, flat.size), np.bool_)
    for start in range(0, flat.size, _CACHE_VALUES):  # each piece stays in cache for every edge
        piece, piece_slot = (
            flat[start : start + _CACHE_VALUES],
            flat_slot[start : start + _CACHE_VALUES],
        )
        piece_over = over[: piece.size]
        for edge in inner:
            np.greater_equal(piece, edge, out=piece_over)
            piece_slot += piece_over
        np.greater(piece, last, out=piece_over)  # the last bin is closed: == edges[-1] is in it
        piece_slot += piece_over
    finite = np.isfinite(values)
    all_finite = bool(finite.all())
    if not all_finite:  # NaN compared as below, infinities as outside: both are invalid
        slot[~finite] = edges.size + 1
    slot_count = edges.size + 2
    if values.shape[1] >= 1000:  # a bincount per column: no wide copy of the slots
        counts = np.stack([np.bincount(row, minlength=slot_count) for row in slot])
    else:  # short columns: one bincount, each column's slots offset past the previous ones'
        offsets = np.arange(len(columns), dtype=np.intp)[:, None] * slot_count
        counts = np.bincount((slot + offsets).ravel(), minlength=len(columns) * slot_count)
        counts = counts.reshape(len(columns), slot_count)
    if all_finite:
        sums, squares = values.sum(axis=1), np.square(values).sum(axis=1)
    else:
        good = [row[keep] for row, keep in zip(values, finite, strict=True)]
        sums = np.array([g.sum() for g in good], dtype=np.float64)
        squares = np.array([np.square(g).sum() for g in good], dtype=np.float64)
    found = []
    for row, total, square in zip(counts.tolist(), sums.tolist(), squares.tolist(), strict=True):
        below, *inside, above, invalid = row
        found.append(Sketch(
            as_tuple, tuple(inside), below, above, invalid, values.shape[1] - invalid, total, square,
        ))  # fmt: skip
    return found


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
