"""Fault injection for tests: every decision sleeps inside its transaction.

A test puts this folder first on a worker's PYTHONPATH; Python imports ``sitecustomize``
at start-up, before the worker imports the decision cycle, so the cycle binds the slow
``decide``. How long it sleeps comes from ``ABX_TEST_DECISION_SLEEP`` (seconds).
"""

from __future__ import annotations

import os
import time
from typing import Any

from service.decisions import rules

_decide = rules.decide


def _slow_decide(*args: Any, **kwargs: Any) -> Any:
    time.sleep(float(os.environ.get("ABX_TEST_DECISION_SLEEP", "4")))
    return _decide(*args, **kwargs)


rules.decide = _slow_decide
