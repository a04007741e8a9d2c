"""Input checks shared by the statistics modules.

Every public function in ``analysis/`` refuses invalid input with a ``ValueError`` that
names the argument, rather than letting a NaN or an infinity flow into a result. The
checks that several modules need (levels in (0, 1), positive scales, finite sums, whole
counts, traffic weights, increasing information) live here so that each rule, and its
message, is written once.

Two wordings of the level check exist: :func:`check_probability` ("must be in (0, 1)")
for the fixed-horizon, design and planning modules, and :func:`check_alpha` ("must lie
in (0, 1)") for the always-valid modules. Callers match on both messages, so both are
kept; the rule behind them is the same.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Sequence
from typing import TypeGuard

import numpy as np
import numpy.typing as npt

WEIGHT_SUM_TOLERANCE = 1e-9
"""How far configured traffic weights may sum away from 1 (rounding in YAML or JSON)."""


def is_integer(value: object) -> TypeGuard[int]:
    """Return whether ``value`` is a whole number (Python or numpy integer, not a bool).

    Counts often arrive as numpy integers (from arrays or database drivers); they are
    accepted like ``int``. Booleans, though ``int`` subclasses, are refused.
    """
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_integer(name: str, value: object, minimum: int) -> None:
    """Refuse anything but an integer ``>= minimum`` (e.g. a count of looks or units)."""
    if not is_integer(value) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _in_open_unit_interval(value: object) -> bool:
    return isinstance(value, numbers.Real) and 0.0 < float(value) < 1.0


def check_probability(name: str, value: float) -> None:
    """Refuse a level, power, rate or threshold outside the open interval (0, 1)."""
    if not _in_open_unit_interval(value):
        raise ValueError(f"{name} must be in (0, 1), got {value!r}")


def check_alpha(alpha: float) -> None:
    """Refuse an error probability of an always-valid method outside (0, 1)."""
    if not _in_open_unit_interval(alpha):
        raise ValueError(f"alpha must lie in (0, 1); got {alpha}")


def check_finite(name: str, value: float) -> None:
    """Refuse NaN and infinities."""
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite; got {value}")


def check_positive(name: str, value: float) -> None:
    """Refuse anything but a finite number > 0 (a variance, a count, a scale)."""
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be finite and > 0; got {value}")


def check_positive_array(name: str, values: npt.NDArray[np.float64]) -> None:
    """Refuse an array unless every entry is finite and > 0."""
    if not (np.all(np.isfinite(values)) and np.all(values > 0)):
        raise ValueError(f"{name} must be finite and > 0 everywhere")


def check_increasing_positive(name: str, values: Sequence[float]) -> list[float]:
    """Return ``values`` as floats; refuse an empty, non-positive or non-increasing list."""
    floats = [float(v) for v in values]
    if not floats:
        raise ValueError(f"{name} must not be empty")
    if not all(math.isfinite(v) and v > 0.0 for v in floats):
        raise ValueError(f"{name} must be finite and > 0, got {floats}")
    if any(b <= a for a, b in itertools.pairwise(floats)):
        raise ValueError(f"{name} must be strictly increasing, got {floats}")
    return floats


def check_weights(weights: Sequence[float]) -> list[float]:
    """Return traffic weights as floats; each must be > 0 and all must sum to 1 (1e-9)."""
    shares = [float(w) for w in weights]
    if not all(math.isfinite(w) and w > 0.0 for w in shares):
        raise ValueError(f"weights must be positive (leave out variants with weight 0): {shares}")
    if abs(math.fsum(shares) - 1.0) > WEIGHT_SUM_TOLERANCE:
        raise ValueError(f"weights must sum to 1 within 1e-9, got sum {math.fsum(shares)!r}")
    return shares
