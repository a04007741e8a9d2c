"""A gradient-boosted tree ensemble for the demo, fitted and exported to ONNX here (seeded).

A model family other than the networks: ``TreeEnsembleRegressor`` from ONNX's ``ai.onnx.ml``
domain, as exporters of XGBoost, LightGBM or scikit-learn models write it, followed by a
sigmoid. The fit is deliberately simple and reproducible to the bit, since the file's SHA-256
is pinned in the example YAML: split candidates are fixed quantiles of the training data,
gradient sums go through ``np.bincount`` (a sequential loop, the same on every CPU) and the
sigmoid through Python's ``math.exp`` rather than numpy's vectorized one, whose last bit
depends on the instruction set; node totals are ``math.fsum`` (exactly rounded). Leaf values
are rounded to float32 before they are used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

THRESHOLDS_PER_FEATURE = 15
LAMBDA = 1.0
"""L2 penalty on leaf values (the Newton step's denominator), as in XGBoost's ``lambda``."""


@dataclass
class Tree:
    """Nodes in depth-first order, root first; a leaf has ``feature == -1``, every node a ``value``
    (what it would answer as a leaf; only leaves' are exported)."""

    feature: list[int] = field(default_factory=list)
    threshold: list[float] = field(default_factory=list)
    left: list[int] = field(default_factory=list)
    right: list[int] = field(default_factory=list)
    value: list[float] = field(default_factory=list)

    def add(self, feature: int, threshold: float, value: float) -> int:
        self.feature.append(feature)
        self.threshold.append(threshold)
        self.left.append(-1)
        self.right.append(-1)
        self.value.append(value)
        return len(self.feature) - 1


def _sigmoid(scores: np.ndarray) -> np.ndarray:
    return np.array([1.0 / (1.0 + math.exp(-s)) for s in scores.tolist()])


def _split_candidates(features: np.ndarray) -> np.ndarray:
    """float32 thresholds per feature: fixed interior quantiles of the training data."""
    levels = np.arange(1, THRESHOLDS_PER_FEATURE + 1) / (THRESHOLDS_PER_FEATURE + 1)
    return np.quantile(features.astype(np.float64), levels, axis=0).T.astype(np.float32)


def _leaf_value(gradient: float, hessian: float, rate: float) -> float:
    return float(np.float32(-rate * gradient / (hessian + LAMBDA)))


def _grow(
    tree: Tree,
    rows: np.ndarray,
    bins: np.ndarray,
    thresholds: np.ndarray,
    gradient: np.ndarray,
    hessian: np.ndarray,
    depth: int,
    rate: float,
) -> int:
    """Add the subtree over ``rows`` (indices); return its root's node id."""
    g_rows, h_rows = gradient[rows], hessian[rows]
    g, h = math.fsum(g_rows.tolist()), math.fsum(h_rows.tolist())
    node = tree.add(-1, 0.0, _leaf_value(g, h, rate))
    if depth == 0 or len(rows) < 20:
        return node
    parent = g * g / (h + LAMBDA)
    best = (1e-9, -1, -1)  # (gain, feature, bin): a split must gain something
    slots = THRESHOLDS_PER_FEATURE + 1
    for feature in range(bins.shape[1]):
        column = bins[rows, feature]
        g_left = np.cumsum(np.bincount(column, weights=g_rows, minlength=slots))[:-1]
        h_left = np.cumsum(np.bincount(column, weights=h_rows, minlength=slots))[:-1]
        gain = g_left**2 / (h_left + LAMBDA) + (g - g_left) ** 2 / (h - h_left + LAMBDA) - parent
        at = int(np.argmax(gain))
        if gain[at] > best[0]:
            best = (float(gain[at]), feature, at)
    _, feature, at = best
    if feature < 0:
        return node
    goes_left = bins[rows, feature] <= at
    tree.feature[node], tree.threshold[node] = feature, float(thresholds[feature, at])
    tree.left[node] = _grow(
        tree, rows[goes_left], bins, thresholds, gradient, hessian, depth - 1, rate
    )
    tree.right[node] = _grow(
        tree, rows[~goes_left], bins, thresholds, gradient, hessian, depth - 1, rate
    )
    return node


def _predict(tree: Tree, features: np.ndarray) -> np.ndarray:
    out = np.empty(len(features))
    for index, row in enumerate(features):
        node = 0
        while tree.feature[node] >= 0:
            node = (
                tree.left[node]
                if row[tree.feature[node]] <= tree.threshold[node]
                else tree.right[node]
            )
        out[index] = tree.value[node]
    return out


def fit_boosted_trees(
    features: np.ndarray, labels: np.ndarray, rounds: int, depth: int, rate: float
) -> tuple[float, list[Tree]]:
    """Base score and trees of a log-loss gradient-boosted ensemble (Newton leaf values)."""
    features = features.astype(np.float32)
    thresholds = _split_candidates(features)
    # bin b holds values in (threshold[b-1], threshold[b]]: "x <= threshold[b]" is "bin <= b".
    bins = np.stack(
        [
            np.searchsorted(thresholds[f], features[:, f], side="left")
            for f in range(features.shape[1])
        ],
        axis=1,
    )
    positive = float(labels.mean())
    base = float(np.float32(math.log(positive / (1 - positive))))
    scores = np.full(len(labels), base)
    trees = []
    everyone = np.arange(len(labels))
    for _ in range(rounds):
        probability = _sigmoid(scores)
        gradient = probability - labels
        hessian = probability * (1 - probability)
        tree = Tree()
        _grow(tree, everyone, bins, thresholds, gradient, hessian, depth, rate)
        trees.append(tree)
        scores = scores + _predict(tree, features)
    return base, trees


def trees_to_onnx(name: str, base: float, trees: list[Tree], features: int) -> onnx.ModelProto:
    """``TreeEnsembleRegressor`` (ai.onnx.ml) summing the trees on ``base``, then a sigmoid."""
    attributes: dict[str, Any] = {
        key: []
        for key in (
            "nodes_treeids", "nodes_nodeids", "nodes_featureids", "nodes_values", "nodes_modes",
            "nodes_truenodeids", "nodes_falsenodeids", "target_treeids", "target_nodeids",
            "target_ids", "target_weights",
        )
    }  # fmt: skip
    for tree_id, tree in enumerate(trees):
        for node, feature in enumerate(tree.feature):
            leaf = feature < 0
            attributes["nodes_treeids"].append(tree_id)
            attributes["nodes_nodeids"].append(node)
            attributes["nodes_featureids"].append(0 if leaf else feature)
            attributes["nodes_values"].append(0.0 if leaf else tree.threshold[node])
            attributes["nodes_modes"].append(b"LEAF" if leaf else b"BRANCH_LEQ")
            attributes["nodes_truenodeids"].append(0 if leaf else tree.left[node])
            attributes["nodes_falsenodeids"].append(0 if leaf else tree.right[node])
            if leaf:
                attributes["target_treeids"].append(tree_id)
                attributes["target_nodeids"].append(node)
                attributes["target_ids"].append(0)
                attributes["target_weights"].append(tree.value[node])
    ensemble = helper.make_node(
        "TreeEnsembleRegressor",
        ["features"],
        ["score"],
        domain="ai.onnx.ml",
        n_targets=1,
        base_values=[base],
        aggregate_function="SUM",
        post_transform="NONE",
        **attributes,
    )
    graph = helper.make_graph(
        [ensemble, helper.make_node("Sigmoid", ["score"], ["probability"])],
        name,
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["batch", 1])],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)],
        producer_name="abx-demo",
    )
    model.ir_version = 8
    model.model_version = 1
    return model
