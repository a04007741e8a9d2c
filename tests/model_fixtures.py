"""Models for the model-runtime tests: the demo models, built once, and faulty ones.

The demo models go to the default models root (git-ignored), under a file lock,
so test workers and the servers they start share one build.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from service.demo.models import build_demo_models
from service.settings import PROJECT_ROOT

MODELS = PROJECT_ROOT / "experiments" / "models"


def demo_models() -> dict[str, str]:
    return build_demo_models(MODELS)


def _save(graph: onnx.GraphProto, path: Path) -> str:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _io() -> tuple[onnx.ValueInfoProto, onnx.ValueInfoProto]:
    return (
        helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 20]),
        helper.make_tensor_value_info("probability", TensorProto.FLOAT, None),
    )


def nan_model(path: Path) -> str:
    """Answers log(-1 - |x|): NaN for every input."""
    source, target = _io()
    nodes = [
        helper.make_node("Abs", ["features"], ["a"]),
        helper.make_node("Neg", ["a"], ["n"]),
        helper.make_node("Sub", ["n", "one"], ["m"]),
        helper.make_node("Log", ["m"], ["probability"]),
    ]
    one = numpy_helper.from_array(np.ones(1, dtype=np.float32), "one")
    return _save(helper.make_graph(nodes, "nan", [source], [target], [one]), path)


def raising_model(path: Path) -> str:
    """Reshapes the row into rows of 2 * max(x) + 1 values: fine for the warm-up's zeros,
    an onnxruntime error for a row of ones (20 values do not make rows of 3)."""
    source, target = _io()
    constants = [
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "minus_one"),
        numpy_helper.from_array(np.array([2.0], dtype=np.float32), "two"),
        numpy_helper.from_array(np.array([1.0], dtype=np.float32), "one"),
    ]
    nodes = [
        helper.make_node("ReduceMax", ["features"], ["largest"], keepdims=0),
        helper.make_node("Mul", ["largest", "two"], ["doubled"]),
        helper.make_node("Add", ["doubled", "one"], ["width_float"]),
        helper.make_node("Cast", ["width_float"], ["width"], to=TensorProto.INT64),
        helper.make_node("Concat", ["minus_one", "width"], ["shape"], axis=0),
        helper.make_node("Reshape", ["features", "shape"], ["probability"]),
    ]
    return _save(helper.make_graph(nodes, "raises", [source], [target], constants), path)


def slow_model(path: Path, steps: int = 400) -> str:
    """A chain of 512x512 MatMuls on tensors made at run time (nothing to fold or pre-pack):
    a few hundred milliseconds for one row, in small steps the watchdog can stop between."""
    source, target = _io()
    constants = [
        numpy_helper.from_array(np.array([512, 26], dtype=np.int64), "reps"),
        numpy_helper.from_array(np.array([0, 0], dtype=np.int64), "starts"),
        numpy_helper.from_array(np.array([512, 512], dtype=np.int64), "ends"),
        numpy_helper.from_array(np.zeros(1, dtype=np.float32), "zero"),
    ]
    nodes = [
        helper.make_node("Tile", ["features", "reps"], ["tiled"]),
        helper.make_node("Slice", ["tiled", "starts", "ends"], ["h0"]),
        helper.make_node("Mul", ["h0", "zero"], ["z"]),
    ]
    nodes += [helper.make_node("MatMul", [f"h{i}", "z"], [f"h{i + 1}"]) for i in range(steps)]
    nodes.append(helper.make_node("Identity", [f"h{steps}"], ["probability"]))
    return _save(helper.make_graph(nodes, "slow", [source], [target], constants), path)


def corrupt_model(path: Path) -> str:
    """Parses as ONNX, but onnxruntime refuses to load it (an operator that does not exist)."""
    source, target = _io()
    nodes = [helper.make_node("NoSuchOperator", ["features"], ["probability"])]
    return _save(helper.make_graph(nodes, "corrupt", [source], [target]), path)


def permuted_model(source: Path, path: Path, order: Sequence[int]) -> str:
    """``source`` taking its feature columns in another order: its column j is ``order[j]``.

    A Gather in front puts the columns back where ``source`` expects them, so both
    models answer the same for the same named values, each fed in its own order.
    """
    model = onnx.load(source)
    for node in model.graph.node:
        renamed = ["source_features" if name == "features" else name for name in node.input]
        del node.input[:]
        node.input.extend(renamed)
    back = np.argsort(np.asarray(order)).astype(np.int64)
    model.graph.initializer.append(numpy_helper.from_array(back, "source_columns"))
    gather = helper.make_node("Gather", ["features", "source_columns"], ["source_features"], axis=1)
    model.graph.node.insert(0, gather)
    path.write_bytes(model.SerializeToString())
    return hashlib.sha256(path.read_bytes()).hexdigest()
