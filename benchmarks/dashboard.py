"""Server-side render time of a dashboard page for an experiment with ~10M exposed units.

What a page reads is the rollup tables, so the size that matters is variants x days x
metrics of buckets: 5 variants x 90 days x 3 metrics here, the statistics of
``--units`` (default 10M) exposed units, each with outcomes, reduced per day exactly as
the rollup stores them (``service.demo.seed``). ``predictions`` gets
``--predictions`` rows per variant (default 200,000: 1M rows) so that the model-health
read is measured against a table too big to scan. Three decisions and a state row
complete the page.

Timed, median of ``--repeat`` runs on a warm connection: ``experiment_page`` (every query
and every daily analysis), the HTML render, the full ``GET /dashboards/<key>`` through
the Flask app (test client, real routes, real pool), the index, and ``GET
/v1/experiments/<key>/analysis`` for reference. The baseline for "fast" is the issue's
1 s budget for the page.

The database is ``abx_bench_<random>``, created, migrated and dropped here.
Run: ``python benchmarks/dashboard.py [--units N] [--predictions N] [--repeat N]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import yaml
from common import bench_database, timed

from dashboards.data import experiment_page
from dashboards.render import render_experiment
from service.app import create_app
from service.demo.seed import (
    FIVE_VARIANTS_YAML,
    seed_decisions,
    seed_predictions,
    seed_rollups,
)
from service.experiments.schema import Experiment
from service.settings import Settings

DAYS = 90


def _median_ms(action: Callable[[], Any], repeat: int) -> tuple[float, float]:
    timings, _ = timed(action, repeat)
    return statistics.median(timings), max(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--units", type=int, default=10_000_000)
    parser.add_argument("--predictions", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=11)
    args = parser.parse_args()
    with bench_database(None) as url:
        experiment = Experiment.model_validate(yaml.safe_load(FIVE_VARIANTS_YAML))
        weights = {v.key: v.weight for v in experiment.variants}
        today = datetime.now(UTC).date()
        start = time.perf_counter()
        with psycopg.connect(url, autocommit=True) as conn:
            units = seed_rollups(conn, experiment, DAYS, args.units // DAYS, today)
            seed_predictions(conn, experiment, args.predictions, datetime.now(UTC))
            seed_decisions(conn, experiment, datetime.now(UTC) - timedelta(days=DAYS - 3))
            conn.execute("ANALYZE")
            buckets = conn.execute("SELECT count(*) FROM metric_stats").fetchone()
            rows = conn.execute("SELECT count(*) FROM predictions").fetchone()
        print(f"seeded {units:,} exposed units: {buckets[0] if buckets else 0:,} metric buckets,"
              f" {rows[0] if rows else 0:,} predictions ({time.perf_counter() - start:.0f} s)")  # fmt: skip

        with psycopg.connect(url, autocommit=True) as conn:
            now = datetime.now(UTC)
            page = experiment_page(conn, experiment, weights, now)
            data_ms, data_max = _median_ms(
                lambda: experiment_page(conn, experiment, weights, now), args.repeat
            )
            render_ms, render_max = _median_ms(
                lambda: render_experiment(page, "/p.js", index_url="/dashboards/"), args.repeat
            )
        print(f"evidence points {len(page.evidence)}, comparisons"
              f" {len(page.analysis.primary) + len(page.analysis.secondary)}")  # fmt: skip
        print(f"experiment_page (queries + 90 daily analyses): median {data_ms:7.1f} ms, max {data_max:7.1f} ms")  # fmt: skip
        print(f"render HTML (7 figures, tables):             median {render_ms:7.1f} ms, max {render_max:7.1f} ms")  # fmt: skip

        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / "ranker_bakeoff.yaml").write_text(FIVE_VARIANTS_YAML)
            settings = Settings(database_url=url, experiments=Path(folder), data_dir=Path(folder),
                                reload_poll_seconds=0)  # fmt: skip
            app = create_app(settings)
            client = app.test_client()
            try:
                for path, label in (
                    ("/dashboards/ranker_bakeoff", "GET /dashboards/ranker_bakeoff"),
                    ("/dashboards/", "GET /dashboards/ (index)"),
                    ("/v1/experiments/ranker_bakeoff/analysis", "GET .../analysis (API)"),
                ):
                    response = client.get(path)
                    assert response.status_code == 200, response.status_code
                    median, worst = _median_ms(lambda p=path: client.get(p), args.repeat)  # type: ignore[misc]
                    print(f"{label:<45} median {median:7.1f} ms, max {worst:7.1f} ms"
                          f" ({len(response.data):,} bytes)")  # fmt: skip
            finally:
                app.extensions["abx"].close()


if __name__ == "__main__":
    main()
