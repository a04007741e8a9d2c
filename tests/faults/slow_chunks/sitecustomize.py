"""Fault injection for tests: every chunk of a scoring job sleeps before it is written.

A test puts this folder first on a worker's PYTHONPATH; the job runner then calls the slow
``write_chunk``, which gives the test time to kill or cancel a job between two chunks. How
long it sleeps comes from ``ABX_TEST_CHUNK_SLEEP`` (seconds). With ``ABX_TEST_KILL_AFTER_CHUNK``
(a chunk index) and ``ABX_TEST_KILL_MARK`` (a file that does not exist yet), the process
kills itself with SIGKILL right after writing that chunk, before its commit, once: the mark
is created first, so the resumed run writes the chunk again and goes on.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from service.jobs import files

_write_chunk = files.write_chunk


def _slow_write_chunk(*args: Any, **kwargs: Any) -> Any:
    time.sleep(float(os.environ.get("ABX_TEST_CHUNK_SLEEP", "0.3")))
    written = _write_chunk(*args, **kwargs)
    kill_after, mark = (
        os.environ.get("ABX_TEST_KILL_AFTER_CHUNK"),
        os.environ.get("ABX_TEST_KILL_MARK"),
    )
    if kill_after is not None and mark and args[3] == int(kill_after):
        try:
            Path(mark).touch(exist_ok=False)
        except FileExistsError:
            return written
        os.kill(os.getpid(), signal.SIGKILL)
    return written


files.write_chunk = _slow_write_chunk
