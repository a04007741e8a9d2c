"""A drift check measures all its windows at once; that must give what measuring them one at a
time gives, and the sketches it reads (binary format) must be the ones written."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import psycopg
from hypothesis import given, settings
from hypothesis import strategies as st

from service.decisions import drift
from service.decisions.drift import check_drift, group, window_distance, window_starts
from service.experiments.schema import DriftGuardrail
from service.inference.histograms import DEFAULT_EDGES, Sketch, reference_edges, sketch_of
from service.inference.sketches import SKETCHES, read_sketches
from service.storage.database import Database
from service.storage.writer import BatchWriter

NOW = datetime(2026, 6, 1, 12, 30, tzinfo=UTC)
PROFILE_EDGES = reference_edges(
    np.random.default_rng(4).normal(size=3000), bins=16
)  # 17 edges: two bin counts
FEATURES = ["output:probability[0]", "input:features[0]", "input:features[1]", "input:features[2]"]


@st.composite
def histories(
    draw: Any,
) -> tuple[DriftGuardrail, dict[tuple[str, datetime], dict[str, Sketch]], dict[str, Sketch] | None]:
    guardrail = DriftGuardrail(
        kind=draw(st.sampled_from(["input_drift", "prediction_drift"])),
        measure=draw(st.sampled_from(["psi", "ks", "wasserstein"])),
        windows=draw(st.integers(1, 4)),
        window_hours=draw(st.integers(1, 3)),
        min_rows=draw(st.sampled_from([1, 200])),
        threshold=0.1,
    )
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    # Each variant's model bins a feature on the default edges or on its profile's.
    edges = {
        (v, f): draw(st.sampled_from([DEFAULT_EDGES, PROFILE_EDGES]))
        for v in "ab"
        for f in FEATURES
    }
    grouped: dict[tuple[str, datetime], dict[str, Sketch]] = {}
    for back in range(1, 16):
        hour = NOW.replace(minute=0) - timedelta(hours=back)
        for variant in "ab":
            if draw(st.integers(0, 5)) == 0:
                continue  # an hour without traffic
            shift = draw(st.sampled_from([0.0, 0.0, 0.3, 2.0])) if variant == "b" else 0.0
            grouped[(variant, hour)] = {
                feature: sketch_of(rng.normal(shift, 1.0, draw(st.sampled_from([50, 400, 900]))),
                                   edges[(variant, feature)])
                for feature in FEATURES
                if draw(st.integers(0, 7))  # now and then a feature is missing
            }  # fmt: skip
    profile = None
    if draw(st.booleans()):
        profile = {f: sketch_of(rng.normal(size=3000), PROFILE_EDGES) for f in FEATURES}
    return guardrail, grouped, profile


@settings(max_examples=80, deadline=None)
@given(histories(), st.integers(0, 12))
def test_a_check_measures_its_windows_together_as_one_at_a_time(drawn: Any, history: int) -> None:
    guardrail, grouped, profile = drawn
    check = check_drift(guardrail, "b", "a", grouped, NOW, history, profile)
    starts = window_starts(NOW, guardrail, max(history, guardrail.windows))
    one_at_a_time = [window_distance(guardrail, "b", "a", grouped, s, profile) for s in starts]
    assert check.history == one_at_a_time
    over = 0
    for window in reversed(one_at_a_time):
        if window.distance is None or window.distance <= guardrail.threshold:
            break
        over += 1
    assert (check.windows_over, check.tripped) == (over, over >= guardrail.windows)
    assert (check.distance, check.feature) == (
        one_at_a_time[-1].distance,
        one_at_a_time[-1].feature,
    )


def test_a_check_without_any_sketch_has_no_distance_in_any_window() -> None:
    guardrail = DriftGuardrail(kind="input_drift", windows=3)
    check = check_drift(guardrail, "b", "a", {}, NOW, 5)
    assert [w.distance for w in check.history] == [None] * 5
    assert not check.tripped and check.windows_over == 0


def test_sketches_read_back_in_binary_are_the_ones_written(db: str) -> None:
    rng = np.random.default_rng(6)
    hour = datetime(2026, 6, 1, 9, tzinfo=UTC)
    written = {}
    for h, variant, feature in [(0, "a", "input:x[0]"), (0, "b", "input:x[0]"), (1, "a", "output:p[0]"),
                                (2, "a", "input:x[0]")]:  # fmt: skip
        values = rng.normal(size=500) * 40
        values[:3] = [np.nan, np.inf, 1e6]
        edges = PROFILE_EDGES if variant == "b" else DEFAULT_EDGES
        written[(variant, "sha", hour + timedelta(hours=h), feature)] = sketch_of(values, edges)
    database = Database(db)
    database.open()
    writer = BatchWriter(database, {SKETCHES.table: SKETCHES})
    try:
        for (variant, sha, at, feature), s in written.items():
            writer.put(SKETCHES.table, ("exp", variant, sha, at, feature, list(s.edges), list(s.counts),
                                        s.below, s.above, s.invalid, s.n, s.sum_value, s.sum_square))  # fmt: skip
        writer.flush()
        assert writer.pending_rows() == 0
    finally:
        writer.close()
        database.close()
    with psycopg.connect(db) as conn:
        found = read_sketches(conn, "exp", hour)
        assert found == written
        assert all(
            isinstance(s.counts[0], int) and isinstance(s.sum_value, float) for s in found.values()
        )
        default = [s.edges for (v, *_), s in found.items() if v == "a"]
        assert all(edges is default[0] for edges in default)  # equal edges kept as one tuple
        assert read_sketches(conn, "exp", hour + timedelta(hours=1), hour + timedelta(hours=2)) == {
            k: s for k, s in written.items() if k[2] == hour + timedelta(hours=1)
        }
        assert read_sketches(conn, "other", hour) == {}
        grouped = group(found)
        assert set(grouped) == {("a", hour), ("b", hour), ("a", hour + timedelta(hours=1)),
                                ("a", hour + timedelta(hours=2))}  # fmt: skip


def test_a_variant_served_by_two_models_on_other_bins_keeps_the_larger_sketch() -> None:
    """Sketches of one feature on different bins (a reload mid-hour, the fallback's model) are
    not merged: the one of more rows stands for the variant, whichever was read first; sketches
    on the same bins add up."""
    rng = np.random.default_rng(3)
    fine = np.linspace(-3.0, 3.0, 21)
    coarse = np.linspace(-3.0, 3.0, 7)
    big = sketch_of(rng.normal(size=500), fine)
    small = sketch_of(rng.normal(size=40), coarse)
    same = sketch_of(rng.normal(size=60), fine)
    hour = datetime(2026, 6, 1, 10, tzinfo=UTC)
    for order in ([("m1", big), ("m2", small)], [("m2", small), ("m1", big)]):
        rows = {("b", model, hour, "output:p"): sketch for model, sketch in order}
        assert drift.group(rows)[("b", hour)]["output:p"] == big
    merged = drift.group({("b", "m1", hour, "output:p"): big, ("b", "m2", hour, "output:p"): same})
    assert merged[("b", hour)]["output:p"] == big.merge(same)
    assert drift.combine(small, big) == big and drift.combine(big, small) == big
