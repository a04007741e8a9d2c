"""Classic group-sequential designs: Pocock and O'Brien-Fleming constant boundaries.

For K equally spaced looks, Pocock (1977, "Group sequential methods in the design and
analysis of clinical trials", Biometrika 64:191) rejects at any look where |Z_k| >= C_P,
a constant; O'Brien & Fleming (1979, "A multiple testing procedure for clinical trials",
Biometrics 35:549) reject where |Z_k| >= C_B sqrt(K / k), very strict early and close to
the fixed-sample value at the end. The constant is the one whose exact probability of ever
crossing under H0 is alpha (Jennison & Turnbull 2000, sections 2.4 and 2.5). These designs
need the planned schedule of looks; when looks may move, use the error-spending boundaries
of :mod:`analysis.group_sequential`, which re-exports :func:`classic_boundaries`.
"""

from __future__ import annotations

import math

from scipy import optimize, special

from analysis.recursive_integration import crossing_probabilities
from analysis.validation import check_integer, check_probability

CLASSIC_KINDS = ("obf", "pocock")


def classic_boundaries(
    k: int, alpha: float = 0.05, kind: str = "obf", two_sided: bool = True
) -> list[float]:
    """Return the critical values of a classic Pocock or O'Brien-Fleming design.

    For K equally spaced looks, Pocock (1977) uses a constant boundary C_P(K, alpha) and
    O'Brien & Fleming (1979) use C_B(K, alpha) sqrt(K / k) at look k (Jennison & Turnbull
    2000, sections 2.4 and 2.5; constants in their Tables 2.1 and 2.3). The constant is
    found by root-finding on the exact crossing probability under H0, computed by
    recursive integration.

    Parameters
    ----------
    k : int
        Number of equally spaced looks, >= 1.
    alpha : float
        Total type I error, in (0, 1).
    kind : {"obf", "pocock"}
        Boundary shape.
    two_sided : bool
        Symmetric two-sided test (reject when |Z_k| >= b_k) or one-sided upper test.

    Returns
    -------
    list of float
        The K critical values.
    """
    check_integer("number of looks k", k, 1)
    check_probability("alpha", alpha)
    if kind not in CLASSIC_KINDS:
        raise ValueError(f"unknown classic boundary kind {kind!r}; expected one of {CLASSIC_KINDS}")
    side_alpha = alpha / 2.0 if two_sided else alpha
    fractions = [(look + 1) / k for look in range(k)]
    shape = [1.0 if kind == "pocock" else math.sqrt(k / (look + 1)) for look in range(k)]
    z_fixed = float(-special.ndtri(side_alpha))
    if k == 1:
        return [z_fixed]

    def excess_error(constant: float) -> float:
        upper = [constant * s for s in shape]
        lower = [-b for b in upper] if two_sided else None
        crossing = crossing_probabilities(fractions, upper, lower)
        return crossing.total - alpha

    # C lies between the fixed-sample value, which rejects too often, and the Bonferroni
    # value z_{1 - alpha/(2K)}, which rejects too rarely.
    bonferroni = float(-special.ndtri(side_alpha / k))
    constant = optimize.brentq(excess_error, z_fixed, bonferroni, xtol=1e-10)
    return [constant * s for s in shape]
