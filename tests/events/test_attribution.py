"""Attribution and sufficient-statistic deltas, checked against a direct per-unit computation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from service.events.attribution import Event, Exposure, Status, UnitTotals, apply_events, classify

T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)
WINDOW = timedelta(days=7)
GRACE = timedelta(hours=1)


def event(
    pk: int,
    unit: str,
    value: float,
    at: datetime,
    aggregation: str = "sum",
    received: datetime | None = None,
) -> Event:
    return Event(pk, "exp", "exp.v1", unit, "m", aggregation, value, at, received or at)


def test_classify() -> None:
    exposure = Exposure("b", T0)
    cases = {
        T0: Status.ATTRIBUTED,
        T0 + WINDOW: Status.ATTRIBUTED,
        T0 + WINDOW + timedelta(seconds=1): Status.OUTSIDE_WINDOW,
        T0 - timedelta(seconds=1): Status.PRE_PERIOD,
        T0 - WINDOW - timedelta(seconds=1): Status.OUTSIDE_WINDOW,
    }
    for at, expected in cases.items():
        assert (
            classify(event(1, "u", 1, at), exposure, WINDOW, T0 + timedelta(days=30), GRACE)
            is expected
        )
    late = event(1, "u", 1, T0, received=T0)
    assert classify(late, None, WINDOW, T0 + timedelta(minutes=5), GRACE) is Status.PENDING
    assert classify(late, None, WINDOW, T0 + timedelta(hours=2), GRACE) is Status.UNEXPOSED


def test_binary_metrics_count_a_unit_once() -> None:
    exposures = {("exp", "exp.v1", "u"): Exposure("b", T0)}
    events = [
        (event(i, "u", 1, T0 + timedelta(hours=i), "max"), Status.ATTRIBUTED) for i in range(3)
    ]
    rollup = apply_events(events, exposures, {})
    assert rollup.totals[("exp", "exp.v1", "m", "u")].y_total == 1
    assert sum(d.sum_y for d in rollup.deltas.values()) == 1
    assert sum(d.sum_y2 for d in rollup.deltas.values()) == 1


def test_existing_totals_are_continued() -> None:
    exposures = {("exp", "exp.v1", "u"): Exposure("b", T0)}
    rollup = apply_events(
        [(event(9, "u", 2.0, T0), Status.ATTRIBUTED)],
        exposures,
        {("exp", "exp.v1", "m", "u"): UnitTotals("b", 3.0, 1.0)},
    )
    (delta,) = rollup.deltas.values()
    assert (delta.sum_y, delta.sum_y2, delta.sum_xy) == (2.0, 25.0 - 9.0, 5.0 - 3.0)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 9), st.floats(-50, 50, allow_nan=False), st.integers(-10 * 24, 10 * 24)
        ),
        min_size=1,
        max_size=60,
    ),
    st.integers(1, 4),
)
def test_bucket_sums_equal_sums_of_unit_totals(
    raw: list[tuple[int, float, int]], chunks: int
) -> None:
    """However events are split into rollup rounds, the buckets add up to the per-unit truth."""
    exposures = {("exp", "exp.v1", f"u{u}"): Exposure("ab"[u % 2], T0) for u in range(10)}
    events = []
    for pk, (unit, value, hours) in enumerate(raw):
        e = event(pk, f"u{unit}", value, T0 + timedelta(hours=hours))
        events.append((e, classify(e, exposures[("exp", "exp.v1", e.unit_id)], WINDOW, T0, GRACE)))
    totals: dict = {}
    sums = {"a": np.zeros(5), "b": np.zeros(5)}
    size = -(-len(events) // chunks)
    for start in range(0, len(events), size):
        rollup = apply_events(events[start : start + size], exposures, totals)
        totals = {**totals, **rollup.totals}
        for (_, _, variant, _, _), d in rollup.deltas.items():
            sums[variant] += [d.sum_y, d.sum_y2, d.sum_x, d.sum_x2, d.sum_xy]
    for variant in "ab":
        y = np.zeros(10)
        x = np.zeros(10)
        for e, status in events:
            unit = int(e.unit_id[1:])
            if status is Status.ATTRIBUTED:
                y[unit] += e.value
            elif status is Status.PRE_PERIOD:
                x[unit] += e.value
        mine = [u for u in range(10) if "ab"[u % 2] == variant]
        expected = [
            y[mine].sum(),
            (y[mine] ** 2).sum(),
            x[mine].sum(),
            (x[mine] ** 2).sum(),
            (x[mine] * y[mine]).sum(),
        ]
        np.testing.assert_allclose(sums[variant], expected, atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 7),
            st.sampled_from(["rev", "ses", "other"]),
            st.floats(-50, 50, allow_nan=False),
            st.integers(-10 * 24, 10 * 24),
        ),
        min_size=1,
        max_size=80,
    ),
    st.integers(1, 5),
    st.sampled_from(["sum", "max"]),
    st.randoms(use_true_random=False),
)
def test_ratio_cross_products_telescope_to_products_of_unit_totals(
    raw: list[tuple[int, str, float, int]], chunks: int, aggregation: str, shuffle
) -> None:  # type: ignore[no-untyped-def]
    """Split into rounds in any order (late events, either part first, a max metric), the
    ratio's cross products per variant and segment equal Σxy, Σx'y', Σxy', Σx'y of the
    units' final totals (Deng et al. 2018 need these four beyond each part's own sums)."""
    exposures = {("exp", "exp.v1", f"u{u}"): Exposure("ab"[u % 2], T0) for u in range(8)}
    segments = {("exp", "exp.v1", f"u{u}"): (("platform", "ios" if u < 4 else "web"),)
                for u in range(8)}  # fmt: skip
    pairs = {("exp", "exp.v1"): [("rev", "ses")]}
    events = []
    for pk, (unit, metric, value, hours) in enumerate(raw):
        e = Event(pk, "exp", "exp.v1", f"u{unit}", metric,
                  aggregation if metric == "rev" else "sum", value,
                  T0 + timedelta(hours=hours), T0)  # fmt: skip
        events.append((e, classify(e, exposures[("exp", "exp.v1", e.unit_id)], WINDOW, T0, GRACE)))
    shuffle.shuffle(events)  # rounds see events in any order of occurrence
    totals: dict = {}
    found: dict = {}
    size = -(-len(events) // chunks)
    for start in range(0, len(events), size):
        rollup = apply_events(events[start : start + size], exposures, totals, (), segments, pairs)
        totals = {**totals, **rollup.totals}
        for (_, _, num, den, attribute, segment, variant, _), d in rollup.ratio_deltas.items():
            assert (num, den) == ("rev", "ses")
            place = found.setdefault((attribute, segment, variant), np.zeros(4))
            place += [d.sum_xy, d.sum_xpyp, d.sum_xyp, d.sum_xpy]
    post = {m: np.zeros(8) for m in ("rev", "ses")}
    pre = {m: np.zeros(8) for m in ("rev", "ses")}
    for e, status in sorted(events, key=lambda pair: (pair[0].occurred_at, pair[0].event_pk)):
        if e.metric == "other" or status not in (Status.ATTRIBUTED, Status.PRE_PERIOD):
            continue
        target = (post if status is Status.ATTRIBUTED else pre)[e.metric]
        unit = int(e.unit_id[1:])
        combine = max if e.aggregation == "max" else (lambda a, b: a + b)
        target[unit] = combine(target[unit], e.value)
    x, y, xp, yp = post["rev"], post["ses"], pre["rev"], pre["ses"]
    for attribute, segment, members in (("", "", range(8)), ("platform", "ios", range(4)),
                                        ("platform", "web", range(4, 8))):  # fmt: skip
        for variant in "ab":
            mine = [u for u in members if "ab"[u % 2] == variant]
            expected = [(x[mine] * y[mine]).sum(), (xp[mine] * yp[mine]).sum(),
                        (x[mine] * yp[mine]).sum(), (xp[mine] * y[mine]).sum()]  # fmt: skip
            got = found.get((attribute, segment, variant), np.zeros(4))
            np.testing.assert_allclose(got, expected, atol=1e-6)
