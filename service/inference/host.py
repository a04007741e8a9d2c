"""The models an inference process hosts: by checksum, each with one batcher for all clients.

Every gunicorn worker of the host sends its rows here, so one micro-batcher per model gathers
the rows of all of them into one run (the GPU's whole point: 512 rows cost what 8 do). A model
is named by its path under the models root and its SHA-256, the two things a variant's YAML
pins, and a file whose content is not that checksum is refused. A hot reload in the workers
names a new checksum: it is loaded beside the old one, which finishes the runs it has queued
and is dropped once unused (least recently used first, beyond ``keep``).

Requests are checked against the model's inputs before they join a batch: one malformed
request must not fail the rows of the others in its batch. Each carries its deadline (the
caller's remaining budget, counted from when it arrived): rows still queued when it passes are
answered as a timeout without running, and a batch runs only until the latest deadline in it
(the watchdog stops it there: nobody is left to answer).

The Open Inference Protocol names models by file stem (``names``): ``abx infer --bind`` keeps
that table in step with the models folder (``folder.py``). Swapping a name's version drops the
old one from the host and closes its batcher, which runs what is queued first; requests that
already hold the old version finish on its session. Free of the web stack and of
prometheus-client (batch sizes go to ``observe``), for a bare GPU host.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from service.inference.batching import MicroBatcher
from service.inference.sessions import LoadedModel, load_model
from service.inference.signature import TensorSpec
from service.inference.watchdog import Watchdog

Feeds = Mapping[str, np.ndarray]
Outputs = dict[str, np.ndarray]


class LoadError(Exception):
    """The model could not be loaded (outside the root, missing, wrong checksum, not ONNX)."""


class BadInput(ValueError):
    """The request's arrays do not fit the model's inputs: refused before anything runs."""


@dataclass(eq=False)
class Hosted:
    model: LoadedModel
    batcher: MicroBatcher
    relative: str
    used: float = field(default_factory=time.monotonic)


def check_feeds(inputs: Sequence[TensorSpec], feeds: Feeds, max_rows: int) -> int:
    """The number of rows, or ``BadInput`` naming what does not fit."""
    names = {spec.name for spec in inputs}
    if set(feeds) != names:
        raise BadInput(f"inputs {sorted(feeds)}; the model takes {sorted(names)}")
    rows = -1
    for spec in inputs:
        array = feeds[spec.name]
        if array.dtype != np.dtype(spec.dtype):
            raise BadInput(f"{spec.name}: {array.dtype.name}; expected {spec.describe()}")
        if array.ndim != len(spec.shape) or any(
            want is not None and got != want
            for got, want in zip(array.shape, spec.shape, strict=False)
        ):
            raise BadInput(f"{spec.name}: shape {list(array.shape)}; expected {spec.describe()}")
        batch = array.shape[0] if array.ndim else 1
        if not 1 <= batch <= max_rows or rows not in (-1, batch):
            raise BadInput(f"{spec.name}: {batch} rows; expected 1 to {max_rows}, the same for all")
        rows = batch
    return rows


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ModelHost:
    def __init__(
        self,
        root: Path,
        threads: int,
        max_rows: int,
        max_wait: float,
        providers: Sequence[str] | None = None,
        observe: Callable[[str], Callable[[float], None]] | None = None,
        keep: int = 32,
    ) -> None:
        self.root = root.resolve()
        self.threads = threads
        self.max_rows = max_rows
        self.max_wait = max_wait
        self.providers = list(providers) if providers else None
        self._observe = observe
        self._keep = keep
        self._models: dict[str, Hosted] = {}
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}
        self._names: dict[str, Hosted] = {}
        """The Open Inference Protocol's names (file stems) when a folder is watched."""
        self.problems: dict[str, str] = {}
        """Per name, why its newest file is not the version serving (``folder.py``)."""
        self._watchdog = Watchdog()

    def _resolve(self, relative: str) -> Path:
        target = (self.root / relative).resolve()
        if not target.is_relative_to(self.root):
            raise LoadError(f"{relative!r} is outside the models root")
        if not target.is_file():
            raise LoadError(f"no model file {relative!r} under the models root")
        return target

    def load(self, relative: str, sha256: str) -> Hosted:
        """The hosted model with that content, loading it (once, however many ask) if new."""
        with self._lock:
            hosted = self._models.get(sha256)
            if hosted is not None:
                hosted.used = time.monotonic()
                return hosted
            loading = self._loading.setdefault(sha256, threading.Lock())
        with loading:
            with self._lock:
                if (hosted := self._models.get(sha256)) is not None:
                    return hosted
            try:
                path = self._resolve(relative)
                if file_sha256(path) != sha256:
                    raise LoadError(f"{relative} does not have SHA-256 {sha256}")
                model = load_model(path, sha256, self.providers, self.threads, (1, self.max_rows))
            except Exception as error:
                with self._lock:  # a failed load leaves no lock behind (any sha256 may be asked)
                    self._loading.pop(sha256, None)
                if isinstance(error, LoadError):
                    raise
                raise LoadError(f"{relative}: {error}") from None
            observe = self._observe(model.name) if self._observe else None
            batcher = MicroBatcher(
                model.run, self.max_rows, self.max_wait, model.name, observe,
                run_until=lambda feeds, deadline: self._run_until(model, feeds, deadline),
            )  # fmt: skip
            hosted = Hosted(model, batcher, relative)
            with self._lock:
                self._models[sha256] = hosted
                self._loading.pop(sha256, None)
                named = {id(h) for h in self._names.values()}
                unnamed = [h for h in self._models.values() if id(h) not in named]
                evicted = sorted(unnamed, key=lambda h: h.used)[: max(0, len(unnamed) - self._keep)]
                for old in evicted:
                    del self._models[old.model.sha256]
        for old in evicted:
            old.batcher.close()  # it drains what is queued first
        return hosted

    def load_file(self, relative: str) -> Hosted:
        """Load a file by path alone (``abx infer --model``): its checksum is read here."""
        return self.load(relative, file_sha256(self._resolve(relative)))

    def by_name(self, name: str) -> Hosted | None:
        """The version serving that file stem (the Open Inference Protocol's name): the one
        the watched folder names, else the most recently used loaded model of that stem."""
        with self._lock:
            if (named := self._names.get(name)) is not None:
                return named
            found = [h for h in self._models.values() if h.model.name == name]
        return max(found, key=lambda h: h.used) if found else None

    def name(self, name: str, hosted: Hosted | None) -> Hosted | None:
        """Serve ``hosted`` as ``name`` (None: no longer served); the version it replaced.

        The replaced version leaves the host at once (new requests cannot reach it) and its
        batcher is closed, which runs the rows already queued before it stops.
        """
        with self._lock:
            old = self._names.pop(name, None)
            if hosted is not None:
                self._names[name] = hosted
            if old is None or old is hosted or any(h is old for h in self._names.values()):
                return None  # still serving (another file with the same content)
            if self._models.get(old.model.sha256) is old:
                del self._models[old.model.sha256]
        old.batcher.close()
        return old

    def run(
        self, hosted: Hosted, feeds: Feeds, timeout: float | None, received: float | None = None
    ) -> Outputs:
        """Check, then run in the model's shared batch; TimeoutError past ``timeout`` seconds
        from ``received`` (``time.monotonic()``, default now), rows unrun if still queued."""
        rows = check_feeds(hosted.model.inputs, feeds, self.max_rows)
        hosted.used = now = time.monotonic()
        if timeout is None:
            outputs = hosted.batcher.run_if_idle(feeds, rows)
            return outputs if outputs is not None else hosted.batcher.submit(feeds, rows).wait(None)
        deadline = (received if received is not None else now) + timeout
        if deadline <= now:
            raise TimeoutError("the latency budget had passed when the rows arrived; not run")
        outputs = self._run_if_idle_within(hosted, feeds, rows, deadline - now)
        if outputs is not None:
            return outputs
        pending = hosted.batcher.submit(feeds, rows, deadline)
        return pending.wait(max(0.0, deadline - time.monotonic()))

    def _run_until(self, model: LoadedModel, feeds: Feeds, deadline: float) -> Outputs:
        """A batch's run, stopped by the watchdog once its latest request's deadline passed."""
        options = ort.RunOptions()
        active = self._watchdog.arm(options, deadline - time.monotonic())
        try:
            return model.run(feeds, options)
        except Exception:
            if time.monotonic() >= deadline:
                raise TimeoutError("every request of the batch passed its deadline") from None
            raise
        finally:
            active[0] = False

    def _run_if_idle_within(
        self, hosted: Hosted, feeds: Feeds, rows: int, timeout: float
    ) -> Outputs | None:
        """``run_if_idle`` with the watchdog stopping the run at ``timeout`` (TimeoutError)."""
        options = ort.RunOptions()
        active = self._watchdog.arm(options, timeout)
        started = time.monotonic()
        try:
            return hosted.batcher.run_if_idle(feeds, rows, lambda f: hosted.model.run(f, options))
        except Exception:
            if time.monotonic() - started >= timeout:
                raise TimeoutError("the run did not finish within the latency budget") from None
            raise
        finally:
            active[0] = False

    def status(self) -> dict[str, Any]:
        with self._lock:
            hosted = list(self._models.values())
            served = {id(h) for h in self._names.values()}
        return {
            h.model.sha256: {
                "name": h.model.name,
                "path": h.relative,
                "provider": h.model.provider,
                "serves_name": id(h) in served,
                "batching": h.batcher.stats(),
            }
            for h in hosted
        }

    def close(self) -> None:
        with self._lock:
            hosted, self._models, self._names = list(self._models.values()), {}, {}
        for h in hosted:
            h.batcher.close()
