"""Fault injection for tests: every decision sleeps inside its transaction.

A test puts this folder first on a worker's PYTHONPATH; Python imports ``sitecustomize``
at start-up, before the worker imports the decision cycle, so the cycle binds the slow
``decide``. How long it sleeps comes from ``ABX_TEST_DECISION_SLEEP`` (seconds); the process
that sleeps writes its pid to ``ABX_TEST_DECISION_PIDFILE`` when set, so a test can kill the
very process that is inside the decision.
"""

from __future__ import annotations

import os
import time
from typing import Any

from service.decisions import rules

_decide = rules.decide


def _slow_decide(*args: Any, **kwargs: Any) -> Any:
    pidfile = os.environ.get("ABX_TEST_DECISION_PIDFILE")
    if pidfile:
        with open(pidfile, "w") as file:
            file.write(str(os.getpid()))
    time.sleep(float(os.environ.get("ABX_TEST_DECISION_SLEEP", "4")))
    return _decide(*args, **kwargs)


rules.decide = _slow_decide
