"""The sketch thread's fast path against the straightforward one it replaced.

``sketch_columns`` bins a block of columns at once and ``sketch_offers`` stacks each array name
with one concatenation; both must give exactly what ``sketch_of`` (``np.histogram``) and
``sketch_offers_one_by_one`` give, counts and sums alike, on any data the service may be
handed: NaN and infinities, values on the edges, integers, odd shapes, strings, offers that do
not agree with one another, and bins from reference profiles.
"""

from __future__ import annotations

import tracemalloc
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.inference.histograms import (
    DEFAULT_EDGES,
    MAX_CHUNK_VALUES,
    MAX_FEATURES,
    reference_edges,
    sketch_columns,
    sketch_of,
)
from service.inference.sketches import SketchBook, sketch_offers, sketch_offers_one_by_one

PROFILE_EDGES = reference_edges(np.random.default_rng(3).normal(2.0, 3.0, size=2000))
TIED_EDGES = np.array([-1.0, 0.0, 0.0, 0.5, 2.0, 2.0])  # non-decreasing, as np.histogram allows
EDGE_CHOICES = [DEFAULT_EDGES, PROFILE_EDGES, TIED_EDGES]
SPECIAL = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e300, -1e300, *DEFAULT_EDGES[[0, 7, -1]],
           *PROFILE_EDGES[[0, 5, -1]], *TIED_EDGES]  # fmt: skip


def column_values(draw: Any, rows: int, dtype: str) -> np.ndarray:
    """One column: mostly ordinary values, some on an edge, some NaN or infinite."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    values = rng.normal(
        draw(st.sampled_from([0.0, 0.5, 50.0])), draw(st.sampled_from([0.3, 3.0, 3e4])), rows
    )
    special = rng.random(rows) < draw(st.sampled_from([0.0, 0.1, 0.5]))
    values[special] = rng.choice(SPECIAL, size=int(special.sum()))
    if dtype == "int64":
        return (
            np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0).clip(-1e6, 1e6).astype(np.int64)
        )
    if dtype == "bool":
        return values > 0
    if dtype == "float32":  # the largest finite values float32 holds, infinities kept
        values = np.where(np.isfinite(values), values.clip(-3e38, 3e38), values)
    return values.astype(dtype)


@st.composite
def tables(draw: Any) -> tuple[np.ndarray, list[np.ndarray]]:
    rows = draw(st.integers(0, 300))
    width = draw(st.integers(1, 8))
    dtype = draw(st.sampled_from(["float32", "float64", "int64", "bool"]))
    table = np.stack([column_values(draw, rows, dtype) for _ in range(width)], axis=1)
    # Columns share an edges object (the default bins) or have their own (a profile's).
    edges = [draw(st.sampled_from(EDGE_CHOICES)) for _ in range(width)]
    if draw(st.booleans()):
        table = np.asfortranarray(table)  # a column-major table: the block is then a view
    return table, edges


@settings(max_examples=150, deadline=None)
@given(tables())
def test_sketch_columns_equals_sketch_of_column_by_column(
    drawn: tuple[np.ndarray, list[np.ndarray]],
) -> None:
    table, edges = drawn
    with np.errstate(over="ignore"):  # 1e300 squared is infinite, on both paths alike
        expected = [sketch_of(table[:, j], edges[j]) for j in range(len(edges))]
        assert sketch_columns(table, edges) == expected


def test_blocks_of_columns_and_cache_pieces_change_nothing() -> None:
    """Tables longer than a cache piece and wider than a block: split up, summed alike."""
    rng = np.random.default_rng(11)
    for rows, width in ((70_000, 5), (MAX_CHUNK_VALUES + 5, 2)):
        table = rng.standard_t(3, size=(rows, width)).astype(np.float32)
        table[rng.random(table.shape) < 0.01] = np.nan
        table[rng.random(table.shape) < 0.01] = 1.0  # the last inner edge of the default bins
        edges = [DEFAULT_EDGES] * (width - 1) + [PROFILE_EDGES]
        expected = [sketch_of(table[:, j], edges[j]) for j in range(width)]
        assert sketch_columns(table, edges) == expected
        assert sum(s.invalid for s in expected) > 0  # the non-finite path was taken


def test_edges_it_does_not_bin_itself_go_through_np_histogram() -> None:
    values = np.array([[0.5, 1.0], [2.0, np.nan], [-3.0, 7.0]])
    one_edge = np.array([1.0])
    assert sketch_columns(values, [one_edge, one_edge]) == [
        sketch_of(values[:, j], one_edge) for j in range(2)
    ]
    decreasing = np.array([0.0, 2.0, 1.0])
    with pytest.raises(ValueError, match="monotonically"):
        sketch_of(values[:, 0], decreasing)
    with pytest.raises(ValueError, match="monotonically"):
        sketch_columns(values, [DEFAULT_EDGES, decreasing])


def test_sketch_columns_refuses_a_table_its_edges_do_not_fit() -> None:
    with pytest.raises(ValueError, match="one set of edges per column"):
        sketch_columns(np.zeros(4), [DEFAULT_EDGES])
    with pytest.raises(ValueError, match="one set of edges per column"):
        sketch_columns(np.zeros((4, 3)), [DEFAULT_EDGES, DEFAULT_EDGES])


def test_working_memory_stays_bounded_whatever_the_table() -> None:
    """A 100,000 x 64 float32 table (25 MiB; 51 MiB as float64) is binned in blocks whose
    working arrays take about 18 bytes a value of ``MAX_CHUNK_VALUES``."""
    table = np.random.default_rng(5).normal(size=(100_000, 64)).astype(np.float32)
    edges = [DEFAULT_EDGES] * 64
    tracemalloc.start()
    try:
        sketch_columns(table, edges)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1.5 * 18 * MAX_CHUNK_VALUES, peak
    assert peak < table.nbytes / 2


# --- whole offers, as the drain takes them --------------------------------------------------


def edges_for(sha: str, feature: str) -> np.ndarray:
    """Model "p" has a profile for its first input column and its output; the rest default."""
    if sha == "p" and feature in ("input:features[0]", "output:probability[0]"):
        return PROFILE_EDGES
    return DEFAULT_EDGES


def regular_offer(
    rng: np.random.Generator, rows: int, width: int, shift: float
) -> tuple[dict[str, Any], dict[str, Any]]:
    features = rng.normal(shift, 1.0, size=(rows, width)).astype(np.float32)
    features[rng.random(features.shape) < 0.05] = np.nan
    return {"features": features}, {
        "probability": (1 / (1 + np.exp(-features[:, :1]))).astype(np.float32)
    }


IRREGULAR = [
    "missing name", "extra name", "other width", "one-dimensional", "three-dimensional",
    "strings", "strings among numbers", "objects", "scalar", "empty", "lists", "integers",
]  # fmt: skip


def irregular_offer(
    rng: np.random.Generator, kind: str, rows: int, width: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    feeds, outputs = regular_offer(rng, rows, width, 0.0)
    if kind == "missing name":
        del outputs["probability"]
    elif kind == "extra name":
        feeds["extra"] = rng.normal(size=(rows, 2))
    elif kind == "other width":
        feeds["features"] = rng.normal(size=(rows, width + 1))
    elif kind == "one-dimensional":
        outputs["probability"] = outputs["probability"].ravel()
    elif kind == "three-dimensional":
        feeds["features"] = rng.normal(size=(rows, 1, width))
    elif kind == "strings":
        feeds = {"features": feeds["features"], "text": np.array(["a"] * rows)}
    elif kind == "strings among numbers":
        feeds["features"] = np.array([["x"] * width] * rows)
    elif kind == "objects":
        outputs["probability"] = np.array([{"p": 1}] * rows, dtype=object)
    elif kind == "scalar":
        outputs["probability"] = np.float32(0.5)
    elif kind == "empty":
        feeds["features"] = np.zeros((0, width), np.float32)
    elif kind == "lists":
        feeds["features"] = feeds["features"].tolist()
    elif kind == "integers":
        feeds["features"] = rng.integers(-3, 3, size=(rows, width))
    return feeds, outputs


@st.composite
def offer_lists(draw: Any) -> list[tuple[str, str, str, int, dict[str, Any], dict[str, Any]]]:
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    width = draw(st.sampled_from([1, 3, 20, MAX_FEATURES + 3]))
    offers = []
    for _ in range(draw(st.integers(1, 40))):
        sha = draw(st.sampled_from(["p", "q"]))
        hour = draw(st.sampled_from([100, 101]))
        rows = draw(st.integers(1, 30))
        if draw(st.integers(0, 9)) == 0:
            feeds, outputs = irregular_offer(rng, draw(st.sampled_from(IRREGULAR)), rows, width)
        else:
            feeds, outputs = regular_offer(rng, rows, width, draw(st.sampled_from([0.0, 5.0])))
        offers.append(("exp", draw(st.sampled_from(["a", "b"])), sha, hour, feeds, outputs))
    return offers


def rows_of(offers: list[Any], sketch: Any) -> list[tuple[Any, ...]]:
    """What a drain would hand the writer, keyed as it groups offers."""
    grouped: dict[tuple[Any, ...], list[Any]] = {}
    for offer in offers:
        grouped.setdefault(offer[:4], []).append(offer)
    return [
        (*key, feature, found)
        for key, members in grouped.items()
        for feature, found in sketch(members, key[2], edges_for)
    ]


@settings(max_examples=100, deadline=None)
@given(offer_lists())
def test_a_drain_writes_what_the_straightforward_path_would(offers: list[Any]) -> None:
    expected = rows_of(offers, sketch_offers_one_by_one)
    assert rows_of(offers, sketch_offers) == expected
    written: list[tuple[Any, ...]] = []
    book = SketchBook(lambda stream, row: written.append(row) or True, edges_for=edges_for,
                      clock=lambda: 0.0)  # fmt: skip
    for _experiment, variant, sha, _hour, feeds, outputs in offers:
        book.offer("exp", variant, sha, feeds, outputs)
    assert book.drain() == len(written)
    assert {row[3] for row in written} <= {datetime.fromtimestamp(0, UTC)}
    drained = {(row[1], row[2], row[4]): (row[5], row[6], row[7:]) for row in written}
    by_key = {}
    for offer in offers:  # the book's clock puts every offer in hour 0: regroup without hours
        by_key.setdefault((offer[1], offer[2]), []).append(offer)
    for (variant, sha), members in by_key.items():
        for feature, sketch in sketch_offers_one_by_one(members, sha, edges_for):
            edges, counts, rest = drained.pop((variant, sha, feature))
            assert (edges, counts) == (list(sketch.edges), list(sketch.counts))
            assert rest == (sketch.below, sketch.above, sketch.invalid, sketch.n, sketch.sum_value,
                            sketch.sum_square)  # fmt: skip
    assert drained == {}


def test_at_most_max_features_columns_of_each_kind_as_before() -> None:
    rng = np.random.default_rng(8)
    offers = [("exp", "a", "q", 1, {"first": rng.normal(size=(4, 40)), "second": rng.normal(size=(4, 40))},
               {"probability": rng.random((4, 1))}) for _ in range(3)]  # fmt: skip
    found = sketch_offers(offers, "q", edges_for)
    assert found == sketch_offers_one_by_one(offers, "q", edges_for)
    inputs = [feature for feature, _ in found if feature.startswith("input:")]
    assert len(inputs) == MAX_FEATURES
    assert inputs[39:41] == ["input:first[39]", "input:second[0]"]
    assert inputs[-1] == f"input:second[{MAX_FEATURES - 41}]"
    assert [f for f, _ in found if f.startswith("output:")] == ["output:probability[0]"]


@pytest.mark.parametrize(
    "shape",
    ["one-dimensional", "three-dimensional", "strings beside numbers", "integers", "booleans"],
)
def test_offers_alike_in_an_unusual_shape_take_the_fast_path_to_the_same_rows(shape: str) -> None:
    rng = np.random.default_rng(9)
    offers = []
    for rows in (1, 7, 3):
        feeds: dict[str, Any] = {"features": rng.normal(size=(rows, 3))}
        outputs: dict[str, Any] = {"probability": rng.random((rows, 1))}
        if shape == "one-dimensional":
            outputs["probability"] = outputs["probability"].ravel()
        elif shape == "three-dimensional":
            feeds["features"] = rng.normal(size=(rows, 2, 3))
        elif shape == "strings beside numbers":
            feeds["text"] = np.array(["a", "b", "c"] * rows)[:rows]
        elif shape == "integers":
            feeds["features"] = rng.integers(-2, 3, size=(rows, 3))
        elif shape == "booleans":
            feeds["features"] = rng.random((rows, 3)) > 0.5
        offers.append(("exp", "a", "p", 1, feeds, outputs))
    found = sketch_offers(offers, "p", edges_for)
    assert found == sketch_offers_one_by_one(offers, "p", edges_for)
    width = 6 if shape == "three-dimensional" else 3
    assert [f for f, _ in found] == ["output:probability[0]"] + [
        f"input:features[{j}]" for j in range(width)
    ]
    assert all(sketch.n == 11 for _, sketch in found)
