"""The gradient-boosted demo model: onnxruntime computes what was fitted, and it is the better model."""

from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort

from service.demo.models import TRAIN_ROWS, demo_dataset
from service.demo.trees import Tree, fit_boosted_trees, trees_to_onnx
from tests.model_fixtures import MODELS, demo_models


def walk(tree: Tree, row: np.ndarray) -> float:
    """A plain reading of the tree, independent of the fitting code's own traversal."""
    node = 0
    while tree.feature[node] >= 0:
        below = row[tree.feature[node]] <= tree.threshold[node]
        node = tree.left[node] if below else tree.right[node]
    return tree.value[node]


def session(model_bytes: bytes) -> ort.InferenceSession:
    return ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])


def test_onnxruntime_answers_what_the_trees_say() -> None:
    features, labels = demo_dataset(rows=700, seed=7)
    base, trees = fit_boosted_trees(features[:500], labels[:500], rounds=6, depth=2, rate=0.3)
    assert all(len(tree.feature) <= 7 for tree in trees)  # depth 2: at most 3 + 4 nodes
    assert any(f >= 0 for tree in trees for f in tree.feature)  # it did split
    rows = features[500:]
    answered = session(trees_to_onnx("t", base, trees, 20).SerializeToString()).run(
        None, {"features": rows}
    )[0]
    expected = [1 / (1 + math.exp(-(base + sum(walk(t, row) for t in trees)))) for row in rows]
    assert answered.shape == (200, 1)
    np.testing.assert_allclose(answered[:, 0], expected, rtol=1e-5, atol=1e-6)


def test_the_fit_is_reproducible_to_the_byte() -> None:
    features, labels = demo_dataset(rows=600, seed=11)
    first = trees_to_onnx("t", *fit_boosted_trees(features, labels, 4, 3, 0.2), 20)
    again = trees_to_onnx("t", *fit_boosted_trees(features, labels, 4, 3, 0.2), 20)
    assert first.SerializeToString() == again.SerializeToString()


def test_boosting_beats_the_logistic_regression_on_held_out_rows() -> None:
    """The demo's point: two models of clearly different quality on the same data."""
    demo_models()
    features, labels = demo_dataset()
    held_out, truth = features[TRAIN_ROWS:], labels[TRAIN_ROWS:]

    def accuracy(name: str) -> float:
        model = session((MODELS / name).read_bytes())
        probability = model.run(None, {"features": held_out})[0][:, 0]
        return float(((probability > 0.5) == truth).mean())

    boosted, logistic = accuracy("churn_gbm.onnx"), accuracy("churn_logreg.onnx")
    assert boosted > logistic + 0.05, (boosted, logistic)
