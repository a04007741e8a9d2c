"""Family-wise error control for several treatment-versus-control comparisons.

An experiment with m treatments makes m comparisons against control; testing each at
alpha lets the chance of at least one false winner grow towards m * alpha. Bonferroni
tests each at alpha / m; Holm's step-down procedure (Holm 1979) controls the same
family-wise error rate and is never less powerful, so it is the default for decisions.
Bonferroni's alpha split is still the simple way to plan: size each comparison at
alpha / m (see :func:`bonferroni_alpha`) and the Holm analysis keeps that power or more.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from statsmodels.stats.multitest import multipletests

from analysis.validation import check_integer, check_probability


@dataclass(frozen=True)
class MultipleTestingResult:
    """Adjusted p-values and reject decisions, in the order the p-values were given."""

    method: str
    alpha_family: float
    p_values_raw: tuple[float, ...]
    p_values_adjusted: tuple[float, ...]
    reject: tuple[bool, ...]


def bonferroni_alpha(alpha: float, comparisons: int) -> float:
    """Return the per-comparison level alpha / m that bounds the family-wise error by alpha.

    Bonferroni inequality, P(union A_i) <= sum P(A_i) (Dunn 1961, JASA 56:52).
    """
    check_probability("alpha", alpha)
    check_integer("comparisons", comparisons, 1)
    return alpha / comparisons


def bonferroni(p_values: Sequence[float], alpha: float = 0.05) -> MultipleTestingResult:
    """Adjust p-values by Bonferroni: p_adj = min(1, m p); reject when p <= alpha / m.

    Computed by ``statsmodels.stats.multitest.multipletests(method="bonferroni")``.
    """
    return _multipletests(p_values, alpha, "bonferroni")


def holm(p_values: Sequence[float], alpha: float = 0.05) -> MultipleTestingResult:
    """Apply Holm's step-down procedure.

    With p-values sorted ascending, p_(1) <= ... <= p_(m), reject H_(1), ..., H_(j) while
    p_(i) <= alpha / (m - i + 1), stopping at the first that fails (Holm 1979, Scand. J.
    Statist. 6:65, section 2). Adjusted p-values are
    p_adj_(i) = min(1, max_{j <= i} (m - j + 1) p_(j)) (Wright 1992, Biometrics 48:1005),
    so H_(i) is rejected exactly when p_adj_(i) <= alpha. Equals
    ``statsmodels.stats.multitest.multipletests(method="holm")``, which is not called:
    its Holm branch runs a full ``gc.collect()`` on every call (0.2 s in a test process),
    and the decisions call this at every look and the dashboards once per day shown.
    """
    raw = _check_p_values(p_values)
    check_probability("alpha", alpha)
    m = len(raw)
    order = sorted(range(m), key=lambda i: raw[i])
    adjusted = [0.0] * m
    reject = [False] * m
    running_max = 0.0
    still_rejecting = True
    for rank, index in enumerate(order):
        remaining = m - rank
        running_max = max(running_max, raw[index] * remaining)
        adjusted[index] = min(1.0, running_max)
        # Compare by division, as statsmodels does, so decisions agree at exact ties.
        still_rejecting = still_rejecting and raw[index] <= alpha / remaining
        reject[index] = still_rejecting
    return MultipleTestingResult(
        method="holm",
        alpha_family=alpha,
        p_values_raw=tuple(raw),
        p_values_adjusted=tuple(adjusted),
        reject=tuple(reject),
    )


def benjamini_hochberg(p_values: Sequence[float], alpha: float = 0.05) -> MultipleTestingResult:
    """Control the false discovery rate by the Benjamini-Hochberg step-up procedure.

    With p-values sorted ascending, reject H_(1), ..., H_(k) for the largest k with
    p_(k) <= k alpha / m (Benjamini & Hochberg 1995, J. R. Statist. Soc. B 57:289, section
    3). The expected share of false rejections among rejections is at most alpha for
    independent (or positively dependent) tests. Adjusted p-values are
    p_adj_(i) = min(1, min_{j >= i} m p_(j) / j). Computed by
    ``statsmodels.stats.multitest.multipletests(method="fdr_bh")``.
    """
    return _multipletests(p_values, alpha, "fdr_bh")


def _multipletests(p_values: Sequence[float], alpha: float, method: str) -> MultipleTestingResult:
    raw = _check_p_values(p_values)
    check_probability("alpha", alpha)
    reject, adjusted, _, _ = multipletests(raw, alpha=alpha, method=method)
    return MultipleTestingResult(
        method=method,
        alpha_family=alpha,
        p_values_raw=tuple(raw),
        p_values_adjusted=tuple(float(p) for p in adjusted),
        reject=tuple(bool(r) for r in reject),
    )


def _check_p_values(p_values: Sequence[float]) -> list[float]:
    raw = [float(p) for p in p_values]
    if not raw:
        raise ValueError("need at least one p-value")
    if not all(math.isfinite(p) and 0.0 <= p <= 1.0 for p in raw):
        raise ValueError(f"p-values must lie in [0, 1], got {raw}")
    return raw
