"""Analyst dashboards: plotly pages under /dashboards/ and ``abx report``.

``data`` reads what a page shows from the rollup tables (through the same analysis as the
decisions), ``evidence``/``model_health``/``audit_log``/``sample_size`` each own one part,
``figures`` builds plotly figures from plain data with the ``palette``, ``render`` fills the
Jinja templates, ``pages`` is the Flask blueprint and ``report`` the self-contained file.
"""
