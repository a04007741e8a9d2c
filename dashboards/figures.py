"""Plotly figures as plain dicts, built from plain data. Pure: no I/O, no Flask.

Plain dicts rather than ``plotly.graph_objects`` because validating objects costs tens of
milliseconds per figure at page-render time; the tests validate every figure through
``go.Figure`` instead. Conventions kept by every builder: one colour, marker and dash per
variant (``palette``), days and timestamps in UTC and said so on the axis, units and
confidence levels in the axis titles, legends above the plot so 5 variants stay readable.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from typing import Any

from dashboards.evidence import EvidencePoint, ExposureSeries
from dashboards.palette import NEUTRAL, VariantStyle, with_alpha
from service.decisions.drift import DriftCheck
from service.decisions.segments import SegmentReport
from service.decisions.store import DecisionRecord
from service.inference.records import VariantHealth
from service.inference.shadow_report import ShadowReport

Figure = dict[str, Any]
FONT = {"family": "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif", "size": 13}
DAY_AXIS = {"title": {"text": "day (UTC; values as of the end of the day)"}, "type": "date"}
TIME_AXIS = {"title": {"text": "time (UTC)"}, "type": "date"}


def finite(value: float | None) -> float | None:
    """JSON has no infinities: an unbounded interval end is drawn as missing."""
    return value if value is not None and math.isfinite(value) else None


def _iso(moment: date | datetime) -> str:
    return moment.isoformat()


def _layout(title: str, height: int = 380, **extra: Any) -> dict[str, Any]:
    return {
        "title": {"text": title, "x": 0, "xanchor": "left"},
        "height": height,
        "font": FONT,
        "margin": {"l": 70, "r": 20, "t": 70, "b": 60},
        "legend": {"orientation": "h", "yanchor": "bottom", "y": 1.0, "x": 0},
        "hovermode": "x unified",
        "paper_bgcolor": "white",
        "plot_bgcolor": "white",
        **extra,
    }


def _axis(**extra: Any) -> dict[str, Any]:
    if extra.get("type") == "log":
        extra = {"dtick": 1, "exponentformat": "none", **extra}
    return {"gridcolor": "#e5e5e5", "zerolinecolor": "#999999", "linecolor": "#999999",
            "automargin": True, **extra}  # fmt: skip


def _line(style: VariantStyle, width: float = 2) -> dict[str, Any]:
    return {"color": style.color, "dash": style.dash, "width": width}


def difference_scale(metric_type: str) -> tuple[float, str]:
    """Binary metrics read best in percentage points; others in the metric's own units."""
    return (100.0, "percentage points") if metric_type == "binary" else (1.0, "metric units")


def evidence_figure(
    points: Sequence[EvidencePoint], styles: Mapping[str, VariantStyle], metric: str,
    metric_type: str, confidence: float, method: str, decisions: Sequence[DecisionRecord] = (),
) -> Figure:  # fmt: skip
    """Difference from the control with its interval per day: one panel per treatment."""
    scale, unit = difference_scale(metric_type)
    variants = [v for v in styles if any(p.variant == v for p in points)]
    rows = max(1, len(variants))
    gap = 0.06
    panel = (1.0 - gap * (rows - 1)) / rows
    data: list[dict[str, Any]] = []
    layout = _layout(
        f"{metric}: difference from control with the {confidence:.0%} {method}",
        height=120 + 170 * rows,
    )
    for row, variant in enumerate(variants):
        own = [p for p in points if p.variant == variant]
        axis = "" if row == 0 else str(row + 1)
        days = [_iso(p.day) for p in own]
        style = styles[variant]

        def scaled(values: list[float | None]) -> list[float | None]:
            return [None if v is None else v * scale for v in values]

        low = scaled([finite(p.ci_low) for p in own])
        high = scaled([finite(p.ci_high) for p in own])
        common = {"x": days, "xaxis": f"x{axis}", "yaxis": f"y{axis}", "legendgroup": variant}
        data.append({**common, "type": "scatter", "mode": "lines", "y": high, "line": {"width": 0},
                     "showlegend": False, "hoverinfo": "skip", "name": f"{variant} upper"})  # fmt: skip
        data.append({**common, "type": "scatter", "mode": "lines", "y": low, "line": {"width": 0},
                     "fill": "tonexty", "fillcolor": with_alpha(style.color, 0.18),
                     "showlegend": False, "hoverinfo": "skip", "name": f"{variant} lower"})  # fmt: skip
        data.append({
            **common, "type": "scatter", "mode": "lines+markers", "name": variant,
            "y": scaled([p.difference for p in own]), "line": _line(style),
            "marker": {"symbol": style.marker, "size": 5, "color": style.color},
            "customdata": [[lo, hi, p.treatment_units, p.control_units]
                           for lo, hi, p in zip(low, high, own, strict=True)],
            "hovertemplate": f"{variant}: %{{y:.4g}} [%{{customdata[0]:.4g}}, %{{customdata[1]:.4g}}]"
                             " n=%{customdata[2]:,} vs %{customdata[3]:,}<extra></extra>",
        })  # fmt: skip
        top = 1.0 - row * (panel + gap)
        layout[f"yaxis{axis}"] = _axis(
            domain=[max(0.0, top - panel), top], anchor=f"x{axis}", range=_settled_range(own, scale),
            title={"text": f"{variant}<br>({unit})", "font": {"size": 12}},
        )  # fmt: skip
        layout[f"xaxis{axis}"] = _axis(
            anchor=f"y{axis}", matches=None if row == 0 else "x", type="date",
            showticklabels=row == rows - 1,
            **({"title": DAY_AXIS["title"]} if row == rows - 1 else {}),
        )  # fmt: skip
    layout["shapes"] = [
        {"type": "line", "xref": "paper", "x0": 0, "x1": 1, "yref": f"y{'' if r == 0 else r + 1}",
         "y0": 0, "y1": 0, "line": {"color": NEUTRAL, "width": 1, "dash": "dot"}}
        for r in range(len(variants))
    ] + _decision_lines(decisions)  # fmt: skip
    layout["annotations"] = _decision_labels(decisions)
    return {"data": data, "layout": layout}


def _settled_range(points: Sequence[EvidencePoint], scale: float) -> list[float]:
    """Fit the axis to the last three quarters of the days: the first days' intervals are
    so wide that they would flatten everything after them (they run off the panel)."""
    settled = points[len(points) // 4 :]
    values = [0.0] + [
        v * scale
        for p in settled
        for v in (finite(p.ci_low), finite(p.ci_high), p.difference)
        if v is not None
    ]
    low, high = min(values), max(values)
    pad = 0.12 * (high - low) or 1.0
    return [low - pad, high + pad]


def _decision_lines(decisions: Sequence[DecisionRecord]) -> list[dict[str, Any]]:
    return [
        {"type": "line", "xref": "x", "x0": _iso(d.created_at), "x1": _iso(d.created_at),
         "yref": "paper", "y0": 0, "y1": 1, "line": {"color": NEUTRAL, "width": 1, "dash": "dash"}}
        for d in decisions if d.kind != "continue"
    ]  # fmt: skip


def _decision_labels(decisions: Sequence[DecisionRecord]) -> list[dict[str, Any]]:
    """Labels at the top of the plot area, staggered so that decisions days apart stay legible."""
    shown = [d for d in decisions if d.kind != "continue"]
    return [
        {"xref": "x", "x": _iso(d.created_at), "yref": "paper", "y": 1, "yshift": -15 * (i % 3),
         "yanchor": "top", "xanchor": "left", "showarrow": False, "bgcolor": "rgba(255,255,255,0.8)",
         "font": {"size": 10, "color": "#333333"}, "text": d.kind + (f" {d.variant}" if d.variant else "")}
        for i, d in enumerate(shown)
    ]  # fmt: skip


def p_value_figure(
    points: Sequence[EvidencePoint], styles: Mapping[str, VariantStyle], alpha: float,
    decisions: Sequence[DecisionRecord] = (),
) -> Figure:  # fmt: skip
    """Always-valid p-value (Holm-adjusted across treatments) per day with the alpha boundary."""
    data = []
    smallest = alpha
    for variant, style in styles.items():
        own = [p for p in points if p.variant == variant and p.p_value_adjusted is not None]
        if not own:
            continue
        data.append({
            "type": "scatter", "mode": "lines+markers", "name": variant,
            "x": [_iso(p.day) for p in own],
            "y": (shown := [max(p.p_value_adjusted or 0.0, 1e-12) for p in own]),
            "line": _line(style), "marker": {"symbol": style.marker, "size": 5},
            "hovertemplate": f"{variant}: p=%{{y:.3g}}<extra></extra>",
        })  # fmt: skip
        smallest = min(smallest, *shown)
    layout = _layout(
        "Always-valid p-value (Holm-adjusted across treatments); below the line = significant",
        xaxis=_axis(**DAY_AXIS),
        # Log axes take their range in powers of ten; the boundary must always be in view.
        yaxis=_axis(type="log", title={"text": "p-value (log scale)"},
                    range=[math.log10(smallest) - 0.5, 0.1]),
    )  # fmt: skip
    layout["shapes"] = [
        {"type": "line", "xref": "paper", "x0": 0, "x1": 1, "yref": "y", "y0": alpha, "y1": alpha,
         "line": {"color": NEUTRAL, "width": 2, "dash": "dash"},
         "label": {"text": f"decision boundary alpha = {alpha:g}", "textposition": "end",
                   "yanchor": "top", "font": {"size": 11}}},
        *_decision_lines(decisions),
    ]  # fmt: skip
    layout["annotations"] = _decision_labels(decisions)
    return {"data": data, "layout": layout}


def exposures_figure(
    series: ExposureSeries, styles: Mapping[str, VariantStyle], planned_units: int
) -> Figure:
    """Cumulative exposed units per variant, with the planned units per variant."""
    data = [
        {"type": "scatter", "mode": "lines", "name": variant, "x": [_iso(d) for d in series.days],
         "y": series.cumulative.get(variant, []), "line": _line(style),
         "hovertemplate": f"{variant}: %{{y:,}} units<extra></extra>"}
        for variant, style in styles.items() if any(series.cumulative.get(variant, []))
    ]  # fmt: skip
    layout = _layout(
        "Cumulative exposed units per variant against the plan",
        xaxis=_axis(**DAY_AXIS),
        yaxis=_axis(title={"text": "exposed units (cumulative)"}, rangemode="tozero"),
    )
    reached = max((max(c, default=0) for c in series.cumulative.values()), default=0)
    if planned_units <= 3 * reached:
        layout["shapes"] = [
            {"type": "line", "xref": "paper", "x0": 0, "x1": 1, "yref": "y", "y0": planned_units,
             "y1": planned_units, "line": {"color": NEUTRAL, "width": 2, "dash": "dash"},
             "label": {"text": f"planned {planned_units:,} per variant", "textposition": "end",
                       "yanchor": "bottom", "font": {"size": 11}}}
        ]  # fmt: skip
    else:  # a line far above the data would flatten it: say where the plan is instead
        layout["annotations"] = [
            {"xref": "paper", "yref": "paper", "x": 1, "y": 1, "xanchor": "right",
             "yanchor": "top", "showarrow": False, "font": {"size": 12, "color": NEUTRAL},
             "text": f"planned {planned_units:,} per variant: off this scale"
                     f" ({reached / planned_units:.1%} reached by the largest arm)"}
        ]  # fmt: skip
    return {"data": data, "layout": layout}


def srm_figure(series: ExposureSeries, styles: Mapping[str, VariantStyle]) -> Figure:
    """Share of exposed units per variant against its configured weight, and the SRM p-value."""
    days = [_iso(d) for d in series.days]
    data: list[dict[str, Any]] = []
    tested = list(series.expected_share)
    for variant in tested:
        style = styles[variant]
        totals = [sum(series.cumulative[v][d] for v in tested) for d in range(len(days))]
        share = [
            series.cumulative[variant][d] / totals[d] * 100 if totals[d] else None
            for d in range(len(days))
        ]
        expected = series.expected_share[variant] * 100
        data.append({"type": "scatter", "mode": "lines", "name": variant, "x": days, "y": share,
                     "legendgroup": variant, "line": _line(style),
                     "hovertemplate": f"{variant}: %{{y:.2f}} % (configured {expected:.1f} %)"
                                      "<extra></extra>"})  # fmt: skip
        data.append({"type": "scatter", "mode": "lines", "name": f"{variant} configured",
                     "x": [days[0], days[-1]], "y": [expected, expected], "legendgroup": variant,
                     "showlegend": False, "hoverinfo": "skip",
                     "line": {"color": style.color, "width": 1, "dash": "dot"}})  # fmt: skip
    data.append({"type": "scatter", "mode": "lines+markers", "name": "SRM p-value (sequential, cumulative)",
                 "x": days, "y": [None if p is None else max(p, 1e-300) for p in series.srm_p_values],
                 "xaxis": "x2", "yaxis": "y2", "line": {"color": NEUTRAL, "width": 2},
                 "marker": {"size": 4}, "hovertemplate": "SRM p=%{y:.3g}<extra></extra>"})  # fmt: skip
    tested_p = [max(p, 1e-300) for p in series.srm_p_values if p is not None]
    layout = _layout(
        "Sample ratio: share of exposed units vs configured weight (dotted), and the SRM test",
        height=520,
        xaxis=_axis(anchor="y", type="date", showticklabels=False),
        yaxis=_axis(domain=[0.42, 1.0], title={"text": "share of exposed units (%)"}),
        xaxis2=_axis(anchor="y2", matches="x", **DAY_AXIS),
        yaxis2=_axis(
            domain=[0.0, 0.32],
            type="log",
            title={"text": "SRM p-value (log)"},
            range=[math.log10(min([series.srm_threshold, *tested_p])) - 0.5, 0.1],
        ),
    )
    layout["shapes"] = [
        {"type": "line", "xref": "paper", "x0": 0, "x1": 1, "yref": "y2",
         "y0": series.srm_threshold, "y1": series.srm_threshold,
         "line": {"color": "#D55E00", "width": 2, "dash": "dash"},
         "label": {"text": f"SRM flagged below p = {series.srm_threshold:g}",
                   "textposition": "end", "yanchor": "top", "font": {"size": 11}}}
    ]  # fmt: skip
    return {"data": data, "layout": layout}


def latency_figure(health: Sequence[VariantHealth], styles: Mapping[str, VariantStyle]) -> Figure:
    """Model latency percentiles per variant (recent predictions)."""
    labels = ["p50", "p90", "p95", "p99"]
    data = [
        {"type": "bar", "name": h.variant + (" (shadow)" if h.shadow else ""), "x": labels,
         "y": [h.latency_p50_ms, h.latency_p90_ms, h.latency_p95_ms, h.latency_p99_ms],
         "marker": {"color": styles[h.variant].color,
                    "pattern": {"shape": "/" if h.shadow else ""}},
         "hovertemplate": f"{h.variant} %{{x}}: %{{y:.2f}} ms<extra></extra>"}
        for h in health if h.variant in styles
    ]  # fmt: skip
    return {
        "data": data,
        "layout": _layout(
            "Model latency percentiles per variant (ms, recent predictions)",
            barmode="group", hovermode="closest",
            xaxis=_axis(title={"text": "percentile"}),
            yaxis=_axis(title={"text": "latency (ms)"}, rangemode="tozero"),
        ),
    }  # fmt: skip


def reliability_figure(
    health: Sequence[VariantHealth], styles: Mapping[str, VariantStyle]
) -> Figure:
    """Error and fallback rates per variant (%, recent predictions)."""
    labels = ["model error rate", "fallback rate"]
    data = [
        {"type": "bar", "name": h.variant + (" (shadow)" if h.shadow else ""), "x": labels,
         "y": [h.error_rate * 100, h.fallback_rate * 100],
         "marker": {"color": styles[h.variant].color,
                    "pattern": {"shape": "/" if h.shadow else ""}},
         "hovertemplate": f"{h.variant} %{{x}}: %{{y:.3f}} %<extra></extra>"}
        for h in health if h.variant in styles
    ]  # fmt: skip
    return {
        "data": data,
        "layout": _layout(
            "Model errors and fallbacks per variant (% of requests, recent predictions)",
            barmode="group", hovermode="closest",
            yaxis=_axis(title={"text": "% of requests"}, rangemode="tozero"),
        ),
    }  # fmt: skip


def decisions_figure(
    decisions: Sequence[DecisionRecord], styles: Mapping[str, VariantStyle],
    period: tuple[datetime, datetime] | None = None,
) -> Figure:  # fmt: skip
    """Each decision on a time axis, one row per kind, coloured by the variant it concerns."""
    kinds = list(dict.fromkeys(d.kind for d in decisions))
    groups: dict[str, list[DecisionRecord]] = {}
    for decision in decisions:
        groups.setdefault(decision.variant or "(experiment)", []).append(decision)
    data = []
    for name, items in groups.items():
        style = styles.get(name)
        data.append({
            "type": "scatter", "mode": "markers", "name": name,
            "x": [_iso(d.created_at) for d in items], "y": [d.kind for d in items],
            "marker": {"size": 13, "color": style.color if style else NEUTRAL,
                       "symbol": style.marker if style else "circle-open",
                       "line": {"width": 1, "color": "#333333"}},
            # Escaped: plotly renders <a href>, <b> and friends in hover text; a reason is text.
            "text": [html.escape(f"{d.status} by {d.actor}: {d.reason}") for d in items],
            "hovertemplate": "%{y} %{x|%Y-%m-%d %H:%M} UTC<br>%{text}<extra>" + name + "</extra>",
        })  # fmt: skip
    return {
        "data": data,
        "layout": _layout(
            "Decision timeline (audit log)", height=max(260, 150 + 40 * len(kinds)),
            hovermode="closest",
            xaxis=_axis(**TIME_AXIS, **({"range": [_iso(period[0]), _iso(period[1])]} if period else {})),
            yaxis=_axis(type="category", categoryorder="array", categoryarray=kinds,
                        title={"text": "decision"}),
        ),
    }  # fmt: skip


CONFIG = {
    "displaylogo": False,
    "responsive": True,
    "toImageButtonOptions": {"format": "png", "scale": 2},
}


def drift_figure(
    checks: Sequence[DriftCheck], styles: Mapping[str, VariantStyle], guardrail: str
) -> Figure:
    """One drift guardrail's distance per window and treatment, against the threshold.

    A treatment checked against its reference profile and the control (``against: both``) has
    two lines: the one against its profile dotted.
    """
    chosen = [c for c in checks if c.guardrail == guardrail and c.variant in styles]
    profile = "reference profile"
    data: list[dict[str, Any]] = [
        {"type": "scatter", "mode": "lines+markers", "name": f"{c.variant} vs {c.reference}",
         "x": [_iso(w.start) for w in c.history], "y": [finite(w.distance) for w in c.history],
         "line": {**_line(styles[c.variant]), **({"dash": "dot"} if c.reference == profile else {})},
         "marker": {"symbol": styles[c.variant].marker, "size": 5},
         "hovertemplate": f"{html.escape(c.variant)} %{{x}}: %{{y:.3f}}<extra></extra>"}
        for c in chosen
    ]  # fmt: skip
    if chosen:
        first = chosen[0]
        starts = [_iso(w.start) for w in first.history]
        data.append({"type": "scatter", "mode": "lines", "name": f"threshold {first.threshold:g}",
                     "x": starts, "y": [first.threshold] * len(starts),
                     "line": {"color": NEUTRAL, "dash": "dash", "width": 1.5}, "hoverinfo": "skip"})  # fmt: skip
    measure = chosen[0].measure if chosen else "distance"
    what = "outputs" if guardrail == "prediction_drift" else "input columns"
    against = " and ".join(
        sorted(
            {"the reference profile" if c.reference == profile else "the control" for c in chosen}
        )
    )
    return {
        "data": data,
        "layout": _layout(
            f"{guardrail}: largest {measure} over the {what}, per window, against "
            f"{against or 'the control'}",
            xaxis=_axis(**TIME_AXIS), yaxis=_axis(title={"text": f"{measure} (largest column)"},
                                                  rangemode="tozero"),
        ),
    }  # fmt: skip


def shadow_figure(reports: Sequence[ShadowReport], styles: Mapping[str, VariantStyle]) -> Figure:
    """Each shadow's agreement with the served model per hour, with its 95 % interval."""
    data: list[dict[str, Any]] = []
    for found in reports:
        style = styles.get(found.variant)
        if style is None:
            continue
        hours = [w.hour for w in found.hours]
        data.append({"type": "scatter", "mode": "lines+markers", "name": f"{found.variant} agreement",
                     "x": hours, "y": [w.agreement for w in found.hours], "line": _line(style),
                     "marker": {"symbol": style.marker, "size": 5},
                     "error_y": {"type": "data", "symmetric": False,
                                 "array": [None if w.agreement is None or w.agreement_ci_high is None
                                           else w.agreement_ci_high - w.agreement for w in found.hours],
                                 "arrayminus": [None if w.agreement is None or w.agreement_ci_low is None
                                                else w.agreement - w.agreement_ci_low for w in found.hours],
                                 "color": with_alpha(style.color, 0.6)}})  # fmt: skip
    return {
        "data": data,
        "layout": _layout(
            "Shadow agreement with the served model per hour (95 % Wilson interval)",
            xaxis=_axis(**TIME_AXIS), yaxis=_axis(title={"text": "share of rows deciding alike"},
                                                  range=[0, 1.02]),
        ),
    }  # fmt: skip


def maturity_figure(
    days: Sequence[date], mature: Mapping[str, Sequence[int]], pending: Mapping[str, Sequence[int]],
    styles: Mapping[str, VariantStyle], metric: str, window: str,
) -> Figure:  # fmt: skip
    """Matured and pending units of a windowed metric per variant, as of each day."""
    data: list[dict[str, Any]] = []
    x = [_iso(d) for d in days]
    for variant, counts in mature.items():
        style = styles.get(variant)
        if style is None:
            continue
        data.append({"type": "scatter", "mode": "lines", "name": f"{variant} mature", "x": x,
                     "y": list(counts), "line": _line(style)})  # fmt: skip
        data.append({"type": "scatter", "mode": "lines", "name": f"{variant} pending", "x": x,
                     "y": list(pending[variant]),
                     "line": {"color": with_alpha(style.color, 0.5), "dash": "dot", "width": 2}})  # fmt: skip
    return {
        "data": data,
        "layout": _layout(
            f"{metric} (window {window}): units analysed (mature) and waiting (pending)",
            xaxis=_axis(**DAY_AXIS), yaxis=_axis(title={"text": "units"}, rangemode="tozero"),
        ),
    }  # fmt: skip


def segments_figure(
    report: SegmentReport, attribute: str, styles: Mapping[str, VariantStyle], metric_type: str
) -> Figure:
    """Each segment's difference on the primary metric with its always-valid interval, one
    row per segment and one marker per treatment; filled where significant after correction."""
    scale, unit = difference_scale(metric_type)
    rows = [c for c in report.comparisons if c.attribute == attribute]
    segments = sorted({c.segment for c in rows})
    data = []
    for variant in dict.fromkeys(c.variant for c in rows):
        mine = [c for c in rows if c.variant == variant]
        style = styles.get(variant)
        data.append({
            "type": "scatter", "mode": "markers", "name": variant, "orientation": "h",
            "x": [c.difference * scale for c in mine], "y": [c.segment for c in mine],
            "error_x": {"type": "data", "symmetric": False,
                        "array": [(finite(c.ci_high) or c.difference) * scale - c.difference * scale
                                  for c in mine],
                        "arrayminus": [c.difference * scale - (finite(c.ci_low) or c.difference) * scale
                                       for c in mine]},
            "marker": {"size": 10, "color": style.color if style else NEUTRAL,
                       "symbol": [(style.marker if style else "circle") + ("" if c.significant else "-open")
                                  for c in mine]},
            "customdata": [[c.p_value_adjusted, c.treatment_units, c.control_units] for c in mine],
            "hovertemplate": f"{html.escape(variant)} %{{y}}: %{{x:.3g}} {unit}, adjusted p=%{{customdata[0]:.3g}}"
                             ", units %{customdata[1]} vs %{customdata[2]}<extra></extra>",
        })  # fmt: skip
    correction = "Holm" if report.correction == "holm" else "Benjamini-Hochberg"
    return {
        "data": data,
        "layout": _layout(
            f"{html.escape(report.metric)} by {html.escape(attribute)}: treatment minus control "
            f"({unit}), filled when significant after {correction}; informs, never decides",
            height=max(260, 60 + 40 * len(segments)), hovermode="closest",
            xaxis=_axis(title={"text": f"difference ({unit}), {1 - report.alpha:.0%} always-valid"
                               " interval, not adjusted"}, zeroline=True),
            yaxis=_axis(type="category", categoryorder="array", categoryarray=segments),
        ),
    }  # fmt: skip
