"""Error-spending functions: how much type I error a design may use by each look.

A spending function alpha(t) rises from alpha(0) = 0 to alpha(1) = alpha over the
information fraction t (information so far over the planned maximum). Lan & DeMets
(1983, "Discrete sequential boundaries for clinical trials", Biometrika 70:659) showed
that choosing each look's boundary so that the chance of first crossing there equals
alpha(t_k) - alpha(t_{k-1}) controls the total error at alpha for any number and timing
of looks, as long as the function itself is fixed in advance. The boundaries are solved
in :mod:`analysis.group_sequential`.
"""

from __future__ import annotations

import math

from scipy import special

from analysis.validation import check_probability

SPENDING_FUNCTIONS = ("obf", "pocock", "hsd")


def alpha_spent(
    information_fraction: float,
    alpha: float,
    spending: str = "obf",
    gamma: float | None = None,
) -> float:
    """Return the cumulative type I error spent by information fraction ``t``.

    Parameters
    ----------
    information_fraction : float
        t >= 0; values above 1 are treated as 1 (the whole alpha is spent).
    alpha : float
        Total error of this spending function, in (0, 1). For one side of a
        two-sided test pass alpha/2.
    spending : {"obf", "pocock", "hsd"}
        * "obf": Lan & DeMets (1983) O'Brien-Fleming type,
          alpha(t) = 2 - 2 Phi(z_{1-alpha/2} / sqrt(t)) (their alpha_1*; gsDesign ``sfLDOF``);
        * "pocock": Lan & DeMets (1983) Pocock type, alpha(t) = alpha ln(1 + (e - 1) t)
          (their alpha_2*);
        * "hsd": Hwang, Shih & DeCani (1990) family,
          alpha(t) = alpha (1 - exp(-gamma t)) / (1 - exp(-gamma)), and alpha t at gamma = 0.
    gamma : float, optional
        The HSD parameter (required for, and only for, "hsd"). gamma = -4 resembles
        O'Brien-Fleming, gamma = 1 resembles Pocock.

    Returns
    -------
    float
        Cumulative alpha spent, in [0, alpha].
    """
    check_probability("alpha", alpha)
    _check_spending(spending, gamma)
    if not (math.isfinite(information_fraction) and information_fraction >= 0.0):
        raise ValueError(
            f"information fraction must be finite and >= 0, got {information_fraction}"
        )
    t = min(information_fraction, 1.0)
    if t == 0.0:
        return 0.0
    if spending == "obf":
        return float(2.0 * special.ndtr(special.ndtri(alpha / 2.0) / math.sqrt(t)))
    if spending == "pocock":
        return alpha * math.log1p((math.e - 1.0) * t)
    assert gamma is not None
    if gamma == 0.0:
        return alpha * t
    return alpha * math.expm1(-gamma * t) / math.expm1(-gamma)


def _check_spending(spending: str, gamma: float | None) -> None:
    if spending not in SPENDING_FUNCTIONS:
        raise ValueError(
            f"unknown spending function {spending!r}; expected one of {SPENDING_FUNCTIONS}"
        )
    if spending == "hsd" and gamma is None:
        raise ValueError("gamma is required for the Hwang-Shih-DeCani ('hsd') spending function")
    if spending != "hsd" and gamma is not None:
        raise ValueError(f"gamma applies only to spending='hsd', not {spending!r}")
    if gamma is not None and not math.isfinite(gamma):
        raise ValueError(f"gamma must be finite, got {gamma}")
