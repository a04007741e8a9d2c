"""Drift guardrails: is a treatment's model seeing or answering something else? Pure.

Per window (``window_hours`` of hourly sketches), each output or input column of the
treatment is compared with its model's reference profile, with the control's sketches over the
same window, or with both (``against``; ``analysis.drift``); the window's distance is the
largest over the columns. A guardrail trips when its last
``windows`` complete windows are all over the threshold: an effect size held for N windows,
never a p-value (with millions of rows everything is "significant", and a test repeated
every hour would raise false alarms without bound; docs/statistics.md). It needs no outcome,
so it acts from the first hours of an experiment.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from analysis.drift import distance_rows, rebin
from service.experiments.schema import DriftGuardrail
from service.inference.histograms import Sketch

Grouped = Mapping[tuple[str, datetime], Mapping[str, Sketch]]  # (variant, hour) -> feature
PREFIX = {"prediction_drift": "output:", "input_drift": "input:"}


@dataclass(frozen=True)
class DriftWindow:
    start: datetime
    distance: float | None
    """Largest distance over the columns; None: too few rows on a side to judge."""
    feature: str | None


@dataclass(frozen=True)
class DriftCheck:
    guardrail: str
    variant: str
    measure: str
    threshold: float
    action: str
    windows_needed: int
    windows_over: int
    """How many of the latest windows in a row are over the threshold."""
    tripped: bool
    distance: float | None
    """The latest window's distance."""
    feature: str | None
    """The column that drifted most in the latest window."""
    reference: str
    history: list[DriftWindow] = field(default_factory=list)


def window_starts(
    now: datetime, guardrail: DriftGuardrail, count: int | None = None
) -> list[datetime]:
    """Starts of the last complete windows before ``now`` (oldest first)."""
    end = now.replace(minute=0, second=0, microsecond=0)
    width = timedelta(hours=guardrail.window_hours)
    return [end - width * k for k in range(count or guardrail.windows, 0, -1)]


def _merged(
    sketches: Grouped, variant: str, hours: list[datetime], prefix: str
) -> dict[str, Sketch]:
    found: dict[str, Sketch] = {}
    for hour in hours:
        for feature, sketch in sketches.get((variant, hour), {}).items():
            if not feature.startswith(prefix):
                continue
            seen = found.get(feature)
            found[feature] = sketch if seen is None else combine(seen, sketch)
    return found


def combine(seen: Sketch, sketch: Sketch) -> Sketch:
    """Two sketches of one feature as one: merged when their bins agree; otherwise (a variant
    served by two models with their own profiles' bins, after a reload or by the fallback)
    the one of more rows stands for both, ties going to the one seen first, whatever the
    order the rows were read in."""
    if seen.edges == sketch.edges:
        return seen.merge(sketch)
    return sketch if sketch.n > seen.n else seen


_Pair = tuple[str, tuple[float, ...], Sequence[float], Sequence[float]]
"""A feature compared in one window: its name, the common edges, this variant's histogram and
the reference's."""


def window_pairs(
    guardrail: DriftGuardrail,
    variant: str,
    reference: str,
    sketches: Grouped,
    start: datetime,
    profile: Mapping[str, Sketch] | None = None,
) -> list[_Pair]:
    """The features one window compares (enough rows on both sides), on common edges: against
    ``profile`` (the model's reference profile) when given, else against the ``reference``
    variant's sketches of the same window."""
    hours = [start + timedelta(hours=h) for h in range(guardrail.window_hours)]
    prefix = PREFIX[guardrail.kind]
    mine = _merged(sketches, variant, hours, prefix)
    theirs = (
        _merged(sketches, reference, hours, prefix)
        if profile is None
        else {f: s for f, s in profile.items() if f.startswith(prefix)}
    )
    # Two models' sketches have their own bins when either has a reference profile: the
    # other side is moved onto this variant's bins (``analysis.drift.rebin``).
    return [
        (feature, *_common(sketch, theirs[feature]))
        for feature, sketch in sorted(mine.items())
        if feature in theirs
        and sketch.n >= guardrail.min_rows and theirs[feature].n >= guardrail.min_rows
    ]  # fmt: skip


def window_distances(
    measure: str, starts: list[datetime], pairs_by_window: list[list[_Pair]]
) -> list[DriftWindow]:
    """Each window's largest distance over its features, all windows' features measured
    together: one array computation per bin count (usually one for the whole check), not one
    per window. Ties go to the first bin count seen in the window, then the first feature by
    name, whatever the other windows hold."""
    by_width: dict[int, list[_Pair]] = {}
    placed: list[dict[int, list[int]]] = []  # per window: bin count -> its rows in by_width
    for pairs in pairs_by_window:
        groups: dict[int, list[int]] = {}
        for pair in pairs:
            rows = by_width.setdefault(len(pair[1]), [])
            groups.setdefault(len(pair[1]), []).append(len(rows))
            rows.append(pair)
        placed.append(groups)
    values = {
        width: distance_rows(
            measure, [e for _, e, _, _ in rows], [b for _, _, _, b in rows],
            [a for _, _, a, _ in rows],
        )
        for width, rows in by_width.items()
    }  # fmt: skip
    found = []
    for start, groups in zip(starts, placed, strict=True):
        worst: tuple[float, str] | None = None
        for width, indices in groups.items():
            measured = values[width][indices]
            index = int(measured.argmax())
            if worst is None or measured[index] > worst[0]:
                worst = (float(measured[index]), by_width[width][indices[index]][0])
        found.append(
            DriftWindow(start, None, None) if worst is None else DriftWindow(start, *worst)
        )
    return found


def window_distance(
    guardrail: DriftGuardrail,
    variant: str,
    reference: str,
    sketches: Grouped,
    start: datetime,
    profile: Mapping[str, Sketch] | None = None,
) -> DriftWindow:
    """One window's largest distance: against ``profile`` (the model's reference profile) when
    given, else against the ``reference`` variant's sketches of the same window."""
    pairs = window_pairs(guardrail, variant, reference, sketches, start, profile)
    return window_distances(guardrail.measure, [start], [pairs])[0]


def _common(
    mine: Sketch, theirs: Sketch
) -> tuple[tuple[float, ...], Sequence[float], Sequence[float]]:
    """Both histograms on one set of edges: the coarser side's, the finer one moved onto them.

    The coarser side is the one whose fullest bin (the outer ones included) holds the larger
    share: moving the finer histogram onto it errs by at most one of its small bins per edge,
    while the other way round would spread a wide bin's mass evenly where it was not.
    """
    if mine.edges == theirs.edges:  # the counts as they are: distance_rows reads them as floats
        return mine.edges, mine.histogram, theirs.histogram

    def fullest(sketch: Sketch) -> float:
        return max(sketch.histogram) / max(sum(sketch.histogram), 1)

    if fullest(mine) >= fullest(theirs):
        moved = rebin(theirs.edges, theirs.histogram, mine.edges)
        return mine.edges, [float(c) for c in mine.histogram], [float(c) for c in moved]
    moved = rebin(mine.edges, mine.histogram, theirs.edges)
    return theirs.edges, [float(c) for c in moved], [float(c) for c in theirs.histogram]


def comparisons(
    guardrail: DriftGuardrail, variant: str, control: str, has_profile: bool
) -> list[str]:
    """What ``variant`` is compared with under ``guardrail.against``: ``reference``, ``control``.

    Unset, it is the model's reference profile when it has one, else the control; ``both``
    gives both (the control is never compared with itself).
    """
    against = guardrail.against or ("reference" if has_profile else "control")
    found = []
    if against in ("reference", "both") and has_profile:
        found.append("reference")
    if against in ("control", "both") and variant != control:
        found.append("control")
    return found


def check_drift(
    guardrail: DriftGuardrail,
    variant: str,
    reference: str,
    sketches: Grouped,
    now: datetime,
    history_windows: int | None = None,
    profile: Mapping[str, Sketch] | None = None,
) -> DriftCheck:
    """One guardrail for one treatment, as of ``now`` (the current, partial window is left out)."""
    starts = window_starts(now, guardrail, max(history_windows or 0, guardrail.windows))
    history = window_distances(
        guardrail.measure, starts,
        [window_pairs(guardrail, variant, reference, sketches, s, profile) for s in starts],
    )  # fmt: skip
    over = 0
    for window in reversed(history):
        if window.distance is None or window.distance <= guardrail.threshold:
            break
        over += 1
    latest = history[-1]
    return DriftCheck(
        guardrail.kind, variant, guardrail.measure, guardrail.threshold, guardrail.action,
        guardrail.windows, over, over >= guardrail.windows, latest.distance, latest.feature,
        "reference profile" if profile is not None else reference, history,
    )  # fmt: skip


def group(
    sketches: Mapping[tuple[str, str, datetime, str], Sketch],
) -> dict[tuple[str, datetime], dict[str, Sketch]]:
    """(variant, model, hour, feature) rows by (variant, hour), merging a variant's models."""
    grouped: dict[tuple[str, datetime], dict[str, Sketch]] = {}
    for (variant, _model, hour, feature), sketch in sketches.items():
        features = grouped.setdefault((variant, hour), {})
        seen = features.get(feature)
        features[feature] = sketch if seen is None else combine(seen, sketch)
    return grouped
