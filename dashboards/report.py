"""``abx report``: one experiment's page as a single self-contained HTML file to send by mail."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cache
from typing import Any

from plotly.offline import get_plotlyjs

from dashboards.data import experiment_page
from dashboards.render import render_experiment
from service.assignment.sync import weights_in_force
from service.experiments.schema import Experiment


@cache
def plotly_source() -> str:
    """plotly.js as shipped with the installed plotly package (no CDN, works offline)."""
    source: str = get_plotlyjs()
    return source


def report_html(conn: Any, experiment: Experiment, weights: dict[str, float] | None = None) -> str:
    """The experiment page with plotly.js inlined and no links back to the server."""
    page = experiment_page(
        conn,
        experiment,
        weights if weights is not None else weights_in_force(conn, experiment),
        datetime.now(UTC),
    )
    return render_experiment(page, plotly_src=None, plotly_inline=plotly_source())
