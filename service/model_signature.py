"""A model's input signature, and request inputs checked and converted against it. Pure.

Nothing is run on a request whose inputs do not match: every mismatch becomes
one entry of a 422 problem that names the input and what the model expects.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.errors import InputMismatch

ORT_TYPES: dict[str, Any] = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: Any
    """A numpy scalar type (np.float32...)."""
    shape: tuple[int | None, ...]
    """None for a dimension the model leaves free (usually the batch)."""

    def describe(self) -> str:
        dims = ", ".join("N" if d is None else str(d) for d in self.shape)
        return f"{np.dtype(self.dtype).name} [{dims}]"


@dataclass(frozen=True)
class InputPlan:
    """One request input: where it goes in the model and how it is scaled first."""

    request_name: str
    spec: TensorSpec
    offset: np.ndarray | None = None
    factor: np.ndarray | None = None


def tensor_spec(name: str, type_name: str, shape: Sequence[Any]) -> TensorSpec:
    """From onnxruntime's NodeArg view (``tensor(float)``, ``['batch', 20]``)."""
    dtype = ORT_TYPES.get(type_name)
    if dtype is None:
        raise ValueError(f"input {name!r} has type {type_name}, which abx cannot feed")
    return TensorSpec(
        name, dtype, tuple(d if isinstance(d, int) and d > 0 else None for d in shape)
    )


def _array(value: Any, spec: TensorSpec) -> np.ndarray:
    if np.issubdtype(spec.dtype, np.floating):
        array = np.asarray(value, dtype=spec.dtype)
        if not np.isfinite(array).all():
            raise ValueError("values must be finite numbers")
        return array
    array = np.asarray(value)
    kind = "b" if spec.dtype is np.bool_ else "iu"
    if array.dtype.kind not in kind:
        raise ValueError(f"values must be {'booleans' if kind == 'b' else 'integers'}")
    return array.astype(spec.dtype, copy=False)


def convert_inputs(
    inputs: Mapping[str, Any], plans: Sequence[InputPlan], max_rows: int
) -> tuple[dict[str, np.ndarray], int]:
    """Return the model's feeds and the batch size, or raise ``InputMismatch``."""
    feeds: dict[str, np.ndarray] = {}
    problems: list[dict[str, Any]] = []
    rows = -1
    for plan in plans:
        field = f"inputs.{plan.request_name}"
        spec = plan.spec
        value = inputs.get(plan.request_name)
        if value is None:
            problems.append({"field": field, "message": f"missing; expected {spec.describe()}"})
            continue
        try:
            array = _array(value, spec)
        except (ValueError, TypeError) as error:
            message = str(error) if "must be" in str(error) else "not a rectangular list of numbers"
            problems.append({"field": field, "message": f"{message}; expected {spec.describe()}"})
            continue
        if array.ndim != len(spec.shape) or any(
            want is not None and got != want
            for got, want in zip(array.shape, spec.shape, strict=False)
        ):
            problems.append(
                {
                    "field": field,
                    "message": f"shape {list(array.shape)} does not match {spec.describe()}",
                }
            )
            continue
        batch = array.shape[0] if array.ndim else 1
        if not 1 <= batch <= max_rows or (rows != -1 and batch != rows):
            problems.append(
                {
                    "field": field,
                    "message": f"{batch} rows; expected 1 to {max_rows}, the same for every input",
                }
            )
            continue
        rows = batch
        if plan.offset is not None:
            array = array - plan.offset
        if plan.factor is not None:
            array = array * plan.factor
        feeds[spec.name] = array.astype(spec.dtype, copy=False)
    known = {plan.request_name for plan in plans}
    problems += [
        {"field": f"inputs.{name}", "message": f"unknown input; the model takes {sorted(known)}"}
        for name in inputs
        if name not in known
    ]
    if problems:
        summary = "; ".join(f"{p['field']}: {p['message']}" for p in problems[:3])
        raise InputMismatch(f"The inputs do not match the model: {summary}", problems)
    return feeds, rows


def to_json_rows(outputs: Mapping[str, np.ndarray], names: Mapping[str, str]) -> dict[str, Any]:
    """Model outputs as nested lists under their response names (``names``: model -> response)."""
    return {names.get(name, name): value.tolist() for name, value in outputs.items()}
