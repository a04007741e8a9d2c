"""Per-segment results and the SRM drill-down: simulation for their error rates, statsmodels
for the corrections, and the audit entry of a halted experiment through the workers' code."""

from __future__ import annotations

import html
import json
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import numpy as np
import psycopg
import pytest
from click.testing import CliRunner
from statsmodels.stats.multitest import multipletests

from analysis.ratio_metric import RatioCrossSums, linearized_stats
from analysis.sufficient_stats import SufficientStats
from dashboards.report import report_html
from service.cli.main import main
from service.decisions.segments import NOTE, analyze_segments, srm_drill_down
from service.decisions.sequential import design_for
from service.experiments.schema import Experiment
from service.experiments.segments import CLIENT
from service.experiments.validation import load_experiments
from tests.decisions.test_cli import reset_worker_context
from tests.experiment_files import minimal_experiment, write_experiment

SEGMENTS = [f"s{i}" for i in range(10)]
DAY = date(2026, 11, 2)


def experiment(correction: str = "holm") -> Experiment:
    return Experiment.model_validate(minimal_experiment(
        segments=["platform"], policy={"segment_correction": correction, "planned_units": 2000}
    ))  # fmt: skip


def simulate(rng: np.random.Generator, rates: dict[str, dict[str, float]], n: int):  # type: ignore[no-untyped-def]
    """Binary outcomes per segment and variant: (segment units, segment stats)."""
    units, stats = {}, {}
    for segment, by_variant in rates.items():
        units[("platform", segment)] = {v: n for v in by_variant}
        stats[("platform", segment)] = {
            (v, "conversion"): SufficientStats.from_binary(n, int(rng.binomial(n, rate)))
            for v, rate in by_variant.items()
        }
    return units, stats


@pytest.mark.parametrize("correction", ["holm", "fdr_bh"])
def test_a_a_segments_rarely_show_an_effect(correction: str) -> None:
    """Ten A/A segments, 400 experiments: the share with any significant segment stays
    under alpha (Holm bounds the family-wise error; BH's false discovery rate equals it
    when every null is true)."""
    rng = np.random.default_rng(11)
    found = 0
    exp = experiment(correction)
    design = design_for(exp)
    for _ in range(400):
        units, stats = simulate(rng, {s: {"a": 0.2, "b": 0.2} for s in SEGMENTS}, 400)
        report = analyze_segments(exp, design, units, stats)
        assert report is not None and len(report.comparisons) == 10
        found += any(c.significant for c in report.comparisons)
    rate = found / 400
    assert rate <= 0.05 + 3 * (0.05 * 0.95 / 400) ** 0.5, rate


@pytest.mark.parametrize("correction", ["holm", "fdr_bh"])
def test_the_correction_is_statsmodels_and_an_effect_is_found_where_it_is(correction: str) -> None:
    rng = np.random.default_rng(3)
    rates = {s: {"a": 0.2, "b": 0.2} for s in SEGMENTS}
    rates["s3"] = {"a": 0.2, "b": 0.3}  # only this segment responds
    exp = experiment(correction)
    report = analyze_segments(exp, design_for(exp), *simulate(rng, rates, 3000))
    assert report is not None and report.note == NOTE and report.correction == correction
    raw = [c.p_value for c in report.comparisons]
    reject, adjusted, _, _ = multipletests(raw, alpha=0.05, method=correction)
    assert [c.p_value_adjusted for c in report.comparisons] == pytest.approx(list(adjusted))
    assert [c.significant for c in report.comparisons] == [bool(r) for r in reject]
    assert [c.segment for c in report.comparisons if c.significant] == ["s3"]
    s3 = next(c for c in report.comparisons if c.segment == "s3")
    assert s3.ci_low < 0.1 < s3.ci_high
    assert report.units["platform"]["s3"] == {"a": 3000, "b": 3000}


def test_no_segments_no_report() -> None:
    exp = Experiment.model_validate(minimal_experiment())
    assert analyze_segments(exp, design_for(exp), {}, {}) is None


def test_a_ratio_primary_is_compared_per_segment_on_its_linearised_statistics() -> None:
    """Given a segment's linearised ratio statistics, the segment's comparison is the
    difference of the ratios with the delta-method variance (Deng et al. 2018): the mSPRT
    interval centred on R_b - R_a, and a segment without statistics in one arm waits."""
    metrics = {"primary": {"name": "per_session", "type": "ratio", "numerator": "revenue",
                           "denominator": "sessions"},
               "secondary": [{"name": "revenue", "type": "continuous"},
                             {"name": "sessions", "type": "count"}]}  # fmt: skip
    ratio = Experiment.model_validate(minimal_experiment(segments=["platform"], metrics=metrics))
    rng = np.random.default_rng(8)
    stats = {}
    for variant, spend in (("a", 2.0), ("b", 2.6)):
        sessions = 1.0 + rng.poisson(2.0, 4000)
        revenue = rng.gamma(sessions * 4.0, spend / 4.0)
        cross = RatioCrossSums(float(revenue @ sessions))
        stats[("per_session", variant)] = (revenue, sessions, linearized_stats(
            SufficientStats(4000, revenue.sum(), revenue @ revenue),
            SufficientStats(4000, sessions.sum(), sessions @ sessions), cross))  # fmt: skip
    units = {("platform", "ios"): {"a": 4000, "b": 4000}, ("platform", "web"): {"a": 9, "b": 9}}
    found = {("platform", "ios"): {(v, "per_session"): stats[("per_session", v)][2] for v in "ab"},
             ("platform", "web"): {}}  # fmt: skip
    report = analyze_segments(ratio, design_for(ratio), units, found)
    assert report is not None
    [comparison] = report.comparisons
    (ra, sa, _), (rb, sb, _) = stats[("per_session", "a")], stats[("per_session", "b")]
    assert comparison.control_mean == pytest.approx(ra.sum() / sa.sum(), rel=1e-12)
    assert comparison.treatment_mean == pytest.approx(rb.sum() / sb.sum(), rel=1e-12)
    # Unit by unit: the linearised values' variance is the delta method's.
    variance = sum(
        np.var((r - r.sum() / s.sum() * s) / s.mean(), ddof=1) / len(r)
        for r, s in ((ra, sa), (rb, sb))
    )
    half_width = (comparison.ci_high - comparison.ci_low) / 2
    assert comparison.ci_low + half_width == pytest.approx(comparison.difference, rel=1e-9)
    assert half_width > 1.96 * variance**0.5  # always-valid: wider than the fixed-n interval
    assert comparison.significant
    assert report.skipped == ["platform=web/b: no units in one arm yet"]


def segment_counts(rng: np.random.Generator, control_share: dict[str, float], n: int):  # type: ignore[no-untyped-def]
    days = {}
    for segment, share in control_share.items():
        control = int(rng.binomial(n, share))
        days[("platform", segment)] = {DAY: {"a": control, "b": n - control}}
    return days


def test_srm_drill_down_names_the_segment_with_the_imbalance() -> None:
    """One platform loses a tenth of its control units (a logging bug there), 20,000 units a
    segment: the test per segment finds it and no other, in 20 simulated experiments."""
    rng = np.random.default_rng(5)
    for _ in range(20):
        shares = {s: 0.5 for s in SEGMENTS} | {"s7": 0.45 / 0.95}
        found = srm_drill_down(["platform"], segment_counts(rng, shares, 20_000),
                               {"a": 0.5, "b": 0.5}, None, 0.001, 4000.0)  # fmt: skip
        assert [s.segment for s in found if s.flagged] == ["s7"]
        assert all(s.p_value_adjusted >= s.p_value for s in found)


def test_srm_drill_down_under_the_null_flags_nothing_and_skips_the_period_start() -> None:
    rng = np.random.default_rng(8)
    flagged = 0
    for _ in range(50):
        days = segment_counts(rng, {s: 0.5 for s in SEGMENTS}, 2000)
        found = srm_drill_down(["platform"], days, {"a": 0.5, "b": 0.5}, None, 0.001, 4000.0)
        flagged += any(s.flagged for s in found)
    assert flagged == 0  # Holm at 0.001: a false alarm in 50 experiments is unlikely (< 5 %)
    days = segment_counts(rng, {"s0": 0.5}, 100)
    assert srm_drill_down(["platform"], days, {"a": 0.5, "b": 0.5}, DAY.isoformat(), 0.001,
                          4000.0) == []  # fmt: skip


def test_a_halt_for_srm_names_the_segment_in_the_audit_log(
    runner: CliRunner, db: str, tmp_path: Path
) -> None:
    """Through ``abx analyze`` (the worker's task: rollup, analysis, rules, audit log)."""
    folder = tmp_path / "experiments"
    write_experiment(folder, minimal_experiment(
        "seg", segments=["platform"], policy={"min_units": 100, "min_runtime_hours": 0}
    ))  # fmt: skip
    rng = np.random.default_rng(1)
    # Within yesterday whatever the hour (across midnight, each day alone holds less evidence).
    yesterday = datetime.combine(datetime.now(UTC).date() - timedelta(days=1), time(10), UTC)
    rows, attributes = [], []
    for i in range(12_000):
        platform = ["ios", "android", "web"][i % 3]
        variant = "ab"[int(rng.integers(0, 2))]
        if platform == "android" and variant == "a" and rng.random() < 0.15:
            continue  # android's control exposures are lost
        at = yesterday + timedelta(seconds=int(rng.integers(0, 3600)))
        rows.append(("seg", "seg.v1", f"u{i}", variant, at))
        client = "abx-client-python/0.1.0" if platform == "android" else "server"
        recorded = {"platform": platform, CLIENT: client}
        attributes.append(("seg", "seg.v1", f"u{i}", json.dumps(recorded), at))
    with psycopg.connect(db) as conn:
        with conn.cursor().copy("COPY exposures (experiment_key, seed, unit_id, variant_key,"
                                " first_exposed_at) FROM STDIN") as copy:  # fmt: skip
            for row in rows:
                copy.write_row(row)
        with conn.cursor().copy("COPY exposure_attributes (experiment_key, seed, unit_id,"
                                " attributes, exposed_at) FROM STDIN") as copy:  # fmt: skip
            for row in attributes:
                copy.write_row(row)
    env = {"ABX_DATABASE_URL": db, "ABX_EXPERIMENTS": str(folder),
           "ABX_DATA_DIR": str(tmp_path / "data")}  # fmt: skip
    reset_worker_context()
    result = runner.invoke(main, ["analyze", "seg"], env=env)
    assert result.exit_code == 0, result.output
    assert "seg: halt" in result.output, result.output
    with psycopg.connect(db) as conn:
        (reason, numbers) = conn.execute(
            "SELECT reason, numbers FROM decisions WHERE experiment_key = 'seg'"
        ).fetchone()  # type: ignore[misc]
    assert reason.startswith("sample ratio mismatch"), reason
    assert "imbalance in " in reason and "platform=android" in reason, reason
    assert f"{CLIENT}=abx-client-python/0.1.0" in reason, reason  # the SDK version
    assert "ios" not in reason and "web" not in reason and "server" not in reason
    drill = {(s["attribute"], s["segment"]): s for s in numbers["srm"]["segments"]}
    assert set(drill) == {("platform", "ios"), ("platform", "android"), ("platform", "web"),
                          (CLIENT, "server"), (CLIENT, "abx-client-python/0.1.0")}  # fmt: skip
    assert [k for k, d in drill.items() if d["flagged"]] == [
        ("platform", "android"), (CLIENT, "abx-client-python/0.1.0")
    ]  # fmt: skip
    assert numbers["segments"]["note"] == NOTE
    assert set(numbers["segments"]["units"]["platform"]) == {"ios", "android", "web"}
    # The dashboard (here its offline report) shows where the imbalance is.
    [loaded] = load_experiments([folder]).experiments
    with psycopg.connect(db) as conn:
        page = html.unescape(report_html(conn, loaded.experiment))
    assert "The imbalance is in platform=android, abx.client=abx-client-python/0.1.0" in page
    table = page[page.index('id="srm-segments-table"') :]
    table = table[: table.index("</table>")]
    assert table.count("imbalance</span>") == 2
    assert NOTE in page
