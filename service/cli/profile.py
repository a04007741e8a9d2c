"""``abx models profile``: a model's reference profile from reference data (CSV or NDJSON).

The model runs on the data with onnxruntime; every output and input column's bins are set
from the reference (``histograms.reference_edges``) and its histogram kept, as JSON. The
experiment pins the file by checksum (``model.reference``).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np


def _read_rows(data: Path, input_name: str) -> np.ndarray:
    if data.suffix.lower() == ".csv":
        with data.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if not header:
                raise ValueError("the CSV file is empty; it needs a header row")
            rows = [row for row in reader if row]
    elif data.suffix.lower() in (".ndjson", ".jsonl"):
        rows = []
        for number, line in enumerate(data.read_text("utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                item: Any = json.loads(line)
            except ValueError as error:
                raise ValueError(f"line {number}: not JSON ({error})") from None
            row = item.get(input_name) if isinstance(item, dict) else item
            if not isinstance(row, list):
                raise ValueError(f"line {number}: expected a list or {{{input_name!r}: [...]}}")
            rows.append(row)
    else:
        raise ValueError("reference data must be .csv or .ndjson")
    if not rows:
        raise ValueError("no reference rows")
    try:
        table = np.asarray(rows, dtype=np.float32)
    except ValueError as error:
        raise ValueError(f"every value must be a number, in rows of one width: {error}") from None
    if table.ndim != 2:
        raise ValueError("rows must be flat lists of numbers")
    return table


def write_profile(model: Path, data: Path, output: Path | None) -> tuple[Path, str, int, int]:
    """Write MODEL's profile; return its path, SHA-256, feature count and reference rows."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ValueError(
            f"profiles are built for models with one input; this one has {len(inputs)}"
        )
    name = inputs[0].name
    return profile_table(model, _read_rows(data, name), output)


def profile_table(
    model: Path, table: np.ndarray, output: Path | None
) -> tuple[Path, str, int, int]:
    """Write MODEL's profile from reference rows of its one input (``write_profile``'s core)."""
    import onnxruntime as ort

    from service.experiments.model_refs import file_sha256
    from service.inference.histograms import build_profile, feature_columns

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ValueError(
            f"profiles are built for models with one input; this one has {len(inputs)}"
        )
    name = inputs[0].name
    table = np.asarray(table, dtype=np.float32)
    expected = inputs[0].shape[-1] if len(inputs[0].shape) > 1 else None
    if isinstance(expected, int) and table.shape[1] != expected:
        raise ValueError(f"rows have {table.shape[1]} values; input {name!r} takes {expected}")
    outputs = dict(
        zip([o.name for o in session.get_outputs()], session.run(None, {name: table}), strict=True)
    )
    columns = [*feature_columns("output", outputs), *feature_columns("input", {name: table})]
    profile = build_profile(file_sha256(model), columns)
    target = output or model.with_suffix(".profile.json")
    target.write_text(json.dumps(profile, indent=1) + "\n", encoding="utf-8")
    return target, file_sha256(target), len(columns), int(table.shape[0])
