"""Benchmark only: the checks for values PostgreSQL cannot store find nothing.

``validation_http.py`` puts this folder on the PYTHONPATH of one of its two ``abx serve``, so
that ``/v1/assign`` and ``/v1/events`` are measured with and without the checks side by side.
The same two functions as ``validation.py`` switches off in-process: the unit id's text check
and the event's ``event_id``/``properties`` check. Python imports ``sitecustomize`` at start-up,
before gunicorn forks its workers.
"""

from __future__ import annotations

import service.assignment.units as units
import service.events.validation as validation

validation._storable_problem = lambda event, properties: None  # type: ignore[assignment]
units.text_problem = lambda text: None  # type: ignore[assignment]
