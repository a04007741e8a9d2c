"""A model's input signature, and request inputs checked and converted against it. Pure.

Nothing is run on a request whose inputs do not match: every mismatch becomes
one entry of a 422 problem that names the input and what the model expects.

An input comes as row-major nested lists in the model's column order, or, when
the experiment names the input's ``features``, as objects of named values (one
object for one row, a list of them for a batch) that are put in that order here.
Names the model does not use are ignored: that is what lets one request feed
variants (and the fallback) whose models take other columns, or the same ones
in another order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
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

    @cached_property
    def floating(self) -> bool:
        return bool(np.issubdtype(self.dtype, np.floating))

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
    features: tuple[str, ...] | None = None
    """The names of the input's columns in the model's order; None: rows come as lists only."""


def tensor_spec(name: str, type_name: str, shape: Sequence[Any]) -> TensorSpec:
    """From onnxruntime's NodeArg view (``tensor(float)``, ``['batch', 20]``)."""
    dtype = ORT_TYPES.get(type_name)
    if dtype is None:
        raise ValueError(f"input {name!r} has type {type_name}, which abx cannot feed")
    return TensorSpec(
        name, dtype, tuple(d if isinstance(d, int) and d > 0 else None for d in shape)
    )


def all_finite(array: np.ndarray) -> bool:
    # A ufunc reduction, not ``.all()``: its Python wrapper costs more than the check itself.
    return bool(np.logical_and.reduce(np.isfinite(array), axis=None))


def _array(value: Any, spec: TensorSpec) -> np.ndarray:
    """The value as the model's dtype; a ValueError for anything that dtype cannot hold.

    A finite number too large for the dtype (1e300 for float32, 2**40 for int32, an integer
    of hundreds of digits) is the client's mistake: refused here, it never runs the model,
    so it is never counted as the variant's failure.
    """
    name = np.dtype(spec.dtype).name
    if spec.floating:
        try:
            with np.errstate(over="ignore"):  # an overflowing cast gives inf, refused below
                array = np.asarray(value, dtype=spec.dtype)
        except OverflowError as error:  # an integer no float holds
            raise ValueError(f"values must be finite numbers within the range of {name}") from error
        if not all_finite(array):
            raise ValueError(f"values must be finite numbers within the range of {name}")
        return array
    array = np.asarray(value)
    kind = "b" if spec.dtype is np.bool_ else "iu"
    if array.dtype.kind not in kind:
        if kind == "iu" and array.dtype.kind in "fO" and _all_ints(value):
            raise ValueError(f"values must be integers within the range of {name}")
        raise ValueError(f"values must be {'booleans' if kind == 'b' else 'integers'}")
    if kind == "iu" and array.size and array.dtype != spec.dtype:
        info = np.iinfo(spec.dtype)
        if array.min() < info.min or array.max() > info.max:
            raise ValueError(f"values must be integers within the range of {name}")
    return array.astype(spec.dtype, copy=False)


def _all_ints(value: Any) -> bool:
    """Whether every cell sent is an integer (numpy made floats or objects of big ones)."""
    try:
        cells = np.asarray(value, dtype=object)
    except ValueError:
        return False
    return all(type(cell) is int for cell in cells.flat)


_MISSING = object()
LISTED_PROBLEMS = 10
"""Problems listed per named input; a batch of bad rows is summed up past that."""
_JSON_TYPES = {
    str: "a string",
    bool: "a boolean",
    int: "an integer",
    float: "a decimal number",
    type(None): "null",
    list: "an array",
}


def _cell_rule(dtype: Any) -> tuple[frozenset[type], str]:
    """The Python types a named value may have for ``dtype`` (exact: true is not 1)."""
    if dtype is np.bool_:
        return frozenset({bool}), "must be true or false"
    if np.issubdtype(dtype, np.integer):
        return frozenset({int}), "must be an integer"
    return frozenset({int, float}), "must be a number"


def _named_rows(
    value: Any, plan: InputPlan, field: str, problems: list[dict[str, Any]]
) -> list[list[Any]] | None:
    """Rows sent as objects, their values in the model's column order; None when any is bad."""
    if plan.features is None:
        problems.append(
            {
                "field": field,
                "message": "named values, but the experiment does not name this input's "
                "features; send rows as lists of numbers in the model's order",
            }
        )
        return None
    single = isinstance(value, dict)
    accepted, rule = _cell_rule(plan.spec.dtype)
    rows: list[list[Any]] = []
    found: list[dict[str, Any]] = []
    for index, row in enumerate([value] if single else value):
        where = field if single else f"{field}[{index}]"
        if not isinstance(row, dict):
            found.append({"field": where, "message": "not an object of named values"})
            continue
        cells = [row.get(name, _MISSING) for name in plan.features]
        if accepted.issuperset(map(type, cells)):
            rows.append(cells)
            continue
        for name, cell in zip(plan.features, cells, strict=True):
            if cell is _MISSING:
                found.append({"field": f"{where}.{name}", "message": "missing"})
            elif type(cell) not in accepted:
                kind = _JSON_TYPES.get(type(cell), "an object")
                found.append({"field": f"{where}.{name}", "message": f"{rule}, not {kind}"})
    if not found:
        return rows
    problems += found[:LISTED_PROBLEMS]
    if len(found) > LISTED_PROBLEMS:
        more = len(found) - LISTED_PROBLEMS
        problems.append({"field": field, "message": f"{more} more problems not listed"})
    return None


def _is_named(value: Any) -> bool:
    """One object of named values, or a list of them (the first row decides)."""
    return isinstance(value, dict) or (
        isinstance(value, list) and bool(value) and isinstance(value[0], dict)
    )


def _refused(
    value: Any, plan: InputPlan, field: str, error: Exception, problems: list[dict[str, Any]]
) -> np.ndarray | None:
    """What numpy could not read as nested lists: named values, else a problem (None)."""
    if _is_named(value):
        rows = _named_rows(value, plan, field, problems)
        if rows is None:
            return None
        try:
            return _array(rows, plan.spec)
        except ValueError as refusal:
            error = refusal
    message = str(error) if "must be" in str(error) else "not a rectangular list of numbers"
    problems.append({"field": field, "message": f"{message}; expected {plan.spec.describe()}"})
    return None


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
            # Nested lists are read first: numpy refuses objects, so only a request that is
            # not positional pays for looking for named values.
            refused = _refused(value, plan, field, error, problems)
            if refused is None:
                continue
            array = refused
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
        if plan.offset is not None or plan.factor is not None:
            with np.errstate(over="ignore"):
                if plan.offset is not None:
                    array = array - plan.offset
                if plan.factor is not None:
                    array = array * plan.factor
                array = array.astype(spec.dtype, copy=False)
            if spec.floating and not all_finite(array):
                problems.append(
                    {
                        "field": field,
                        "message": "values overflow the model's "
                        f"{np.dtype(spec.dtype).name} once scaled; expected {spec.describe()}",
                    }
                )
                continue
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
