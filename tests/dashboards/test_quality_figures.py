"""Model-quality panels: drift distance over windows, shadow agreement, label maturity."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta

import plotly.graph_objects as go

from dashboards import figures
from dashboards.data import maturity_series
from dashboards.evidence import ExposureBucket
from dashboards.palette import variant_styles
from service.decisions.drift import DriftCheck, DriftWindow
from service.experiments.schema import Experiment
from service.inference.shadow_report import ShadowHour, report
from tests.experiment_files import minimal_experiment

STYLES = variant_styles(("a", "b"), "a")
START = datetime(2026, 11, 1, tzinfo=UTC)


def _valid(figure: figures.Figure) -> go.Figure:
    json.dumps(figure, allow_nan=False)
    return go.Figure(figure)


def test_drift_figure_draws_each_treatment_and_the_threshold() -> None:
    history = [DriftWindow(START + timedelta(hours=h), None if h == 0 else 0.1 * h, "input:x[0]")
               for h in range(5)]  # fmt: skip
    check = DriftCheck("input_drift", "b", "psi", 0.25, "rollback", 3, 2, False, 0.4, "input:x[0]",
                       "a", history)  # fmt: skip
    figure = _valid(figures.drift_figure([check], STYLES, "input_drift"))
    assert [t.name for t in figure.data] == ["b vs a", "threshold 0.25"]
    assert figure.data[0].y[0] is None and figure.data[1].y == (0.25,) * 5
    assert figure.layout.title.text.endswith("against the control")
    # against: both: a line per comparison, the profile's dotted; the title names both.
    profiled = DriftCheck("input_drift", "b", "psi", 0.25, "rollback", 3, 2, False, 0.4,
                          "input:x[0]", "reference profile", history)  # fmt: skip
    both = _valid(figures.drift_figure([check, profiled], STYLES, "input_drift"))
    assert [t.name for t in both.data] == ["b vs a", "b vs reference profile", "threshold 0.25"]
    assert both.data[1].line.dash == "dot" and both.data[0].line.dash != "dot"
    assert both.layout.title.text.endswith("against the control and the reference profile")


def test_shadow_figure_has_interval_bars() -> None:
    hour = ShadowHour(START, 100, 100, 90.0, 100, 1.0, 0.02, 0.05, 200.0, 500.0, 3.0, 2.0)
    figure = _valid(figures.shadow_figure([report("b", "a", 0.5, [hour])], STYLES))
    [trace] = figure.data
    assert trace.y == (0.9,) and trace.error_y.array[0] > 0 and trace.error_y.arrayminus[0] > 0


def test_maturity_series_follows_the_whole_day_cohort_rule() -> None:
    primary = {"name": "retained", "type": "binary", "window": "2d"}
    experiment = Experiment.model_validate(minimal_experiment(metrics={"primary": primary}))
    days = [date(2026, 11, 1) + timedelta(days=d) for d in range(5)]
    buckets = [ExposureBucket(v, day, 10) for day in days for v in ("a", "b")]
    now = datetime(2026, 11, 5, 12, tzinfo=UTC)
    [series] = maturity_series(experiment, buckets, now)
    # End of day d minus 48 h falls on day d - 1: cohorts before it (d - 2 and earlier) are mature.
    assert series.mature["a"] == [0, 0, 10, 20, 20]  # the last day ends "now", 12:00 on the 5th
    assert series.pending["a"] == [10, 20, 20, 20, 30]
    _valid(figures.maturity_figure(series.days, series.mature, series.pending, STYLES,
                                   series.metric, series.window))  # fmt: skip
