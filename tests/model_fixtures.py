"""Models for the model-runtime tests: the demo models, built once, and faulty ones.

The demo models go to the default models root (git-ignored), under a file lock,
so test workers and the servers they start share one build.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from service.demo_models import build_demo_models
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
    """Reshapes 20 features into rows of 7: onnxruntime raises at run time."""
    source, target = _io()
    shape = numpy_helper.from_array(np.array([-1, 7], dtype=np.int64), "shape")
    nodes = [helper.make_node("Reshape", ["features", "shape"], ["probability"])]
    return _save(helper.make_graph(nodes, "raises", [source], [target], [shape]), path)


def slow_model(path: Path, steps: int = 20000) -> str:
    """A chain of identity MatMuls: over 100 ms for one row."""
    source, target = _io()
    widen = numpy_helper.from_array(np.eye(20, 256, dtype=np.float32), "widen")
    square = numpy_helper.from_array(np.eye(256, dtype=np.float32), "square")
    nodes = [helper.make_node("MatMul", ["features", "widen"], ["h0"])]
    nodes += [
        helper.make_node(
            "MatMul", [f"h{i}", "square"], [f"h{i + 1}" if i + 1 < steps else "probability"]
        )
        for i in range(steps)
    ]
    return _save(helper.make_graph(nodes, "slow", [source], [target], [widen, square]), path)


def corrupt_model(path: Path) -> str:
    """Parses as ONNX, but onnxruntime refuses to load it (an operator that does not exist)."""
    source, target = _io()
    nodes = [helper.make_node("NoSuchOperator", ["features"], ["probability"])]
    return _save(helper.make_graph(nodes, "corrupt", [source], [target]), path)
