"""Serve the models folder by file stem, and reload a model when its file changes.

``abx infer --bind`` answers the Open Inference Protocol for every ``*.onnx`` file at the top
of the models folder, named by its stem (``churn_logreg.onnx`` is ``churn_logreg``). Every
``interval`` seconds the folder's files are compared, by size and modification time, with what
was last acted on:

- a new or changed file is loaded (a new session, warmed up) beside the version serving, then
  named in one step (``ModelHost.name``): requests that already hold the old version finish on
  its session, and new ones get the new one. A file is acted on once it has looked the same
  for two looks in a row, so a copy still being written is not loaded half-way;
- a file that does not load (truncated, not ONNX, an operator onnxruntime lacks) leaves the
  version serving as it is; the failure is logged, counted (``report``) and shown in the
  model's metadata until a later version of the file loads;
- a file that is gone stops being served (404), after the requests in flight are answered.

Polling, not inotify: it needs nothing beyond the standard library, works on every file
system a models folder lives on (network and container volumes included), and a look is cheap:
about 0.26 ms for 30 files on the 2-core development machine under load, once a poll interval
(``ABX_RELOAD_POLL_SECONDS``). Free of the web stack, as ``host.py``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path

from service.background import PeriodicThread
from service.inference.host import LoadError, ModelHost, file_sha256

log = logging.getLogger(__name__)

Mark = tuple[int, int]
"""A file's size and modification time (ns): what a look compares."""
NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
"""The stems a URL path can name (``oip.MODEL_PATH``); other files are not served."""


def look(root: Path) -> dict[str, Mark]:
    """The ``*.onnx`` files at the top of ``root`` by stem, with their marks."""
    marks = {}
    try:
        paths = list(root.glob("*.onnx"))
    except OSError:
        return {}
    for path in paths:
        try:
            stat = path.stat()
        except OSError:  # removed between the listing and the look
            continue
        if path.is_file() and NAME.match(path.stem):
            marks[path.stem] = (stat.st_size, stat.st_mtime_ns)
    return marks


class ModelFolder(PeriodicThread):
    """Keeps ``host``'s names in step with the files of its models root."""

    def __init__(
        self,
        host: ModelHost,
        interval: float,
        report: Callable[[str, str], None] | None = None,
    ) -> None:
        """``report(name, outcome)``: ``loaded``, ``failed`` or ``removed`` (a metric)."""
        super().__init__("abx-infer-folder", interval)
        self.host = host
        self._report = report
        self._acted: dict[str, Mark] = {}
        """Per name, the mark of the file last loaded or refused."""
        self._seen: dict[str, Mark] = {}
        """Per name, the mark of the previous look (a change must hold for two looks)."""

    def scan(self, settled: bool = False) -> None:
        """One look; ``settled``: act on changes at once (the start, before serving)."""
        marks = look(self.host.root)
        for name in sorted(set(self._acted) - set(marks)):
            self._remove(name)
        for name, mark in sorted(marks.items()):
            if self._acted.get(name) == mark:
                continue
            if settled or self._seen.get(name) == mark:
                self._acted[name] = mark
                self._load(name)
        self._seen = marks

    def tick(self) -> None:
        self.scan()

    def _load(self, name: str) -> None:
        relative = f"{name}.onnx"
        serving = self.host.by_name(name)
        try:
            sha256 = file_sha256(self.host.root / relative)
            if serving is not None and serving.model.sha256 == sha256:
                self.host.problems.pop(name, None)  # touched, or put back as it was
                return
            hosted = self.host.load(relative, sha256)
        except (LoadError, OSError) as error:
            self.host.problems[name] = str(error)
            kept = f"sha256 {serving.model.sha256[:12]} serves on" if serving else "not served"
            log.error("model %s: the new file did not load (%s); %s", name, error, kept)
            self._tell(name, "failed")
            return
        self.host.name(name, hosted)
        self.host.problems.pop(name, None)
        replaced = f", replacing sha256 {serving.model.sha256[:12]}" if serving else ""
        log.info(
            "model %s: sha256 %s serves on %s%s", name, sha256[:12], hosted.model.provider, replaced
        )
        self._tell(name, "loaded")

    def _remove(self, name: str) -> None:
        del self._acted[name]
        self.host.problems.pop(name, None)
        self.host.name(name, None)
        log.info("model %s: its file is gone; no longer served", name)
        self._tell(name, "removed")

    def _tell(self, name: str, outcome: str) -> None:
        if self._report is not None:
            self._report(name, outcome)
