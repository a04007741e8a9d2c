"""Choosing the mixing parameter of the always-valid methods: ``tau2`` or ``rho``.

The normal-mixture boundary of :mod:`analysis.normal_mixture` has one free parameter,
the mixing variance relative to the sampling variance, ``x = tau2 / V``; the mSPRT
(Johari, Pekelis & Walsh 2022) states it as ``tau2`` in squared metric units, the
confidence sequences (Waudby-Smith et al. 2024) as ``rho`` per unit, ``x = n rho^2``.
Any positive value keeps the error guarantee; it only decides at which sample size the
boundary is tightest, so it must be fixed before the first look. Two rules are offered:

* from the expected effect (:func:`tau2_from_expected_effect`): most power for effects
  of that size;
* from the planned horizon (:func:`tau2_for_horizon`, :func:`optimal_rho`): the
  narrowest interval at the planned sample size, via :func:`optimal_variance_ratio`.

One-sided bounds (guardrails) tune ``rho`` as the two-sided sequence at level
``2 alpha`` (:func:`one_sided_rho`).
"""

from __future__ import annotations

import math

from scipy import special

from analysis.validation import check_alpha, check_finite, check_positive


def optimal_variance_ratio(alpha: float = 0.05) -> float:
    """Return ``x* = tau2 / V`` that minimises the two-sided normal-mixture half-width.

    Notes
    -----
    Setting the derivative of ``(1 + x) / x * (a + log(1 + x))`` with
    ``a = 2 log(1/alpha)`` to zero gives ``x = a + log(1 + x)``, i.e.
    ``u = 1 + x`` solves ``u e^{-u} = alpha^2 / e``, so
    ``x* = -W_{-1}(-alpha^2 / e) - 1`` (Lambert W, lower branch). One
    fixed-point step from ``x = a`` gives the approximation
    ``a + log(1 + a)`` that Waudby-Smith et al. (2024) give for tuning rho
    after their Theorem 2.2, and that Howard et al. (2021) use in ``confseq``.
    """
    check_alpha(alpha)
    return float(-special.lambertw(-(alpha**2) / math.e, k=-1).real - 1.0)


def tau2_from_expected_effect(expected_effect: float) -> float:
    """Return the mixing variance ``tau2 = expected_effect**2``.

    Notes
    -----
    Johari et al. (2022) choose the mixing distribution by matching ``H`` to
    the distribution of true effects seen across past experiments: with
    ``H = N(0, tau2)`` that means ``tau2 = E[theta^2]``, the mean squared
    effect. A single anticipated effect size (in metric units, e.g. the
    minimum effect worth detecting) gives ``tau2 = effect^2``; the test then
    has most power for differences of that order. Any ``tau2 > 0`` keeps the
    type-I guarantee; only power and time to detection depend on it.
    """
    check_finite("expected_effect", expected_effect)
    if expected_effect == 0:
        raise ValueError("expected_effect must be nonzero (tau2 must be > 0)")
    return float(expected_effect) ** 2


def tau2_for_horizon(variance_at_horizon: float, alpha: float = 0.05) -> float:
    """Return the ``tau2`` whose always-valid interval is narrowest at a planned horizon.

    Parameters
    ----------
    variance_at_horizon : float
        Expected sampling variance of the difference at the planned sample
        size, e.g. ``(sigma_a**2 + sigma_b**2) / n_per_arm``.

    Notes
    -----
    The half-width ``sqrt(V (1 + x) / x (2 log(1/alpha) + log(1 + x)))`` with
    ``x = tau2 / V`` is minimised where ``x = 2 log(1/alpha) + log(1 + x)``;
    see :func:`optimal_variance_ratio`. Equivalent to the ``planned_n`` rule
    for confidence sequences (Waudby-Smith et al. 2024).
    """
    check_positive("variance_at_horizon", variance_at_horizon)
    return optimal_variance_ratio(alpha) * variance_at_horizon


def optimal_rho(planned_n: float, alpha: float = 0.05) -> float:
    """Return the ``rho`` that makes the two-sided CS narrowest at ``n = planned_n``.

    Notes
    -----
    The half-width depends on ``rho`` only through ``x = n rho^2``; its exact
    minimiser at ``n = planned_n`` is ``x* = -W_{-1}(-alpha^2 / e) - 1``
    (:func:`optimal_variance_ratio`), so
    ``rho = sqrt(x* / planned_n)``. Waudby-Smith et al. (2024) give the
    closed-form approximation ``rho = sqrt((-2 log alpha + log(-2 log alpha + 1)) / planned_n)``,
    one fixed-point step away; at alpha = 0.05 the two half-widths at
    ``planned_n`` differ by less than 0.1 %.
    """
    check_positive("planned_n", planned_n)
    return math.sqrt(optimal_variance_ratio(alpha) / planned_n)


def resolve_rho(rho: float | None, planned_n: float | None, alpha: float) -> float:
    """Return ``rho``, given or tuned for ``planned_n`` at level ``alpha`` (exactly one)."""
    if (rho is None) == (planned_n is None):
        raise ValueError("give exactly one of rho and planned_n")
    if rho is not None:
        check_positive("rho", rho)
        return rho
    assert planned_n is not None
    return optimal_rho(planned_n, alpha)


def one_sided_rho(rho: float | None, planned_n: float | None, alpha: float) -> float:
    """Return the ``rho`` of a one-sided bound at level ``alpha``: given, or tuned.

    With ``planned_n``, ``rho`` is tuned as for the two-sided sequence at level
    ``2 alpha`` (the rule of Howard et al.'s ``confseq``): for large z the one-sided
    mixture is twice the two-sided one, so its boundary approaches the two-sided boundary
    at ``2 alpha``. That needs ``alpha < 0.5``. Give exactly one of ``rho`` and ``planned_n``.
    """
    if rho is None and planned_n is not None and not 0 < alpha < 0.5:
        raise ValueError(
            "alpha must lie in (0, 0.5) when planned_n tunes a one-sided bound "
            f"(the tuning needs alpha < 0.5, for a two-sided level 2 alpha < 1); got {alpha}"
        )
    return resolve_rho(rho, planned_n, alpha if rho is not None else 2 * alpha)
