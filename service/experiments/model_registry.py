"""Models named in an MLflow registry: resolve, download, verify, cache; move aliases.

A variant's YAML may name ``registry: mlflow:models:/churn@challenger`` (an alias) or
``mlflow:models:/churn/3`` (a version) instead of a file. Loading (and every hot reload)
asks the registry which version the name means, downloads that version once into
``<models root>/.mlflow/<name>/<version>/`` and records the SHA-256 of its ONNX file
there. The variant then serves that file like any other (``path`` and ``sha256`` are
filled in), so placement, the inference process and the checks need nothing new.

When the registry cannot be reached, the last version this host resolved for the name
(remembered on disk beside the cache) serves on: an unreachable registry never takes a
model away. A cached file whose bytes no longer match the digest recorded at download is
downloaded again, never served.

``mlflow`` is imported on first use only: the core runs without the ``mlflow`` extra.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.experiments.model_refs import file_sha256
from service.experiments.schema import REGISTRY_PATTERN

log = logging.getLogger(__name__)

SCHEME = "mlflow:models:/"
CACHE_FOLDER = ".mlflow"
"""The cache's folder under the models root (its dot keeps it out of the reload's file scan)."""
TIMEOUT_SECONDS = "5"
"""Each registry request's timeout; requests are not retried (a reload tries again later)."""


class RegistryError(Exception):
    """The registry could not say (or give) what a reference names; the message says why."""


@dataclass(frozen=True)
class RegistryReference:
    """A parsed ``mlflow:models:/name@alias`` or ``mlflow:models:/name/version``."""

    uri: str
    name: str
    alias: str | None
    version: str | None


def parse_reference(uri: str) -> RegistryReference:
    if re.fullmatch(REGISTRY_PATTERN, uri) is None:
        raise ValueError(f"{uri!r} is not mlflow:models:/<name>@<alias> or .../<name>/<version>")
    rest = uri[len(SCHEME) :]
    if "@" in rest:
        name, alias = rest.split("@", 1)
        return RegistryReference(uri, name, alias, None)
    name, version = rest.rsplit("/", 1)
    return RegistryReference(uri, name, None, version)


@dataclass(frozen=True)
class ResolvedModel:
    """The version a reference named when it was resolved, and its file in the cache."""

    uri: str
    name: str
    version: str
    sha256: str
    path: str
    """The ONNX file, relative to the models root."""
    from_cache: bool = False
    """True when the registry was unreachable and the last version resolved here serves on."""


def _mlflow() -> Any:
    """The mlflow package, imported on first use; fail fast instead of retrying for minutes."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", TIMEOUT_SECONDS)
    try:
        import mlflow
    except ImportError as error:
        raise RegistryError(
            "a registry model needs the mlflow extra: pip install 'abx[mlflow]'"
        ) from error
    return mlflow


def mlflow_installed() -> bool:
    try:
        _mlflow()
    except RegistryError:
        return False
    return True


class ModelRegistry:
    """An MLflow registry as abx uses it: one per process, shared by loads and reloads."""

    def __init__(self, tracking_uri: str | None, models_root: Path) -> None:
        self.tracking_uri = tracking_uri
        self.cache = models_root / CACHE_FOLDER
        self._models_root = models_root
        self._lock = threading.Lock()
        self._client: Any = None
        self.observe: Callable[[str], None] = lambda outcome: None
        """Counts each resolution's outcome (resolved, last_good, failed): the serving
        processes point it at ``abx_model_registry_resolutions`` (``count_resolutions``);
        ``abx serve`` checks the YAML before it sets up the metrics, so this module cannot
        import them."""

    def client(self) -> Any:
        if self.tracking_uri is None:
            raise RegistryError("a registry model needs ABX_MLFLOW_TRACKING_URI (the registry)")
        mlflow = _mlflow()
        if self._client is None:
            self._client = mlflow.MlflowClient(
                tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri
            )
        return self._client

    # Which version a reference names ------------------------------------------------------

    def lookup(self, reference: RegistryReference) -> str:
        """The version the reference names in the registry now (RegistryError if it cannot say)."""
        if reference.version is not None:
            return reference.version
        client = self.client()
        try:
            found = client.get_model_version_by_alias(reference.name, reference.alias)
        except Exception as error:  # unreachable, or no such model or alias
            raise RegistryError(f"{reference.uri}: {_brief(error)}") from error
        return str(found.version)

    def versions(self, uris: list[str]) -> tuple[tuple[str, str | None], ...]:
        """Each alias's version now (None where unknown): what the hot reload polls."""
        marks: list[tuple[str, str | None]] = []
        for uri in sorted(set(uris)):
            reference = parse_reference(uri)
            if reference.alias is None:
                continue
            try:
                marks.append((uri, self.lookup(reference)))
            except RegistryError:
                last = self._last_resolved(reference)  # unreachable: nothing changed for us
                marks.append((uri, last.version if last else None))
        return tuple(marks)

    # Resolve: look up, download once, verify --------------------------------------------

    def resolve(self, uri: str) -> ResolvedModel:
        """The version ``uri`` names, downloaded and verified; the last one if unreachable."""
        reference = parse_reference(uri)
        try:
            version = self.lookup(reference)
            resolved = self._cached_or_download(reference, version)
        except RegistryError as error:
            last = self._last_resolved(reference)
            if last is None or self._verified(last) is None:
                self.observe("failed")
                raise
            self.observe("last_good")
            log.warning(
                "%s: registry unavailable (%s); version %s resolved earlier serves on",
                uri,
                error,
                last.version,
            )
            return ResolvedModel(uri, last.name, last.version, last.sha256, last.path, True)
        self._remember(reference, resolved)
        self.observe("resolved")
        return resolved

    def _version_folder(self, name: str, version: str) -> Path:
        return self.cache / name / version

    def _verified(self, resolved: ResolvedModel) -> ResolvedModel | None:
        """The cached file if its bytes still have the digest recorded at download."""
        path = self._models_root / resolved.path
        if path.is_file() and file_sha256(path) == resolved.sha256:
            return resolved
        return None

    def _cached_or_download(self, reference: RegistryReference, version: str) -> ResolvedModel:
        """The version's file from the cache, downloaded first when missing or changed.

        Workers start together: a lock file makes one download while the others wait for it.
        """
        folder = self._version_folder(reference.name, version)
        record = folder / "abx-version.json"
        folder.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, (folder.parent / ".lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if record.is_file():
                cached = ResolvedModel(reference.uri, **json.loads(record.read_text("utf-8")))
                if self._verified(cached) is not None:
                    return cached
                log.warning("%s version %s: cached file changed; downloading again", *(
                    reference.name, version))  # fmt: skip
            return self._download(reference, version, folder, record)

    def _download(
        self, reference: RegistryReference, version: str, folder: Path, record: Path
    ) -> ResolvedModel:
        mlflow = _mlflow()
        client = self.client()
        staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=folder.parent))
        try:
            try:
                # The version's own artifact location: a models:/ URI would be resolved
                # against the process-wide registry URI, not this client's.
                source = client.get_model_version_download_uri(reference.name, version)
                mlflow.artifacts.download_artifacts(
                    artifact_uri=source, dst_path=str(staging), tracking_uri=self.tracking_uri
                )
            except Exception as error:
                raise RegistryError(
                    f"{reference.uri} version {version}: {_brief(error)}"
                ) from error
            onnx_files = sorted(staging.rglob("*.onnx"))
            if len(onnx_files) != 1:
                raise RegistryError(
                    f"{reference.uri} version {version} holds {len(onnx_files)} .onnx files "
                    f"({[p.name for p in onnx_files]}); abx serves a version with exactly one"
                )
            sha256 = file_sha256(onnx_files[0])
            relative = (folder / onnx_files[0].relative_to(staging)).relative_to(self._models_root)
            (staging / record.name).write_text(
                json.dumps({"name": reference.name, "version": version, "sha256": sha256,
                            "path": str(relative)}), "utf-8",
            )  # fmt: skip
            if folder.exists():  # a copy that failed its check
                shutil.rmtree(folder)
            staging.rename(folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        log.info("%s: downloaded version %s (sha256 %s)", reference.uri, version, sha256)
        return ResolvedModel(reference.uri, reference.name, version, sha256, str(relative))

    # The last version resolved here, for when the registry is away -----------------------

    def _last_path(self, reference: RegistryReference) -> Path:
        label = f"@{reference.alias}" if reference.alias else f"v{reference.version}"
        return self.cache / reference.name / f"{label}.json"

    def _remember(self, reference: RegistryReference, resolved: ResolvedModel) -> None:
        target = self._last_path(reference)
        fd, temporary = tempfile.mkstemp(prefix=".last-", dir=target.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump({"name": resolved.name, "version": resolved.version,
                       "sha256": resolved.sha256, "path": resolved.path}, handle)  # fmt: skip
        os.replace(temporary, target)

    def _last_resolved(self, reference: RegistryReference) -> ResolvedModel | None:
        try:
            data = json.loads(self._last_path(reference).read_text("utf-8"))
            return ResolvedModel(reference.uri, **data)
        except (OSError, ValueError, TypeError):
            return None

    # Aliases (promotion) ------------------------------------------------------------------

    def alias_version(self, name: str, alias: str) -> str | None:
        """The version ``name@alias`` points at, None when the alias is not set."""
        client = self.client()
        mlflow = _mlflow()
        try:
            return str(client.get_model_version_by_alias(name, alias).version)
        except mlflow.exceptions.MlflowException as error:
            if getattr(error, "error_code", "") in (
                "RESOURCE_DOES_NOT_EXIST",
                "INVALID_PARAMETER_VALUE",
            ):
                return None
            raise RegistryError(f"{name}@{alias}: {_brief(error)}") from error
        except Exception as error:
            raise RegistryError(f"{name}@{alias}: {_brief(error)}") from error

    def move_alias(self, name: str, alias: str, version: str | None) -> None:
        """Point ``name@alias`` at ``version``; None removes the alias."""
        client = self.client()
        try:
            if version is None:
                client.delete_registered_model_alias(name, alias)
            else:
                client.set_registered_model_alias(name, alias, version)
        except Exception as error:
            raise RegistryError(f"{name}@{alias} -> {version}: {_brief(error)}") from error


def _brief(error: BaseException) -> str:
    """The first line of an error (mlflow's carry whole response bodies)."""
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:300]


_REGISTRIES: dict[tuple[str | None, Path], ModelRegistry] = {}


def model_registry(tracking_uri: str | None, models_root: Path) -> ModelRegistry:
    """This process's registry client for the settings (one, so loads and reloads share it)."""
    key = (tracking_uri, models_root.resolve())
    if key not in _REGISTRIES:
        _REGISTRIES[key] = ModelRegistry(tracking_uri, models_root.resolve())
    return _REGISTRIES[key]


def count_resolutions(registry: ModelRegistry) -> None:
    """Count the registry's resolutions in ``abx_model_registry_resolutions`` from now on."""
    from service.observability import metrics  # after the metrics' folder is set up

    registry.observe = lambda outcome: metrics.REGISTRY_RESOLUTIONS.labels(outcome).inc()
