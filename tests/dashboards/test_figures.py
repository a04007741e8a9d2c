"""Dashboard figure builders and palette: pure functions over plain data."""

from __future__ import annotations

import json
import math
from datetime import UTC, date, datetime, timedelta

import plotly.graph_objects as go
import yaml

from dashboards import figures
from dashboards.evidence import EvidencePoint, ExposureBucket, exposure_series
from dashboards.palette import OKABE_ITO, variant_styles
from service.decisions.store import DecisionRecord
from service.demo.seed import FIVE_VARIANTS_YAML
from service.experiments.schema import Experiment
from service.inference.records import VariantHealth

EXPERIMENT = Experiment.model_validate(yaml.safe_load(FIVE_VARIANTS_YAML))
STYLES = variant_styles(EXPERIMENT.variant_keys, EXPERIMENT.control)
TREATMENTS = [v for v in EXPERIMENT.variant_keys if v != EXPERIMENT.control]
START = date(2024, 1, 1)
DAYS = [START + timedelta(days=d) for d in range(90)]


def _points() -> list[EvidencePoint]:
    return [
        EvidencePoint(day, variant, 1000 * (d + 1), 1000 * (d + 1), 0.01 * i,
                      -math.inf if d == 0 else 0.01 * i - 0.1 / (d + 1),
                      math.inf if d == 0 else 0.01 * i + 0.1 / (d + 1),
                      0.1 * i, 0.5 / (d + 1), min(1.0, 2 / (d + 1)), d > 40)
        for d, day in enumerate(DAYS) for i, variant in enumerate(TREATMENTS)
    ]  # fmt: skip


def _decision(kind: str, variant: str | None, day: int) -> DecisionRecord:
    moment = datetime.combine(DAYS[day], datetime.min.time(), UTC)
    return DecisionRecord("id", EXPERIMENT.seed, kind, variant, "applied", "worker", "why",
                    {"p": 0.01}, "running", "running", moment, moment)  # fmt: skip


def _valid(figure: figures.Figure) -> go.Figure:
    """plotly's own validation: an unknown or mistyped property raises."""
    json.dumps(figure, allow_nan=False)  # no NaN or Infinity reaches the browser
    return go.Figure(figure)


def test_palette_is_okabe_ito_with_the_control_first_and_distinct_styles() -> None:
    assert STYLES["control"].color == OKABE_ITO[0]
    assert len({s.color for s in STYLES.values()}) == 5
    assert len({s.marker for s in STYLES.values()}) == 5
    assert all(s.color in OKABE_ITO for s in STYLES.values())
    again = variant_styles(list(reversed(EXPERIMENT.variant_keys)), "control")
    assert again["control"] == STYLES["control"]


def test_evidence_figure_has_one_panel_per_treatment_and_consistent_colours() -> None:
    figure = _valid(figures.evidence_figure(
        _points(), STYLES, "conversion", "binary", 0.95, "always-valid interval (mSPRT)",
        [_decision("rollback", "ranker_a", 10)],
    ))  # fmt: skip
    lines = [t for t in figure.data if t.mode == "lines+markers"]
    assert [t.name for t in lines] == TREATMENTS
    for trace in lines:
        assert trace.line.color == STYLES[trace.name].color
        assert len(trace.x) == 90
    axes = {t.yaxis for t in lines}
    assert len(axes) == 4  # small multiples: 4 treatments never overlap
    assert "95%" in figure.layout.title.text
    assert "percentage points" in figure.layout.yaxis.title.text
    assert "UTC" in figure.layout.xaxis4.title.text
    band = next(t for t in figure.data if t.name == "ranker_a upper")
    assert band.y[0] is None  # the unbounded first-day interval is drawn as missing
    assert any(a.text == "rollback ranker_a" for a in figure.layout.annotations)


def test_p_value_figure_draws_the_alpha_boundary_on_a_log_axis() -> None:
    figure = _valid(figures.p_value_figure(_points(), STYLES, 0.05))
    assert figure.layout.yaxis.type == "log"
    boundary = figure.layout.shapes[0]
    assert boundary.y0 == boundary.y1 == 0.05
    assert "alpha = 0.05" in boundary.label.text
    assert {t.name for t in figure.data} == set(TREATMENTS)


def test_exposure_and_srm_figures_against_configured_weights() -> None:
    buckets = [
        ExposureBucket(variant, day, 100 + (8 if variant == "ranker_b" else 0))
        for day in DAYS for variant in EXPERIMENT.variant_keys
    ]  # fmt: skip
    weights = {v.key: v.weight for v in EXPERIMENT.variants}
    series = exposure_series(EXPERIMENT, weights, buckets)
    assert series is not None
    assert series.cumulative["control"][-1] == 9000
    assert series.srm_p_values[-1] is not None and series.srm_p_values[-1] < 0.001
    exposures = _valid(figures.exposures_figure(series, STYLES, planned_units=10_000))
    assert exposures.layout.shapes[0].y0 == 10_000
    far = _valid(figures.exposures_figure(series, STYLES, planned_units=2_000_000))
    assert "off this scale" in far.layout.annotations[0].text
    srm = _valid(figures.srm_figure(series, STYLES))
    configured = [t for t in srm.data if t.name.endswith("configured")]
    assert {t.y[0] for t in configured} == {20.0}
    assert srm.layout.shapes[0].y0 == 0.001


def test_model_health_and_decision_figures() -> None:
    now = datetime(2024, 3, 1, tzinfo=UTC)
    health = [
        VariantHealth(v, False, 100, 1.0, 2.0, 3.0, 4.0, 0.01, 0.01, 0.0, ["CPUExecutionProvider"],
                      ["ab" * 32], now, now)
        for v in EXPERIMENT.variant_keys
    ]  # fmt: skip
    latency = _valid(figures.latency_figure(health, STYLES))
    assert [t.marker.color for t in latency.data] == [
        STYLES[v].color for v in EXPERIMENT.variant_keys
    ]
    assert "ms" in latency.layout.yaxis.title.text
    reliability = _valid(figures.reliability_figure(health, STYLES))
    assert reliability.data[0].y == (1.0, 1.0)  # percent
    decisions = [_decision("ramp", None, 3), _decision("rollback", "ranker_a", 10)]
    timeline = _valid(figures.decisions_figure(decisions, STYLES))
    assert {t.name for t in timeline.data} == {"(experiment)", "ranker_a"}
    assert "UTC" in timeline.layout.xaxis.title.text


def test_segments_figure_draws_each_segment_with_its_interval() -> None:
    import numpy as np

    from analysis.sufficient_stats import SufficientStats
    from service.decisions.segments import analyze_segments
    from service.decisions.sequential import design_for

    definition = yaml.safe_load(FIVE_VARIANTS_YAML)
    definition["policy"]["planned_units"] = 20_000
    experiment = Experiment.model_validate(
        definition | {"segments": [{"attribute": "os", "max_values": 2}]}
    )
    rng = np.random.default_rng(2)
    units, stats = {}, {}
    for segment in ("ios", "android", "other"):
        units[("os", segment)] = {v: 2000 for v in EXPERIMENT.variant_keys}
        stats[("os", segment)] = {
            (v, EXPERIMENT.metrics.primary.name): SufficientStats.from_binary(
                2000,
                int(rng.binomial(2000, 0.3 if v == TREATMENTS[0] and segment == "ios" else 0.2)),
            )
            for v in EXPERIMENT.variant_keys
        }
    report = analyze_segments(experiment, design_for(experiment), units, stats)
    assert report is not None
    figure = _valid(figures.segments_figure(report, "os", STYLES, "binary"))
    assert [trace.name for trace in figure.data] == TREATMENTS
    first = figure.data[0]
    assert sorted(first.y) == ["android", "ios", "other"]
    assert first.marker.symbol[list(first.y).index("ios")] == STYLES[TREATMENTS[0]].marker  # filled
    assert "never decides" in figure.layout.title.text
