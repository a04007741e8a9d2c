"""Which execution provider serves a model (from its timings), and with what options. Pure.

Its own module, free of Flask and the rest of the service, so that
``benchmarks/gpu_check.py`` can apply the very rule and options the runtime
calibrates and serves with on a bare GPU machine.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
CUDA_OPTIONS = {"use_tf32": "0"}
"""Full float32 on CUDA, so a variant predicts the same whichever provider serves it.

onnxruntime's CUDA provider runs float32 MatMul and Conv in TF32 (a 10-bit mantissa) by
default on Ampere and newer. On an H200 that moved the demo MLPs' outputs up to 1.8e-3 from
the CPU's (1.7e-6 without it), and the calibration's pick of a provider would have changed
the predictions an experiment compares. Its cost there: none at 1 to 64 rows on the heavy
MLP, 0.14 to 0.21 ms at 512 (the CPU takes 4.5 ms).
"""


def session_providers(providers: Sequence[str]) -> list[str | tuple[str, dict[str, str]]]:
    """onnxruntime's ``providers`` argument: CUDA with ``CUDA_OPTIONS``, the others by name."""
    return [(name, dict(CUDA_OPTIONS)) if name == CUDA else name for name in providers]


def choose_provider(timings: Mapping[str, Mapping[int, float]]) -> str:
    """The provider with the least total median run time over the batch sizes measured."""
    return min(timings, key=lambda provider: (sum(timings[provider].values()), provider != CPU))
