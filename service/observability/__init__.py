"""Cross-cutting operability: metric definitions, their export, and the log format.

Every capability records into ``metrics``; ``exposition`` serves them from the parent of
a process family; ``logging`` configures structlog and carries the request id. Nothing
here imports Flask or Celery: their glue lives in ``service/api/instrumentation.py`` and
``service/celery_app.py``.
"""
