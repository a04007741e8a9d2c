"""Fault injection for tests: every chunk of a scoring job sleeps before its part is written.

A test puts this folder first on a worker's PYTHONPATH; the job runner then calls the slow
``write_part``, which gives the test time to kill or cancel a job between two chunks. How
long it sleeps comes from ``ABX_TEST_CHUNK_SLEEP`` (seconds).
"""

from __future__ import annotations

import os
import time
from typing import Any

from service.jobs import files

_write_part = files.write_part


def _slow_write_part(*args: Any, **kwargs: Any) -> Any:
    time.sleep(float(os.environ.get("ABX_TEST_CHUNK_SLEEP", "0.3")))
    return _write_part(*args, **kwargs)


files.write_part = _slow_write_part
