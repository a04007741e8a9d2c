"""Derive tests/cases/ratio_metric.json's "cuped_comparison" by exact arithmetic on raw units.

Independent of analysis/: every unit is linearised one by one (Deng, Knoblich & Lu 2018,
the delta method's first-order expansion: l_i = R + (x_i - R y_i) / ybar, the same for the pre-period ratio R'), then
CUPED (Deng et al. 2013, Section 3.2) is applied to those per-unit values with the
within-arm pooled theta, all in Python fractions. Run: python tests/cases/make_ratio_cuped.py
"""

from __future__ import annotations

import json
from fractions import Fraction

ARMS = {
    "control": {
        "numerator": [5, 0, 12, 3, 8, 0, 20, 7],
        "denominator": [2, 1, 4, 1, 3, 2, 5, 3],
        "pre_numerator": [4, 1, 10, 2, 9, 0, 15, 5],
        "pre_denominator": [2, 1, 3, 1, 3, 1, 4, 2],
    },
    "treatment": {
        "numerator": [6, 2, 15, 0, 9, 4, 25, 3, 11],
        "denominator": [2, 1, 4, 2, 3, 2, 6, 1, 3],
        "pre_numerator": [5, 1, 12, 1, 6, 3, 18, 2, 8],
        "pre_denominator": [2, 1, 4, 1, 2, 2, 5, 1, 3],
    },
}


def linearise(x: list[Fraction], y: list[Fraction]) -> tuple[Fraction, list[Fraction]]:
    ratio = sum(x) / sum(y)
    mean_y = sum(y) / len(y)
    return ratio, [ratio + (xi - ratio * yi) / mean_y for xi, yi in zip(x, y, strict=True)]


def main() -> None:
    per_arm = {}
    for arm, data in ARMS.items():
        values = {k: [Fraction(v) for v in vs] for k, vs in data.items()}
        ratio, post = linearise(values["numerator"], values["denominator"])
        pre_ratio, pre = linearise(values["pre_numerator"], values["pre_denominator"])
        per_arm[arm] = (ratio, post, pre_ratio, pre)
    cross, squares = Fraction(0), Fraction(0)
    for _, post, _, pre in per_arm.values():
        mean_post, mean_pre = sum(post) / len(post), sum(pre) / len(pre)
        cross += sum((a - mean_post) * (b - mean_pre) for a, b in zip(post, pre, strict=True))
        squares += sum((b - mean_pre) ** 2 for b in pre)
    theta = cross / squares
    variance, unadjusted = Fraction(0), Fraction(0)
    for _, post, _, pre in per_arm.values():
        n = len(post)
        mean_post, mean_pre = sum(post) / n, sum(pre) / n
        residuals = [
            (a - mean_post) - theta * (b - mean_pre) for a, b in zip(post, pre, strict=True)
        ]
        variance += sum(r * r for r in residuals) / n / n
        unadjusted += sum((a - mean_post) ** 2 for a in post) / n / n
    control, treatment = per_arm["control"], per_arm["treatment"]
    difference = (treatment[0] - control[0]) - theta * (treatment[2] - control[2])
    case = {
        "arms": ARMS,
        "ratio_control": float(control[0]),
        "ratio_treatment": float(treatment[0]),
        "theta": float(theta),
        "difference": float(difference),
        "difference_exact": str(difference),
        "difference_variance": float(variance),
        "difference_variance_exact": str(variance),
        "unadjusted_difference_variance": float(unadjusted),
        "source": "tests/cases/make_ratio_cuped.py: each unit linearised one by one, "
        "l_i = R + (x_i - R y_i)/ybar (the first-order Taylor expansion of the delta method, Deng, Knoblich & Lu 2018), the pre-period "
        "ratio likewise as the covariate; CUPED on those values with the within-arm pooled "
        "theta (Deng et al. 2013, Sec. 3.2), plug-in variances; exact Python fractions",
    }
    print(json.dumps(case, indent=2))


if __name__ == "__main__":
    main()
