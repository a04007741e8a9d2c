"""Per-hour distribution sketches of each served model's outputs and inputs, off the request path.

A request only appends a reference to its arrays to a bounded queue (``offer``: no binning,
no I/O). A background thread drains the queue every ``interval`` seconds, bins each feature
into fixed bins (the model's, set once: ``DEFAULT_EDGES`` unless a reference says otherwise),
a whole drain at once per key (``sketch_offers``: one concatenation per array name, then
``histograms.sketch_columns`` over blocks of columns; no Python loop over rows or values),
and hands one row per (experiment, variant, model, hour, feature) to the batch writer, which
COPYs them and adds them to ``model_sketches`` (a batch's rows for one key are summed first).
A row holds at most ``MAX_BINS`` counts, and a model at most ``MAX_FEATURES`` features, so a
model-hour is bounded (at most 64 features × about 1 KiB a row with its index) whatever the traffic.

Features are named ``output:<name>[<column>]`` and ``input:<name>[<column>]``: a
``[batch, features]`` array gives one feature per column, a ``[batch]`` array one feature.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from service.background import PeriodicThread
from service.experiments.schema import Experiment, ReferenceProfile
from service.inference.histograms import (
    DEFAULT_EDGES,
    MAX_FEATURES,
    Sketch,
    feature_columns,
    profile_sketches,
    sketch_columns,
    sketch_of,
)
from service.observability import metrics
from service.storage.writer import Stream

_COLUMNS = (
    "experiment_key", "variant_key", "model_sha256", "hour", "feature", "edges", "counts",
    "below", "above", "invalid", "n", "sum_value", "sum_square",
)  # fmt: skip
_KEY = "experiment_key, hour, variant_key, model_sha256, feature"
SKETCHES = Stream(
    table="model_sketches",
    columns=_COLUMNS,
    # Rows of one key in one batch (several drains buffered while PostgreSQL was away) are
    # summed first: ON CONFLICT cannot touch one row twice in a statement.
    insert_from_stage=(
        f"INSERT INTO model_sketches AS m ({', '.join(_COLUMNS)})"
        f" SELECT t.experiment_key, t.variant_key, t.model_sha256, t.hour, t.feature, t.edges,"
        f" b.counts, t.below, t.above, t.invalid, t.n, t.sum_value, t.sum_square FROM ("
        f"  SELECT {_KEY}, min(edges) AS edges, sum(below)::bigint AS below,"
        f"  sum(above)::bigint AS above, sum(invalid)::bigint AS invalid, sum(n)::bigint AS n,"
        f"  sum(sum_value) AS sum_value, sum(sum_square) AS sum_square FROM {{stage}}"
        f"  GROUP BY {_KEY}) AS t"
        f" CROSS JOIN LATERAL (SELECT array_agg(c ORDER BY i) AS counts FROM ("
        f"  SELECT u.i, sum(u.c)::bigint AS c FROM {{stage}} AS s,"
        f"  unnest(s.counts) WITH ORDINALITY AS u(c, i)"
        f"  WHERE (s.experiment_key, s.hour, s.variant_key, s.model_sha256, s.feature)"
        f"  = (t.experiment_key, t.hour, t.variant_key, t.model_sha256, t.feature)"
        f"  GROUP BY u.i) AS per_bin) AS b"
        f" ON CONFLICT ({_KEY}) DO UPDATE SET"
        f" counts = (SELECT array_agg(x + y ORDER BY i) FROM unnest(m.counts, EXCLUDED.counts)"
        f"  WITH ORDINALITY AS z(x, y, i)),"
        f" below = m.below + EXCLUDED.below, above = m.above + EXCLUDED.above,"
        f" invalid = m.invalid + EXCLUDED.invalid, n = m.n + EXCLUDED.n,"
        f" sum_value = m.sum_value + EXCLUDED.sum_value,"
        f" sum_square = m.sum_square + EXCLUDED.sum_square"
    ),
)


_Offer = tuple[str, str, str, int, Mapping[str, Any], Mapping[str, Any]]
"""experiment, variant, model sha256, hour (seconds // 3600), feeds, outputs: a plain tuple,
the cheapest thing to build on the request path."""
EdgesFor = Callable[[str, str], np.ndarray]
"""Model SHA-256 and feature -> the bin edges its sketches use."""


class SketchBook(PeriodicThread):
    """Collects what the served models saw and answered; drains it into the batch writer."""

    def __init__(
        self,
        put: Callable[[str, tuple[Any, ...]], bool],
        interval: float = 5.0,
        max_pending: int = 100_000,
        edges_for: EdgesFor | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__("abx-sketches", interval)
        self._put = put
        self._pending: deque[_Offer] = deque()
        self._max_pending = max_pending
        self._edges_for = edges_for or (lambda sha, feature: DEFAULT_EDGES)
        self._clock = clock
        self._drain_lock = threading.Lock()
        self.dropped = 0

    def offer(
        self,
        experiment_key: str,
        variant_key: str,
        model_sha256: str,
        feeds: Mapping[str, Any],
        outputs: Mapping[str, Any],
    ) -> None:
        """Queue one answer's arrays (the request path: an append, nothing else)."""
        if len(self._pending) >= self._max_pending:
            self.dropped += 1
            metrics.SKETCH_OFFERS_DROPPED.inc()
            return
        hour = int(self._clock()) // 3600
        self._pending.append((experiment_key, variant_key, model_sha256, hour, feeds, outputs))

    def tick(self) -> None:
        self.drain()

    def close(self, timeout: float | None = None) -> None:
        super().close(timeout)
        self.drain()  # what is queued goes to the writer, which closes after us

    def drain(self) -> int:
        """Bin everything queued and hand one row per key to the writer; return rows written."""
        with self._drain_lock:
            taken: dict[tuple[str, str, str, int], list[_Offer]] = {}
            pending = self._pending
            for _ in range(len(pending)):  # what is queued now; later offers wait for the next
                offer = pending.popleft()
                taken.setdefault(offer[:4], []).append(offer)
            rows = 0
            for (experiment, variant, sha, hour), offers in taken.items():
                at = datetime.fromtimestamp(hour * 3600, UTC)
                for feature, sketch in sketch_offers(offers, sha, self._edges_for):
                    self._put(SKETCHES.table, (experiment, variant, sha, at, feature,
                                               list(sketch.edges), list(sketch.counts), sketch.below,
                                               sketch.above, sketch.invalid, sketch.n,
                                               sketch.sum_value, sketch.sum_square))  # fmt: skip
                    rows += 1
            return rows


def sketch_offers(offers: list[_Offer], sha: str, edges_for: EdgesFor) -> list[tuple[str, Sketch]]:
    """Every feature's sketch over one key's offers, each array name stacked once and binned a
    block of columns at a time (``sketch_columns``). Offers that do not all carry the same
    array names with the same shapes go through ``sketch_offers_one_by_one``, with which this
    agrees feature for feature (``tests/inference/test_sketches.py``)."""
    kinds = _stacked_by_name(offers)
    if kinds is None:
        return sketch_offers_one_by_one(offers, sha, edges_for)
    found: list[tuple[str, Sketch]] = []
    for kind, arrays in kinds:
        emitted = 0  # at most MAX_FEATURES columns per kind, as ``feature_columns`` counts them
        for name, array in arrays:
            table = array.reshape(array.shape[0], -1) if array.ndim > 1 else array.reshape(-1, 1)
            width = min(table.shape[1], MAX_FEATURES - emitted)
            if width <= 0:
                break
            emitted += width
            features = [f"{kind}:{name}[{column}]" for column in range(width)]
            sketches = sketch_columns(table[:, :width], [edges_for(sha, f) for f in features])
            found.extend(zip(features, sketches, strict=True))
    return found


def sketch_offers_one_by_one(
    offers: list[_Offer], sha: str, edges_for: EdgesFor
) -> list[tuple[str, Sketch]]:
    """The straightforward way: each array checked offer by offer, each column through
    ``sketch_of`` (``np.histogram``). Kept for offers of mixed shapes, and as the reference
    the fast path is tested and measured against."""
    return [
        (feature, sketch_of(values, edges_for(sha, feature)))
        for feature, values in _stacked(offers)
    ]


def _stacked_by_name(offers: list[_Offer]) -> list[tuple[str, list[tuple[str, np.ndarray]]]] | None:
    """Each kind's numeric arrays over the offers, one concatenation per array name (no loop
    over the offers in Python beyond picking each one's array), or None when the offers differ
    in names, shapes or kinds of values and need ``_stacked``'s care."""
    found = []
    for kind, maps in (("output", [o[5] for o in offers]), ("input", [o[4] for o in offers])):
        names = list(maps[0])
        if sum(map(len, maps)) != len(names) * len(maps):
            return None  # some offer has other names (a missing one raises KeyError below)
        arrays = []
        for name in names:
            try:
                parts = [arrays_of[name] for arrays_of in maps]
                array = np.concatenate(parts)
            except (KeyError, ValueError, TypeError):  # missing, 0-d, other widths or ndims
                return None
            if array.dtype.kind not in "fiub":
                if any(np.asarray(part).dtype.kind in "fiub" for part in parts):
                    return None  # numbers stacked with strings or objects: sort them apart
                continue  # strings and maps: nothing to bin
            if array.size:
                arrays.append((name, array))
        found.append((kind, arrays))
    return found


def _stacked(offers: list[_Offer]) -> Iterable[tuple[str, np.ndarray]]:
    """Every feature's values over the offers: each array's rows stacked first (one
    concatenation per array name, not per column), then cut into columns."""
    tables: dict[tuple[str, str, int], list[np.ndarray]] = {}
    for offer in offers:
        for kind, arrays in (("output", offer[5]), ("input", offer[4])):
            for name, value in arrays.items():
                array = value if isinstance(value, np.ndarray) else np.asarray(value)
                if array.ndim == 0 or array.size == 0 or array.dtype.kind not in "fiub":
                    continue
                table = array.reshape(array.shape[0], -1)
                tables.setdefault((kind, name, table.shape[1]), []).append(table)
    for kind in ("output", "input"):
        stacked = {
            name: np.concatenate(parts)
            for (owner, name, _width), parts in tables.items()
            if owner == kind
        }
        yield from feature_columns(kind, stacked)


def read_sketches(
    conn: Any, experiment_key: str, since: datetime, until: datetime | None = None
) -> dict[tuple[str, str, datetime, str], Sketch]:
    """Sketches of one experiment per (variant, model, hour, feature) from ``since`` on.

    Read in PostgreSQL's binary format: each row carries two arrays (edges and counts), which
    psycopg parses from text in Python, three to four times the CPU of the binary ones (
    ``benchmarks/drift.py --part evaluate``). Equal edges are kept as one tuple, so the
    merges that compare them mostly meet the same object.
    """
    found = {}
    edges_seen: dict[tuple[float, ...], tuple[float, ...]] = {}
    cursor = conn.cursor(binary=True)
    for (
        variant, sha, hour, feature, edges, counts, below, above, invalid, n, total, square,
    ) in cursor.execute(
        "SELECT variant_key, model_sha256, hour, feature, edges, counts, below, above, invalid,"
        " n, sum_value, sum_square FROM model_sketches WHERE experiment_key = %s AND hour >= %s"
        " AND (%s::timestamptz IS NULL OR hour < %s::timestamptz)",
        (experiment_key, since, until, until),
    ):  # fmt: skip
        as_tuple = tuple(edges)
        found[(variant, sha, hour, feature)] = Sketch(
            edges_seen.setdefault(as_tuple, as_tuple), tuple(counts), below, above, invalid, n,
            total, square,
        )  # fmt: skip
    return found


@functools.lru_cache(maxsize=256)
def _profile_at(path: Path, sha256: str) -> dict[str, Sketch]:
    del sha256  # part of the cache key: a changed file is read again
    return profile_sketches(json.loads(path.read_text("utf-8")))


def load_profile(models_root: Path, reference: ReferenceProfile) -> dict[str, Sketch]:
    """A model's reference profile (validated with its experiment), per feature."""
    return _profile_at(models_root / reference.path, reference.sha256)


def profile_edges(
    models_root: Path, experiments: Iterable[Experiment]
) -> dict[str, dict[str, np.ndarray]]:
    """Model SHA-256 -> feature -> the bins its reference profile set (models with one only)."""
    found: dict[str, dict[str, np.ndarray]] = {}
    for experiment in experiments:
        for variant in experiment.variants:
            model = variant.model
            if model is not None and model.reference is not None and model.sha256 is not None:
                sketches = load_profile(models_root, model.reference)
                found[model.sha256] = {f: np.asarray(s.edges) for f, s in sketches.items()}
    return found
