"""One chunk of a job: assign every row as ``/v1/assign`` would, then score it in runs.

Assignment goes through the serving ``AssignmentService`` (the same registry, allocation
history, decision state and sticky lookups as the API). Offline scoring is usually not an
exposure: unless the job asks for it, the sticky store only reads. Each variant's rows are
checked against its model's inputs and run ``run_rows`` at a time through the serving
runner with its fallback; a row that cannot be scored is a reject with its reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from service.assignment.batch import REASONS, BatchAssignment
from service.assignment.core import Assignment
from service.assignment.service import AssignmentService
from service.assignment.sticky import SegmentAttributes, StickyStore
from service.assignment.units import MAX_UNIT_LENGTH
from service.errors import AbxError
from service.inference.catalog import ExperimentModels, ServingModel
from service.inference.records import JobModel
from service.inference.runner import FailureCounts, ModelRunner, run_with_fallback
from service.inference.signature import InputPlan, convert_inputs
from service.storage.values import text_problem

UNIT_COLUMN = "unit"
FIXED_COLUMNS = ("unit", "variant", "reason", "served_by")
TEXT = pd.StringDtype("pyarrow", na_value=np.nan)
"""pandas' default text type (``str``): what a frame built from Python strings holds."""


class LookupOnlySticky(StickyStore):
    """Reads stored first assignments; records nothing (a job that logs no exposures)."""

    def record(
        self,
        assignment: Assignment,
        seed: str,
        unit_id: str,
        segment_attributes: Mapping[str, str] | None = None,
    ) -> None:
        return None

    def record_batch(
        self,
        batch: BatchAssignment,
        seed: str,
        unit_ids: Sequence[str],
        segment_attributes: SegmentAttributes,
    ) -> None:
        return None


def input_columns(plan: InputPlan) -> list[str]:
    """The file's columns for one model input: its named features, else ``<input>_<i>``."""
    if plan.features is not None:
        return list(plan.features)
    width = 1
    for dim in plan.spec.shape[1:]:
        width *= dim or 1
    return [f"{plan.request_name}_{i}" for i in range(width)]


def output_columns(models: ExperimentModels) -> list[str]:
    """Every response name any variant answers with: the same columns in every chunk."""
    names: dict[str, None] = {}
    for served in models.variants.values():
        names.update(dict.fromkeys(served.response_names.values()))
    return list(names)


@dataclass(frozen=True)
class ChunkResult:
    scored: pd.DataFrame
    """Scored rows, indexed by their input data-row numbers (files leave the index out)."""
    rejects: list[dict[str, Any]]
    models: dict[JobModel, int] = field(default_factory=dict)
    """How many of the scored rows each model answered (the job's lineage)."""


class ChunkScorer:
    def __init__(
        self,
        assignments: AssignmentService,
        models: ExperimentModels,
        runner: ModelRunner,
        variant: str | None,
        run_rows: int,
    ) -> None:
        self._assignments = assignments
        self._models = models
        self._runner = runner
        self._variant = variant
        self._run_rows = run_rows
        self.failures = FailureCounts()
        self.outputs = output_columns(models)
        self._model_columns = {
            column
            for served in models.variants.values()
            for plan in served.plans
            for column in input_columns(plan)
        }

    def score(self, frame: pd.DataFrame) -> ChunkResult:
        rejects: list[dict[str, Any]] = []
        rows = len(frame)
        if rows and UNIT_COLUMN not in frame.columns:
            rejects = [{"row": int(i), "unit": None, "reason": "missing column 'unit'"}
                       for i in frame.index]  # fmt: skip
            return ChunkResult(self._empty(), rejects)
        if rows:
            units, refused = _units(frame[UNIT_COLUMN])
        else:
            units, refused = np.empty(0, dtype=object), np.zeros(0, dtype=bool)
        extra = [c for c in frame.columns if c != UNIT_COLUMN and c not in self._model_columns]
        valid = np.flatnonzero(~refused)
        for position in np.flatnonzero(refused).tolist():
            rejects.append({"row": int(frame.index[position]), "unit": None,
                            "reason": _unit_problem(frame[UNIT_COLUMN].iloc[position])})  # fmt: skip
        # The text columns (variant, reason, served_by) as codes into ``labels`` until the
        # output is built: no Python string per row, and Arrow builds the columns from them.
        labels = _Labels()
        variants = np.full(rows, -1, dtype=np.int32)
        reasons = np.full(rows, -1, dtype=np.int32)
        if self._variant is not None:
            variants[valid], reasons[valid] = labels.code(self._variant), labels.code("explicit")
        elif len(valid):
            found = self._assignments.assign_batch(
                self._models.key, units[valid].tolist(),
                (lambda: frame[extra].iloc[valid].to_dict("records")) if extra else None,
            )  # fmt: skip
            variants[valid] = labels.codes(found.variant_keys)[found.variant_codes]
            reasons[valid] = labels.codes([r.value for r in REASONS])[found.reason_codes]
        values = {name: np.full(rows, np.nan) for name in self.outputs}
        served_by = np.full(rows, -1, dtype=np.int32)
        scored = np.zeros(rows, dtype=bool)
        assigned = variants[valid]
        used: dict[JobModel, int] = {}
        features = _Features(frame)
        for code in pd.unique(assigned):  # in order of first appearance
            self._score_group(features, labels, labels.keys[code], valid[assigned == code],
                              values, served_by, scored, rejects, used)  # fmt: skip
        keep = np.flatnonzero(scored)
        columns: dict[str, Any] = {
            # Text ids pass through as the input's own (Arrow) column: no per-row objects.
            "unit": (
                frame[UNIT_COLUMN].array[keep]
                if isinstance(frame[UNIT_COLUMN].dtype, pd.StringDtype)
                else units[keep]
            ),
            "variant": labels.text(variants[keep]),
            "reason": labels.text(reasons[keep]),
            "served_by": labels.text(served_by[keep]),
        }
        for name in self.outputs:
            columns[name] = values[name][keep]
        rejects.sort(key=lambda reject: reject.get("row", -1))
        return ChunkResult(pd.DataFrame(columns, index=frame.index[keep]), rejects, used)

    def _empty(self) -> pd.DataFrame:
        columns: dict[str, Any] = {name: pd.Series([], dtype=object) for name in FIXED_COLUMNS}
        columns.update({name: pd.Series([], dtype=float) for name in self.outputs})
        return pd.DataFrame(columns)

    def _score_group(
        self,
        features: _Features,
        labels: _Labels,
        variant_key: str,
        positions: np.ndarray,
        values: dict[str, np.ndarray],
        served_by: np.ndarray,
        scored: np.ndarray,
        rejects: list[dict[str, Any]],
        used: dict[JobModel, int],
    ) -> None:
        models, frame = self._models, features.frame
        variant = models.variants.get(variant_key) or models.variants.get(models.fallback)
        if variant is None:
            for position in positions:
                rejects.append(_reject(frame, position, f"variant {variant_key!r} has no model"))
            return
        checked_by = variant if variant.model is not None else models.variants[models.fallback]
        matrices, bad = features.matrices(positions, checked_by.plans)
        for position, reason in bad.items():
            rejects.append(_reject(frame, position, reason))
        if bad:
            kept = ~np.isin(positions, list(bad))
            good = positions[kept]
            matrices = {name: matrix[kept] for name, matrix in matrices.items()}
        else:
            good = positions
        for start in range(0, len(good), self._run_rows):
            batch = good[start : start + self._run_rows]
            inputs = {
                name: matrix[start : start + self._run_rows] for name, matrix in matrices.items()
            }
            try:
                feeds, count = convert_inputs(inputs, checked_by.plans, self._run_rows)
                result = run_with_fallback(
                    self._runner, models, variant, feeds, count,
                    partial(self._fallback_feeds, features, batch),
                    self.failures,
                )  # fmt: skip
            except AbxError as error:
                for position in batch:
                    rejects.append(_reject(frame, position, str(error)))
                continue
            for name, value in result.served_by.renamed(result.outputs).items():
                flat = np.asarray(value, dtype=np.float64).reshape(len(batch), -1)
                values[name][batch] = flat[:, 0]
            served_by[batch] = labels.code(result.served_by.variant)
            scored[batch] = True
            model = _job_model(variant_key, result.served_by, result.provider)
            used[model] = used.get(model, 0) + len(batch)

    def _fallback_feeds(
        self, features: _Features, positions: np.ndarray, other: ServingModel
    ) -> Mapping[str, np.ndarray]:
        matrices, bad = features.matrices(positions, other.plans)
        if bad:
            raise ValueError("the fallback's model takes columns these rows lack")
        return convert_inputs(matrices, other.plans, self._run_rows)[0]


class _Labels:
    """The chunk's distinct texts of a column (variant keys, reasons), coded by position."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self._codes: dict[str, int] = {}

    def code(self, key: str) -> int:
        if key not in self._codes:
            self._codes[key] = len(self.keys)
            self.keys.append(key)
        return self._codes[key]

    def codes(self, keys: Sequence[str]) -> np.ndarray:
        return np.asarray([self.code(key) for key in keys], dtype=np.int32)

    def text(self, codes: np.ndarray) -> Any:
        """The texts of ``codes`` as a pandas text column (Arrow strings), built in Arrow."""
        coded = pa.DictionaryArray.from_arrays(pa.array(codes, pa.int32()),
                                               pa.array(self.keys, pa.string()))  # fmt: skip
        return pd.array(coded.cast(pa.string()), dtype=TEXT)


def _job_model(variant_key: str, served: ServingModel, provider: str | None) -> JobModel:
    """The lineage key of rows of ``variant_key`` that ``served``'s model answered."""
    model = served.model
    assert model is not None  # it answered
    resolved = served.ref.resolved
    return JobModel(
        variant_key, served.variant, model.sha256, provider or model.provider,
        resolved.name if resolved else None, resolved.version if resolved else None,
    )  # fmt: skip


def _unit_text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    return str(value)


def _unit(value: Any) -> str | None:
    """The unit id of a cell, or None when it cannot be one: empty, too long, or holding what
    PostgreSQL cannot store (a NUL, a lone surrogate), as ``/v1/assign`` refuses."""
    text = _unit_text(value)
    if text is None or not 1 <= len(text) <= MAX_UNIT_LENGTH or text_problem(text):
        return None
    return text


def _unit_problem(value: Any) -> str:
    """Why ``_unit`` refused a cell (the reject's reason)."""
    text = _unit_text(value)
    if text is not None and 1 <= len(text) <= MAX_UNIT_LENGTH:
        return f"unit {text_problem(text)}"
    return f"unit is empty or longer than {MAX_UNIT_LENGTH} characters"


def _units(column: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Each row's unit id as ``_unit`` gives it (None where refused), and which rows were
    refused, whole columns at once where the column's type allows it: text and integer
    columns need no per-row Python."""
    units: np.ndarray
    if isinstance(column.dtype, pd.StringDtype):
        units = column.to_numpy(dtype=object, na_value=None)
        lengths = column.str.len().to_numpy(dtype=np.float64, na_value=np.nan)
        refused = ~((lengths >= 1) & (lengths <= MAX_UNIT_LENGTH))
        # What PostgreSQL cannot store: a NUL (Arrow's strings hold no lone surrogates).
        refused |= column.str.contains("\x00", regex=False, na=False).to_numpy(dtype=bool)
        units[refused] = None
        return units, refused
    if isinstance(column.dtype, np.dtype) and column.dtype.kind in "iu":
        units = column.to_numpy().astype(str).astype(object)  # decimal text, as str(int)
        return units, np.zeros(len(units), dtype=bool)
    units = np.asarray([_unit(value) for value in column], dtype=object)
    return units, np.asarray(pd.isna(units), dtype=bool)


def _reject(frame: pd.DataFrame, position: int, reason: str) -> dict[str, Any]:
    unit = frame[UNIT_COLUMN].iloc[position] if UNIT_COLUMN in frame.columns else None
    return {"row": int(frame.index[position]), "unit": _unit(unit), "reason": reason}


class _Features:
    """A chunk's model inputs as float64 matrices, converted once per set of columns for all
    the chunk's rows (variants whose models read the same columns share them)."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self.frame = frame
        self._converted: dict[tuple[str, ...], tuple[np.ndarray, dict[int, str]]] = {}

    def _convert(self, columns: list[str]) -> tuple[np.ndarray, dict[int, str]]:
        """Every row's values of ``columns`` as float64, and each refused row's reason."""
        key = tuple(columns)
        if key in self._converted:
            return self._converted[key]
        rows = self.frame[columns]
        if all(isinstance(t, np.dtype) and t.kind in "fiu" for t in rows.dtypes):
            matrix = rows.to_numpy(dtype=np.float64)  # numbers already: one copy, no parsing
        else:
            matrix = np.column_stack([
                pd.to_numeric(rows[column], errors="coerce").to_numpy(dtype=np.float64,
                                                                      na_value=np.nan)
                for column in columns
            ]).reshape(len(rows), len(columns))  # fmt: skip
        bad: dict[int, str] = {}
        # Row-major order: each refused row is named by its first bad column, in model order.
        for position, index in zip(*np.nonzero(~np.isfinite(matrix)), strict=True):
            raw = rows[columns[index]].iloc[position]
            bad.setdefault(int(position), f"column {columns[index]!r}: not a finite number "
                           f"({str(raw)[:40]!r})")  # fmt: skip
        self._converted[key] = matrix, bad
        return matrix, bad

    def matrices(
        self, positions: np.ndarray, plans: Sequence[InputPlan]
    ) -> tuple[dict[str, np.ndarray], dict[int, str]]:
        """Each input's rows at ``positions`` (model order), and those refused with the reason."""
        matrices: dict[str, np.ndarray] = {}
        bad: dict[int, str] = {}
        for plan in plans:
            columns = input_columns(plan)
            missing = [c for c in columns if c not in self.frame.columns]
            if missing:
                shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
                reason = f"missing column(s) {shown} (model input {plan.request_name!r})"
                return {}, dict.fromkeys((int(p) for p in positions), reason)
            matrix, refused = self._convert(columns)
            if refused:
                for position in positions[np.isin(positions, list(refused))].tolist():
                    bad.setdefault(position, refused[position])
            shape = tuple(d or 1 for d in plan.spec.shape[1:])
            matrices[plan.request_name] = matrix[positions].reshape((len(positions), *shape))
        return matrices, bad
