"""Build the demo models locally and deterministically (never downloaded).

Every model reads ``features`` (float32, ``[batch, 20]``, standardized) and answers
``probability`` (float32, ``[batch, 1]``) on a seeded synthetic churn data set: a
logistic regression, ReLU networks, and gradient-boosted trees (``demo_trees``).
In the networks, hidden layers are seeded random projections and only the output
layer is fitted, by Newton's method on an L2-penalized log-loss: a convex fit
converges to the same optimum whatever the BLAS build's rounding, so the float32
weights, and the files' SHA-256 in ``experiments/*.yaml``, come out the same on
every machine. (End-to-end SGD would drift in the last bits and change the checksum.)
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from service.inference.quantization import quantize_model

FEATURES = 20
SEED = 20240611
RAW_OFFSET = 1.0
"""Raw demo features are ``2 * z + 1``; the YAML's preprocessing undoes it."""
RAW_SCALE = 2.0
TRAIN_ROWS = 4000
"""Rows fitted on; the rest of ``demo_dataset()`` is held out for accuracy."""


def demo_dataset(rows: int = 6000, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """Standardized features and 0/1 labels with non-linear structure (seeded)."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((rows, FEATURES))
    logit = (
        1.5 * z[:, 0] - z[:, 1] + 1.2 * z[:, 2] * z[:, 3] + 1.5 * np.sin(2 * z[:, 4])
        + (z[:, 5] ** 2 - 1) - 0.8 * np.abs(z[:, 6]) + 0.5
    )  # fmt: skip
    labels = (rng.random(rows) < 1 / (1 + np.exp(-2 * logit))).astype(np.int64)
    return z.astype(np.float32), labels


def fit_logistic(features: np.ndarray, labels: np.ndarray, penalty: float = 1.0) -> np.ndarray:
    """Weights (last entry: bias) of an L2-penalized logistic regression, by Newton's method."""
    x = np.hstack([features.astype(np.float64), np.ones((len(features), 1))])
    w = np.zeros(x.shape[1])
    for _ in range(12):
        p = 1 / (1 + np.exp(-(x @ w)))
        gradient = x.T @ (p - labels) + penalty * w
        hessian = (x * (p * (1 - p))[:, None]).T @ x + penalty * np.eye(x.shape[1])
        w -= np.linalg.solve(hessian, gradient)
    return w


def fit_ridge_logistic(features: np.ndarray, labels: np.ndarray, penalty: float) -> np.ndarray:
    """Ridge regression on +-1 targets, calibrated by a one-feature logistic fit.

    One linear solve instead of Newton's dozen: the heavy network's 1024-wide
    output layer would otherwise take seconds to fit.
    """
    x = np.hstack([features.astype(np.float64), np.ones((len(features), 1))])
    w = np.linalg.solve(x.T @ x + penalty * np.eye(x.shape[1]), x.T @ (2.0 * labels - 1))
    slope, intercept = fit_logistic((x @ w)[:, None], labels, penalty=1e-3)
    head: np.ndarray = slope * w + np.r_[np.zeros(len(w) - 1), intercept]
    return head


def _hidden_layers(widths: Iterable[int], seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    layers, fan_in = [], FEATURES
    for width in widths:
        weight = (rng.standard_normal((fan_in, width)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        bias = (rng.standard_normal(width) * 0.1).astype(np.float32)
        layers.append((weight, bias))
        fan_in = width
    return layers


def _forward(features: np.ndarray, layers: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    hidden = features.astype(np.float64)
    for weight, bias in layers:
        hidden = np.maximum(hidden @ weight.astype(np.float64) + bias, 0.0)
    return hidden


def build_network(name: str, widths: tuple[int, ...], penalty: float) -> onnx.ModelProto:
    """A ReLU network with seeded hidden layers and a fitted sigmoid output layer."""
    features, labels = demo_dataset()
    layers = _hidden_layers(widths, SEED + len(widths) * 1000 + sum(widths))
    hidden = _forward(features[:TRAIN_ROWS], layers)
    fit = fit_ridge_logistic if sum(widths) > 1024 else fit_logistic
    head = fit(hidden, labels[:TRAIN_ROWS], penalty)
    fan_in = widths[-1] if widths else FEATURES
    layers.append((head[:-1].reshape(fan_in, 1).astype(np.float32), head[-1:].astype(np.float32)))
    nodes, initializers, current = [], [], "features"
    for index, (weight, bias) in enumerate(layers):
        last = index == len(layers) - 1
        initializers += [
            numpy_helper.from_array(weight, f"w{index}"),
            numpy_helper.from_array(bias, f"b{index}"),
        ]
        nodes += [
            helper.make_node("MatMul", [current, f"w{index}"], [f"m{index}"]),
            helper.make_node("Add", [f"m{index}", f"b{index}"], [f"a{index}"]),
            helper.make_node(
                "Sigmoid" if last else "Relu",
                [f"a{index}"],
                ["probability" if last else f"h{index}"],
            ),
        ]
        current = f"h{index}"
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", FEATURES])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["batch", 1])],
        initializers,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="abx-demo"
    )
    model.ir_version = 8
    model.model_version = 1
    return model


def build_boosted_trees(name: str) -> onnx.ModelProto:
    """100 depth-3 trees, learning rate 0.1, on the same training rows as the networks."""
    from service.demo.trees import fit_boosted_trees, trees_to_onnx

    features, labels = demo_dataset()
    base, trees = fit_boosted_trees(
        features[:TRAIN_ROWS], labels[:TRAIN_ROWS], rounds=100, depth=3, rate=0.1
    )
    return trees_to_onnx(name, base, trees, FEATURES)


DEMO_MODELS: dict[str, Callable[[], onnx.ModelProto]] = {
    "churn_logreg.onnx": lambda: build_network("churn_logreg", (), penalty=1.0),
    "churn_gbm.onnx": lambda: build_boosted_trees("churn_gbm"),
    "churn_mlp.onnx": lambda: build_network("churn_mlp", (256,), penalty=10.0),
    "mlp_heavy.onnx": lambda: build_network("mlp_heavy", (1024,) * 4, penalty=300.0),
}
QUANTIZED = {"mlp_heavy_int8.onnx": "mlp_heavy.onnx"}
DEMO_FILES = (*DEMO_MODELS, *QUANTIZED)


def _atomic_write(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def build_demo_models(
    root: Path, names: Iterable[str] = DEMO_FILES, force: bool = False
) -> dict[str, str]:
    """Build the named demo models that are missing (all with ``force``) under ``root``.

    Returns the SHA-256 of every named file. A file lock keeps concurrent
    builders (gunicorn starts, test workers) from writing the same file twice.
    """
    wanted = [name for name in names if name in DEMO_FILES]
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for name in wanted:
            source = QUANTIZED.get(name)
            if source is not None and (force or not (root / source).exists()):
                _atomic_write(root / source, DEMO_MODELS[source]().SerializeToString())
            if force or not (root / name).exists():
                if source is not None:
                    quantize_model(root / source, root / f".{name}.tmp")
                    os.replace(root / f".{name}.tmp", root / name)
                else:
                    _atomic_write(root / name, DEMO_MODELS[name]().SerializeToString())
    return {name: hashlib.sha256((root / name).read_bytes()).hexdigest() for name in wanted}


def build_missing_demo_models(experiments: Path, root: Path) -> list[str]:
    """Build the demo models the experiment files name that are missing; return their names."""
    from service.experiments.validation import load_experiments

    named = {
        variant.model.path
        for item in load_experiments([experiments]).experiments
        for variant in item.experiment.variants
        if variant.model is not None
    }
    missing = sorted(n for n in named if n in DEMO_FILES and not (root / n).exists())
    if missing:
        build_demo_models(root, missing)
    return missing
