"""Shadow analysis (per hour, with intervals), its API and ``abx shadow report``; sketches of
served answers reach ``model_sketches`` through the batch writer."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from numpy.testing import assert_allclose

from service.cli.main import main
from service.inference.shadow_report import ShadowHour, report, summarize
from tests.conftest import EXAMPLES, Api, wait_for
from tests.inference.test_api import predict
from tests.model_fixtures import demo_models

HOUR = datetime(2026, 12, 1, 10, tzinfo=UTC)


def test_agreement_interval_is_wilsons_and_the_report_adds_hours_up() -> None:
    # Newcombe (1998), Statistics in Medicine 17:857, Table II: 81/263, Wilson 0.2553 to 0.3662.
    hour = ShadowHour(HOUR, 263, 263, 81.0, 3, 0.3, 0.05, 0.2, 6.0, 14.0, 2.5, 1.0)
    window = summarize(hour, "h")
    assert_allclose(
        [window.agreement_ci_low, window.agreement_ci_high], [0.2553, 0.3662], atol=5e-5
    )
    assert_allclose(window.mean_abs_diff, 0.1)
    # Sample variance of a mean: (0.05 - 3 * 0.1**2) / 2 = 0.01; half-width 1.96 * sqrt(0.01 / 3).
    assert_allclose(window.mean_abs_diff_ci_high - 0.1, 1.959964 * (0.01 / 3) ** 0.5, rtol=1e-6)
    both = report("shadow", "control", 0.5, [hour, hour])
    assert both.overall is not None and both.overall.runs == 526 and both.overall.rows == 526
    assert both.overall.agreement == pytest.approx(81 / 263)
    assert report("shadow", "control", 0.5, []).overall is None


def test_shadow_report_api_and_cli_and_sketches_of_served_answers(
    api: Api, db: str, runner: CliRunner, tmp_path: Path
) -> None:
    demo_models()
    for i in range(40):
        assert predict(api, "churn_model", f"qa-{i}").status_code == 200

    def count(sql: str) -> int:
        with psycopg.connect(db) as conn:
            return int(conn.execute(sql).fetchone()[0])  # type: ignore[index]

    assert wait_for(lambda: count("SELECT count(*) FROM predictions WHERE shadow") >= 5)
    found = api.get("/v1/experiments/churn_model/shadows", params={"hours": 2})
    assert found.status_code == 200, found.text
    [shadow] = found.json()["shadows"]
    assert shadow["variant"] == "heavy_shadow" and shadow["sample_rate"] == 0.5
    overall = shadow["overall"]
    assert overall["runs"] >= 5 and 0 <= overall["agreement_ci_low"] <= overall["agreement"] <= 1
    assert overall["latency_mean_ci_low_ms"] <= overall["latency_mean_ms"]
    for bad in ("0", "721", "x"):
        refused = api.get("/v1/experiments/churn_model/shadows", params={"hours": bad})
        assert refused.status_code == 422
        assert refused.headers["Content-Type"] == "application/problem+json"
    assert api.get("/v1/experiments/ghost/shadows").status_code == 404
    env = {"ABX_DATABASE_URL": db, "ABX_EXPERIMENTS": str(EXAMPLES),
           "ABX_DATA_DIR": str(tmp_path / "data")}  # fmt: skip
    printed = runner.invoke(main, ["shadow", "report", "churn_model", "--hours", "2"], env=env)
    assert printed.exit_code == 0, printed.output
    assert "churn_model/heavy_shadow against current" in printed.output
    none = runner.invoke(main, ["shadow", "report", "checkout_ranker"], env=env)
    assert none.exit_code == 1 and "has no shadow variant" in none.output
    # Sketches: the served model's output and each input column, this hour (5 s drains).
    assert wait_for(
        lambda: count("SELECT coalesce(sum(n), 0) FROM model_sketches WHERE experiment_key ="
                      " 'churn_model' AND feature = 'output:probability[0]'") >= 80,
        timeout=20,
    )  # fmt: skip
    # Each input column too (rows of one drain reach PostgreSQL in the writer's own batches).
    inputs = "SELECT count(DISTINCT feature) FROM model_sketches WHERE feature LIKE 'input:%'"
    assert wait_for(lambda: count(inputs) == 20, timeout=20)
