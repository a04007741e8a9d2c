"""Analyst dashboards (plotly pages served under /dashboards/); filled in by the dashboards issue."""
