"""Pick up changed experiment YAML and model files without restarting gunicorn.

Every ``reload_poll_seconds`` each serving process compares the size and
modification time of the experiment files and of the files under the models
root with what it last loaded. On a change it validates everything again (a
new model must match its new checksum); a configuration that fails keeps the
old one serving and logs every problem. A valid one is loaded in full (new
sessions warmed up) before it replaces the old in one step, and requests in
flight finish on the snapshot they started with.

Models from an MLflow registry change without any file changing here: every
``registry_poll_seconds`` the reloader asks the registry which version each alias names,
and a moved alias reloads like a changed file (the new version is downloaded, verified and
warmed up first). A registry that does not answer changes nothing: the versions resolved
before serve on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from service.background import PeriodicThread
from service.experiments.model_registry import CACHE_FOLDER, ModelRegistry
from service.experiments.validation import LoadResult, experiment_files, load_experiments

log = logging.getLogger(__name__)
Fingerprint = tuple[tuple[str, int, int], ...]


def fingerprint(experiments: Path, models_root: Path) -> Fingerprint:
    """(path, size, mtime) of every experiment file and every file under the models root
    (but the registry's cache: a download is the result of a reload, not a reason for one)."""
    files = list(experiment_files([experiments]))
    if models_root.is_dir():
        files += [
            p
            for p in models_root.rglob("*")
            if p.is_file()
            and not p.name.startswith(".")
            and p.relative_to(models_root).parts[0] != CACHE_FOLDER
        ]
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
        registry: ModelRegistry | None = None,
        registry_interval: float = 30.0,
        registry_uris: list[str] | None = None,
    ) -> None:
        super().__init__("abx-hot-reload", interval)
        self._experiments = experiments
        self._models_root = models_root
        self._apply = apply
        self._seen = fingerprint(experiments, models_root)
        self._registry = registry
        self._registry_interval = registry_interval
        self._registry_uris = list(registry_uris or [])
        self._registry_seen = self._registry_marks()
        self._registry_asked = time.monotonic()
        self.reloads = 0
        self.rejected = 0

    def _registry_marks(self) -> tuple[tuple[str, str | None], ...]:
        """Which version each registry alias of the loaded experiments names now."""
        if self._registry is None or not self._registry_uris:
            return ()
        return self._registry.versions(self._registry_uris)

    def _registry_moved(self) -> bool:
        if self._registry_interval <= 0 or not self._registry_uris:
            return False
        if time.monotonic() - self._registry_asked < self._registry_interval:
            return False
        self._registry_asked = time.monotonic()
        marks = self._registry_marks()
        if marks == self._registry_seen:
            return False
        log.info("registry aliases moved: %s", dict(marks))
        self._registry_seen = marks
        return True

    def start(self) -> None:
        if self._interval > 0:  # 0: never reload
            super().start()

    def check(self) -> bool | None:
        """Reload if anything changed: True applied, False rejected, None nothing changed."""
        current = fingerprint(self._experiments, self._models_root)
        if not self._registry_moved() and current == self._seen:
            return None
        self._seen = current
        loaded = load_experiments([self._experiments], self._models_root, self._registry)
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
        self._registry_uris = registry_uris(loaded)
        self.reloads += 1
        log.info("reloaded %d experiment(s)", len(loaded.experiments))
        return True

    def tick(self) -> None:
        self.check()


def registry_uris(loaded: LoadResult) -> list[str]:
    """The registry references of the loaded experiments' models."""
    return sorted(
        {
            variant.model.registry
            for item in loaded.experiments
            for variant in item.experiment.variants
            if variant.model is not None and variant.model.registry is not None
        }
    )
