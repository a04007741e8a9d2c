"""Simulated web-app traffic written straight into PostgreSQL through abx's own write paths.

Exposures go in as the batch writer would write them; outcomes through
``ingest_rows`` (the events pipeline's deduplicating insert). The rollup and
the analysis then run on them exactly as in production.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

import numpy as np
import psycopg

from service.events.ingest import ingest_rows


def simulate(
    url: str,
    experiment_key: str,
    seed: str,
    units: Mapping[str, int],
    rates: Mapping[str, Mapping[str, float]],
    random_seed: int = 1,
    prefix: str = "sim",
) -> None:
    """Expose ``units[variant]`` units and give each binary metric outcome with ``rates[variant][metric]``."""
    rng = np.random.default_rng(random_seed)
    exposed_at = datetime.now(UTC) - timedelta(hours=1)
    exposures, events = [], []
    for variant, count in units.items():
        for i in range(count):
            unit = f"{prefix}-{variant}-{i}"
            exposures.append((experiment_key, seed, unit, variant, exposed_at))
            for metric, rate in rates.get(variant, {}).items():
                if rng.random() < rate:
                    events.append((experiment_key, seed, f"{unit}-{metric}", unit, metric, "max", 1.0,
                                   exposed_at + timedelta(minutes=5), exposed_at + timedelta(minutes=5), None))  # fmt: skip
    with psycopg.connect(url) as conn:
        with conn.cursor().copy(
            "COPY exposures (experiment_key, seed, unit_id, variant_key, first_exposed_at) FROM STDIN"
        ) as copy:
            for row in exposures:
                copy.write_row(row)
        if events:
            ingest_rows(conn, events)
        conn.commit()


def simulate_lift(url: str, key: str = "lift", seed: int = 1) -> None:
    """2,000 units per arm, conversion 10 % on the control and 16 % on treatment b."""
    simulate(url, key, f"{key}.v1", {"a": 2000, "b": 2000},
             {"a": {"conversion": 0.10}, "b": {"conversion": 0.16}}, seed, key)  # fmt: skip
