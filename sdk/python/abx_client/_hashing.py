"""Hashing spec version 1 (docs/hashing.md in the abx repository), as the server computes it."""

from __future__ import annotations

import hashlib

HASH_SPEC_VERSION = 1
_SCALE = float(1 << 53)


def hash_prefix(purpose: str, *parts: str) -> bytes:
    """The UTF-8 text before the unit id: ``abx1|purpose|part...|``."""
    return ("|".join(("abx1", purpose, *parts)) + "|").encode()


def unit_fraction(prefix: bytes, unit_id: str) -> float:
    """Top 53 bits of the SHA-256's first 8 bytes (big-endian) over 2**53: exact in [0, 1)."""
    digest = hashlib.sha256(prefix + unit_id.encode()).digest()
    return (int.from_bytes(digest[:8], "big") >> 11) / _SCALE


def cumulative_bounds(weights: tuple[float, ...]) -> tuple[float, ...]:
    """Weights summed left to right; 1.0 from the last positive weight on."""
    bounds: list[float] = []
    total = 0.0
    for weight in weights:
        total += weight
        bounds.append(total)
    positive = [i for i, weight in enumerate(weights) if weight > 0]
    for i in range(positive[-1] if positive else 0, len(bounds)):
        bounds[i] = 1.0
    return tuple(bounds)


def pick_index(fraction: float, bounds: tuple[float, ...]) -> int:
    """The first variant whose cumulative bound is strictly greater than the fraction."""
    for index, upper in enumerate(bounds):
        if fraction < upper:
            return index
    return len(bounds) - 1
