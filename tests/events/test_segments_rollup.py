"""The rollup per segment, on PostgreSQL: each unit in one segment per attribute, the
segments' counts and sums adding up to the variant's, values past the cap in ``other``."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import psycopg
import pytest

from service.events.ingest import ingest_rows
from service.events.rollup import roll_up_once
from service.experiments.schema import SegmentAttribute
from service.experiments.segments import NONE, OTHER

KEY, SEED = "exp", "exp.v1"
WINDOW, GRACE = timedelta(days=7), timedelta(hours=1)
PLATFORMS = ["ios", "android", "web", None]


def load(conn: Any, units: list[tuple[str, str, str | None, str | None]], now: datetime,
         rng: np.random.Generator) -> None:  # fmt: skip
    """Exposures (with recorded attributes) and outcomes after and before them."""
    with conn.cursor().copy(
        "COPY exposures (experiment_key, seed, unit_id, variant_key, first_exposed_at) FROM STDIN"
    ) as copy:
        for unit, variant, _, _ in units:
            copy.write_row((KEY, SEED, unit, variant, now - timedelta(days=2)))
    with conn.cursor().copy(
        "COPY exposure_attributes (experiment_key, seed, unit_id, attributes, exposed_at)"
        " FROM STDIN"
    ) as copy:
        for unit, _, platform, country in units:
            recorded = {"platform": platform or NONE}
            if country is not None:  # units exposed before 'country' was declared lack it
                recorded["country"] = country
            copy.write_row((KEY, SEED, unit, json.dumps(recorded), now - timedelta(days=2)))
    events = []
    for unit, _, _, _ in units:
        for n in range(int(rng.integers(0, 4))):
            at = now - timedelta(days=float(rng.uniform(0.1, 1.9)))
            events.append((KEY, SEED, f"{unit}-r{n}", unit, "revenue", "sum",
                           float(rng.gamma(2.0, 5.0)), at, now, None))  # fmt: skip
        if rng.random() < 0.5:  # before exposure: the CUPED covariate
            at = now - timedelta(days=3)
            events.append((KEY, SEED, f"{unit}-pre", unit, "revenue", "sum", 3.0, at, now, None))
    ingest_rows(conn, events)
    conn.commit()


def test_segment_sums_add_up_and_the_cap_holds(db: str) -> None:
    rng = np.random.default_rng(20)
    now = datetime.now(UTC)
    caps = {"platform": 2}

    def specs(key: str) -> tuple[SegmentAttribute, ...]:
        return (SegmentAttribute(attribute="platform", max_values=caps["platform"]),
                SegmentAttribute(attribute="country", values=["US"]))  # fmt: skip

    rounds = []
    for first, count in ((0, 200), (200, 200)):
        rounds.append([
            (f"u{i}", "ab"[int(rng.integers(0, 2))], PLATFORMS[int(rng.integers(0, 4))],
             None if i < 20 else ["US", "DE"][int(rng.integers(0, 2))])
            for i in range(first, first + count)
        ])  # fmt: skip
    with psycopg.connect(db) as conn:
        load(conn, rounds[0], now, rng)
        roll_up_once(conn, lambda key: WINDOW, GRACE, segment_specs=specs)
        caps["platform"] = 3  # raised while running: later units may get a third value
        load(conn, rounds[1], now, rng)
        roll_up_once(conn, lambda key: WINDOW, GRACE, segment_specs=specs)
        pks = dict(conn.execute("SELECT unit_id, exposure_pk FROM exposures").fetchall())
        segment_units = conn.execute(
            "SELECT attribute, segment, variant_key, sum(units) FROM segment_exposure_counts"
            " GROUP BY 1, 2, 3"
        ).fetchall()
        segment_sums = conn.execute(
            "SELECT attribute, segment, variant_key, sum(sum_y), sum(sum_y2), sum(sum_x),"
            " sum(sum_x2), sum(sum_xy) FROM segment_metric_stats GROUP BY 1, 2, 3"
        ).fetchall()
        totals = {variant: values for variant, *values in conn.execute(
            "SELECT variant_key, sum(sum_y), sum(sum_y2), sum(sum_x), sum(sum_x2), sum(sum_xy)"
            " FROM metric_stats GROUP BY 1"
        )}  # fmt: skip
        unit_totals = dict(
            ((u, (y, x)) for u, y, x in conn.execute(
                "SELECT unit_id, y_total, x_total FROM unit_outcomes"))
        )  # fmt: skip

    # The rule, spelled out for these units: values in the order the rollup counts them
    # (exposure_pk); two get a bucket in the first round, a third in the second round.
    units = sorted(rounds[0] + rounds[1], key=lambda u: pks[u[0]])
    since: dict[str, int] = {NONE: 0}
    for index, (unit, _, platform, _) in enumerate(units):
        cap = 2 if index < 200 else 3
        if platform is not None and platform not in since and len(since) - 1 < cap:
            since[platform] = pks[unit]
    assert len(since) == 4  # ios, android, web (the third, after the cap was raised), (none)
    expected_units: dict[tuple[str, str, str], int] = defaultdict(int)
    expected_sums: dict[tuple[str, str, str], np.ndarray] = defaultdict(lambda: np.zeros(5))
    for unit, variant, platform, country in units:
        value = platform or NONE
        labels = [("platform", value if since.get(value, 1 << 62) <= pks[unit] else OTHER)]
        if country is not None:
            labels.append(("country", country if country == "US" else OTHER))
        y, x = unit_totals.get(unit, (0.0, 0.0))
        for attribute, segment in labels:
            expected_units[(attribute, segment, variant)] += 1
            expected_sums[(attribute, segment, variant)] += [y, y * y, x, x * x, x * y]
    assert {(a, s, v): int(n) for a, s, v, n in segment_units} == dict(expected_units)
    found = {(a, s, v): np.array(values) for a, s, v, *values in segment_sums}
    for key, sums in expected_sums.items():
        assert found.get(key, np.zeros(5)) == pytest.approx(sums, rel=1e-9, abs=1e-9), key
    # Every unit has a platform: its segments' sums add up to the variant's own.
    for variant, values in totals.items():
        platform = sum(v for k, v in found.items() if k[0] == "platform" and k[2] == variant)
        assert platform == pytest.approx(np.array(values), rel=1e-9)
