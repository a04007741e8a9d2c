"""Which execution provider serves a model, from its timings on each. Pure.

Its own module, free of Flask and the rest of the service, so that
``benchmarks/gpu_check.py`` can apply the very rule the runtime calibrates with
on a bare GPU machine.
"""

from __future__ import annotations

from collections.abc import Mapping

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


def choose_provider(timings: Mapping[str, Mapping[int, float]]) -> str:
    """The provider with the least total median run time over the batch sizes measured."""
    return min(timings, key=lambda provider: (sum(timings[provider].values()), provider != CPU))
