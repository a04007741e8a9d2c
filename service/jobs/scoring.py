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

from service.assignment.batch import BatchAssignment
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
        units = _units(frame[UNIT_COLUMN]) if rows else np.empty(0, dtype=object)
        extra = [c for c in frame.columns if c != UNIT_COLUMN and c not in self._model_columns]
        refused = np.asarray(pd.isna(units), dtype=bool)
        valid = np.flatnonzero(~refused)
        for position in np.flatnonzero(refused).tolist():
            rejects.append({"row": int(frame.index[position]), "unit": None,
                            "reason": _unit_problem(frame[UNIT_COLUMN].iloc[position])})  # fmt: skip
        variants = np.full(rows, None, dtype=object)
        reasons = np.full(rows, None, dtype=object)
        if self._variant is not None:
            variants[valid], reasons[valid] = self._variant, "explicit"
        elif len(valid):
            found = self._assignments.assign_batch(
                self._models.key, units[valid].tolist(),
                (lambda: frame[extra].iloc[valid].to_dict("records")) if extra else None,
            )  # fmt: skip
            variants[valid], reasons[valid] = found.variants(), found.reasons()
        values = {name: np.full(rows, np.nan) for name in self.outputs}
        served_by = np.full(rows, None, dtype=object)
        scored = np.zeros(rows, dtype=bool)
        assigned = variants[valid]
        used: dict[JobModel, int] = {}
        for variant in pd.unique(assigned):  # in order of first appearance
            self._score_group(frame, variant, valid[assigned == variant], values, served_by,
                              scored, rejects, used)  # fmt: skip
        keep = np.flatnonzero(scored)
        columns: dict[str, Any] = {
            # Text ids pass through as the input's own (Arrow) column: no per-row objects.
            "unit": (
                frame[UNIT_COLUMN].array[keep]
                if isinstance(frame[UNIT_COLUMN].dtype, pd.StringDtype)
                else units[keep]
            ),
            "variant": variants[keep],
            "reason": reasons[keep],
            "served_by": served_by[keep],
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
        frame: pd.DataFrame,
        variant_key: str,
        positions: np.ndarray,
        values: dict[str, np.ndarray],
        served_by: np.ndarray,
        scored: np.ndarray,
        rejects: list[dict[str, Any]],
        used: dict[JobModel, int],
    ) -> None:
        models = self._models
        variant = models.variants.get(variant_key) or models.variants.get(models.fallback)
        if variant is None:
            for position in positions:
                rejects.append(_reject(frame, position, f"variant {variant_key!r} has no model"))
            return
        checked_by = variant if variant.model is not None else models.variants[models.fallback]
        matrices, bad = _matrices(frame, positions, checked_by.plans)
        for position, reason in bad.items():
            rejects.append(_reject(frame, position, reason))
        good = positions[~np.isin(positions, list(bad))] if bad else positions
        for start in range(0, len(good), self._run_rows):
            batch = good[start : start + self._run_rows]
            offsets = np.searchsorted(positions, batch)
            inputs = {name: matrix[offsets] for name, matrix in matrices.items()}
            try:
                feeds, count = convert_inputs(inputs, checked_by.plans, self._run_rows)
                result = run_with_fallback(
                    self._runner, models, variant, feeds, count,
                    partial(self._fallback_feeds, frame, batch),
                    self.failures,
                )  # fmt: skip
            except AbxError as error:
                for position in batch:
                    rejects.append(_reject(frame, position, str(error)))
                continue
            for name, value in result.served_by.renamed(result.outputs).items():
                flat = np.asarray(value, dtype=np.float64).reshape(len(batch), -1)
                values[name][batch] = flat[:, 0]
            served_by[batch] = result.served_by.variant
            scored[batch] = True
            model = _job_model(variant_key, result.served_by, result.provider)
            used[model] = used.get(model, 0) + len(batch)

    def _fallback_feeds(
        self, frame: pd.DataFrame, positions: np.ndarray, other: ServingModel
    ) -> Mapping[str, np.ndarray]:
        matrices, bad = _matrices(frame, positions, other.plans)
        if bad:
            raise ValueError("the fallback's model takes columns these rows lack")
        return convert_inputs(matrices, other.plans, self._run_rows)[0]


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


def _units(column: pd.Series) -> np.ndarray:
    """Each row's unit id as ``_unit`` gives it (None where refused), whole columns at once
    where the column's type allows it: text and integer columns need no per-row Python."""
    units: np.ndarray
    if isinstance(column.dtype, pd.StringDtype):
        units = column.to_numpy(dtype=object, na_value=None)
        lengths = column.str.len().to_numpy(dtype=np.float64, na_value=np.nan)
        units[~((lengths >= 1) & (lengths <= MAX_UNIT_LENGTH))] = None
        # What PostgreSQL cannot store: a NUL (Arrow's strings hold no lone surrogates).
        units[column.str.contains("\x00", regex=False, na=False).to_numpy(dtype=bool)] = None
    elif isinstance(column.dtype, np.dtype) and column.dtype.kind in "iu":
        units = column.to_numpy().astype(str).astype(object)  # decimal text, as str(int)
    else:
        units = np.asarray([_unit(value) for value in column], dtype=object)
    return units


def _reject(frame: pd.DataFrame, position: int, reason: str) -> dict[str, Any]:
    unit = frame[UNIT_COLUMN].iloc[position] if UNIT_COLUMN in frame.columns else None
    return {"row": int(frame.index[position]), "unit": _unit(unit), "reason": reason}


def _matrices(
    frame: pd.DataFrame, positions: np.ndarray, plans: Sequence[InputPlan]
) -> tuple[dict[str, np.ndarray], dict[int, str]]:
    """Each input's rows as float64 (model order), and the rows refused with the reason."""
    matrices: dict[str, np.ndarray] = {}
    bad: dict[int, str] = {}
    for plan in plans:
        columns = input_columns(plan)
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            reason = f"missing column(s) {shown} (model input {plan.request_name!r})"
            return {}, dict.fromkeys((int(p) for p in positions), reason)
        rows = frame[columns].iloc[positions]  # only the model's columns are copied
        if all(isinstance(t, np.dtype) and t.kind in "fiu" for t in rows.dtypes):
            matrix = rows.to_numpy(dtype=np.float64)  # numbers already: one copy, no parsing
        else:
            matrix = np.column_stack([
                pd.to_numeric(rows[column], errors="coerce").to_numpy(dtype=np.float64,
                                                                      na_value=np.nan)
                for column in columns
            ]).reshape(len(positions), len(columns))  # fmt: skip
        # Row-major order: each refused row is named by its first bad column, in model order.
        for offset, index in zip(*np.nonzero(~np.isfinite(matrix)), strict=True):
            position = int(positions[offset])
            raw = rows[columns[index]].iloc[offset]
            bad.setdefault(position, f"column {columns[index]!r}: not a finite number "
                           f"({str(raw)[:40]!r})")  # fmt: skip
        shape = tuple(d or 1 for d in plan.spec.shape[1:])
        matrices[plan.request_name] = matrix.reshape((len(positions), *shape))
    return matrices, bad
