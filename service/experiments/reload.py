"""Pick up changed experiment YAML and model files without restarting gunicorn.

Every ``reload_poll_seconds`` each serving process compares the size and
modification time of the experiment files and of the files under the models
root with what it last loaded. On a change it validates everything again (a
new model must match its new checksum); a configuration that fails keeps the
old one serving and logs every problem. A valid one is loaded in full (new
sessions warmed up) before it replaces the old in one step, and requests in
flight finish on the snapshot they started with.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from service.background import PeriodicThread
from service.experiments.validation import LoadResult, experiment_files, load_experiments

log = logging.getLogger(__name__)
Fingerprint = tuple[tuple[str, int, int], ...]


def fingerprint(experiments: Path, models_root: Path) -> Fingerprint:
    """(path, size, mtime) of every experiment file and every file under the models root."""
    files = list(experiment_files([experiments]))
    if models_root.is_dir():
        files += [p for p in models_root.rglob("*") if p.is_file() and not p.name.startswith(".")]
    marks = []
    for path in sorted(files):
        try:
            stat = path.stat()
        except OSError:
            continue
        marks.append((str(path), stat.st_size, stat.st_mtime_ns))
    return tuple(marks)


class HotReloader(PeriodicThread):
    def __init__(
        self,
        experiments: Path,
        models_root: Path,
        apply: Callable[[LoadResult], None],
        interval: float,
    ) -> None:
        super().__init__("abx-hot-reload", interval)
        self._experiments = experiments
        self._models_root = models_root
        self._apply = apply
        self._seen = fingerprint(experiments, models_root)
        self.reloads = 0
        self.rejected = 0

    def start(self) -> None:
        if self._interval > 0:  # 0: never reload
            super().start()

    def check(self) -> bool | None:
        """Reload if anything changed: True applied, False rejected, None nothing changed."""
        current = fingerprint(self._experiments, self._models_root)
        if current == self._seen:
            return None
        self._seen = current
        loaded = load_experiments([self._experiments], self._models_root)
        if not loaded.ok:
            self.rejected += 1
            log.error(
                "reload rejected, the previous configuration keeps serving:\n%s",
                "\n".join(str(problem) for problem in loaded.problems),
            )
            return False
        try:
            self._apply(loaded)
        except Exception:
            self.rejected += 1
            log.exception("reload failed, the previous configuration keeps serving")
            return False
        self.reloads += 1
        log.info("reloaded %d experiment(s)", len(loaded.experiments))
        return True

    def tick(self) -> None:
        self.check()
