"""Dynamic int8 quantization of an ONNX model with onnxruntime's quantizer.

Weights of ``MatMul``/``Gemm`` become int8 with per-tensor scales; activations
are quantized on the fly at run time. The quantized file is an ordinary model
that can serve as a variant (or a shadow) next to the float one.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def quantize_model(source: Path, target: Path) -> None:
    """Write the dynamically int8-quantized form of ``source`` to ``target``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The quantizer logs its pre-processing advice at WARNING on every call.
    logging.getLogger("root").setLevel(logging.ERROR)
    quantize_dynamic(
        source,
        target,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul", "Gemm"],
    )


@dataclass(frozen=True)
class Comparison:
    accuracy_float: float
    accuracy_quantized: float
    largest_difference: float
    batch: int
    float_ms: float
    quantized_ms: float

    @property
    def accuracy_delta(self) -> float:
        return self.accuracy_quantized - self.accuracy_float


def compare_models(
    float_model: Path, quantized_model: Path, features: Any, labels: Any, batch: int = 64
) -> Comparison:
    """Accuracy of both binary classifiers on labelled rows, and their median run time per batch."""
    import numpy as np
    import onnxruntime as ort

    results = []
    for path in (float_model, quantized_model):
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        probability = session.run(None, {name: features})[0][:, 0]
        times = []
        for start in range(0, 20 * batch, batch):
            chunk = features[start % len(features) :][:batch]
            began = time.perf_counter()
            session.run(None, {name: chunk})
            times.append((time.perf_counter() - began) * 1000)
        results.append(
            (probability, float(np.mean((probability > 0.5) == labels)), float(np.median(times)))
        )
    (p_float, acc_float, ms_float), (p_quant, acc_quant, ms_quant) = results
    return Comparison(
        acc_float, acc_quant, float(np.max(np.abs(p_float - p_quant))), batch, ms_float, ms_quant
    )
