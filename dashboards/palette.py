"""One colour-blind-safe colour, marker and dash per variant, the same in every chart.

Okabe & Ito (2008), "Color Universal Design": eight colours told apart by people with
any common form of colour-vision deficiency. The control always takes the first
(blue); treatments follow in the order the experiment file lists them. Yellow sits
last because it is hard to read on white. Markers and dashes repeat the distinction
for print and for readers who cannot rely on colour at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

OKABE_ITO = (
    "#0072B2",  # blue
    "#E69F00",  # orange
    "#009E73",  # bluish green
    "#D55E00",  # vermillion
    "#CC79A7",  # reddish purple
    "#56B4E9",  # sky blue
    "#000000",  # black
    "#F0E442",  # yellow
)
MARKERS = ("circle", "square", "diamond", "triangle-up", "x", "star", "cross", "hexagon")
DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot", "solid", "dash")
NEUTRAL = "#555555"
"""Reference lines (zero, alpha, configured weights): never a variant colour."""


@dataclass(frozen=True)
class VariantStyle:
    color: str
    marker: str
    dash: str


def variant_styles(variants: Sequence[str], control: str) -> dict[str, VariantStyle]:
    """Styles keyed by variant: control first, then the others in the given order."""
    ordered = [control, *(v for v in variants if v != control)]
    return {
        variant: VariantStyle(
            OKABE_ITO[index % len(OKABE_ITO)],
            MARKERS[index % len(MARKERS)],
            DASHES[index % len(DASHES)],
        )
        for index, variant in enumerate(ordered)
    }


def with_alpha(color: str, alpha: float) -> str:
    """``#RRGGBB`` as ``rgba(...)`` for translucent interval bands."""
    red, green, blue = (int(color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({red},{green},{blue},{alpha})"
