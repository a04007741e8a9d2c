"""Turn page data into HTML: the figures, the table rows and the Jinja templates.

One Jinja environment serves both the Flask pages and ``abx report``, so a report is the
page an analyst saw, with plotly.js inlined instead of linked.
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import jinja2

from dashboards import figures
from dashboards.audit_log import scalar_numbers
from dashboards.data import ExperimentPage, IndexRow
from dashboards.palette import VariantStyle, variant_styles
from service.decisions.evaluation import Comparison
from service.experiments.schema import Experiment
from service.inference.records import RECENT_PREDICTIONS

TEMPLATES = Path(__file__).parent / "templates"
SCRIPTS = Path(__file__).parent / "static"
INTERVALS = {
    "msprt": "always-valid interval (mSPRT)",
    "confidence_sequence": "always-valid interval (confidence sequence)",
    "group_sequential": "group-sequential boundary interval",
    "bandit": "always-valid interval (confidence sequence by allocation period)",
}


def number(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def percent(value: float | None, digits: int = 2, signed: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    return f"{value * 100:{'+' if signed else ''}.{digits}f} %"


def utc(moment: datetime | date | None) -> str:
    """Timestamps always in UTC, and said so."""
    if moment is None:
        return "—"
    if isinstance(moment, datetime):
        if moment.tzinfo is not None:
            moment = moment.astimezone(UTC)
        return moment.strftime("%Y-%m-%d %H:%M UTC")
    return moment.isoformat()


def exact(value: Any) -> str:
    """Full-precision value for ``data-value`` attributes (what the tests compare with the API)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return repr(value) if isinstance(value, float) else str(value)


ENVIRONMENT = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES),
    autoescape=jinja2.select_autoescape(["html"]),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    extensions=["jinja2.ext.do"],
)
ENVIRONMENT.filters.update(number=number, percent=percent, utc=utc, exact=exact)
ENVIRONMENT.globals.update(scalar_numbers=scalar_numbers, recent_predictions=RECENT_PREDICTIONS)


def styles_for(experiment: Experiment) -> dict[str, VariantStyle]:
    return variant_styles(experiment.variant_keys, experiment.control)


def _relative_interval(comparison: Comparison) -> tuple[float | None, float | None]:
    """The difference's interval over the control mean (control-mean uncertainty not included)."""
    if comparison.control_mean == 0:
        return None, None
    low, high = (comparison.ci_low / comparison.control_mean,
                 comparison.ci_high / comparison.control_mean)  # fmt: skip
    return (low, high) if comparison.control_mean > 0 else (high, low)


def metric_tables(page: ExperimentPage) -> list[dict[str, Any]]:
    """Per metric: the control's row, then each treatment's comparison."""
    analysis = page.analysis
    experiment = page.experiment
    tables = []
    groups = [("primary", experiment.metrics.primary, analysis.primary)] + [
        ("secondary", metric, [c for c in analysis.secondary if c.metric == metric.name])
        for metric in experiment.metrics.secondary
    ]
    for role, metric, comparisons in groups:
        rows = [{"comparison": c, "relative_interval": _relative_interval(c)} for c in comparisons]
        control = comparisons[0] if comparisons else None
        tables.append({"role": role, "metric": metric, "rows": rows, "control": control})
    return tables


def experiment_figures(page: ExperimentPage) -> dict[str, figures.Figure]:
    experiment = page.experiment
    styles = styles_for(experiment)
    primary = experiment.metrics.primary
    found: dict[str, figures.Figure] = {}
    if page.evidence:
        found["evidence"] = figures.evidence_figure(
            page.evidence, styles, primary.name, primary.type, 1 - experiment.policy.alpha,
            INTERVALS[experiment.policy.method], page.decisions,
        )  # fmt: skip
        if any(p.p_value_adjusted is not None for p in page.evidence):
            found["p_value"] = figures.p_value_figure(
                page.evidence, styles, experiment.policy.alpha, page.decisions
            )
    if page.exposures is not None:
        found["exposures"] = figures.exposures_figure(
            page.exposures, styles, experiment.policy.planned_units
        )
        # A bandit's weights change between days: its SRM test runs per allocation period.
        if len(page.exposures.expected_share) >= 2 and experiment.policy.method != "bandit":
            found["srm"] = figures.srm_figure(page.exposures, styles)
    if page.health:
        found["latency"] = figures.latency_figure(page.health, styles)
        found["reliability"] = figures.reliability_figure(page.health, styles)
    for guardrail in sorted({c.guardrail for c in page.drift}):
        found[guardrail] = figures.drift_figure(page.drift, styles, guardrail)
    if any(r.hours for r in page.shadows):
        found["shadow_agreement"] = figures.shadow_figure(page.shadows, styles)
    for series in page.maturity:
        found[f"maturity_{series.metric}"] = figures.maturity_figure(
            series.days, series.mature, series.pending, styles, series.metric, series.window
        )
    report = page.analysis.segments
    if report is not None:
        for attribute in report.attributes:
            if any(c.attribute == attribute for c in report.comparisons):
                found[f"segments_{attribute}"] = figures.segments_figure(
                    report, attribute, styles, primary.type
                )
    if page.decisions:
        moments = [d.created_at for d in page.decisions]
        if page.exposures is not None:
            first = datetime.combine(page.exposures.days[0], time.min, UTC)
            moments.append(first)
        span = (max(moments) - min(moments)) * 0.03 + timedelta(hours=1)
        period = (min(moments) - span, max(*moments, page.generated_at) + span)
        found["decisions"] = figures.decisions_figure(page.decisions, styles, period)
    return found


def render_experiment(
    page: ExperimentPage, plotly_src: str | None, plotly_inline: str | None = None,
    index_url: str | None = None, account: dict[str, str] | None = None,
) -> str:  # fmt: skip
    """The experiment page; ``plotly_inline`` (the library's source) makes it self-contained.

    ``account`` (who is signed in, and the session's CSRF token) adds the sign-out form."""
    experiment = page.experiment
    return ENVIRONMENT.get_template("experiment.html").render(
        account=account, experiment_js=(SCRIPTS / "experiment.js").read_text("utf-8"),
        page=page, experiment=experiment, analysis=page.analysis,
        styles=styles_for(experiment), tables=metric_tables(page),
        figures=experiment_figures(page), config=figures.CONFIG,
        confidence=1 - experiment.policy.alpha, interval_label=INTERVALS[experiment.policy.method],
        plotly_src=plotly_src, plotly_inline=plotly_inline, index_url=index_url,
    )  # fmt: skip


def render_index(
    rows: list[IndexRow], generated_at: datetime, account: dict[str, str] | None = None
) -> str:
    return ENVIRONMENT.get_template("index.html").render(
        rows=rows, generated_at=generated_at, account=account,
        styles={row.experiment.key: styles_for(row.experiment) for row in rows},
    )  # fmt: skip


def render_login(
    error: str | None, next_url: str, csrf_token: str, session_hours: float = 8.0
) -> str:
    return ENVIRONMENT.get_template("login.html").render(
        error=error, next_url=next_url, csrf_token=csrf_token, session_hours=session_hours,
        account=None,
    )  # fmt: skip
