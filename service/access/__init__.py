"""Who may do what: scoped API keys, analysts' sessions, rate-limit policy and counters.

No Flask here: ``service/api/auth.py`` is the HTTP glue, ``dashboards/pages.py`` the sign-in
pages, ``service/cli/keys.py`` the ``abx keys`` command.
"""
