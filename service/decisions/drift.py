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

from collections.abc import Mapping
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
            if seen is None:
                found[feature] = sketch
            elif seen.edges == sketch.edges:
                found[feature] = seen.merge(sketch)
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
    pairs = [
        (feature, *_common(sketch, theirs[feature]))
        for feature, sketch in sorted(mine.items())
        if feature in theirs
        and sketch.n >= guardrail.min_rows and theirs[feature].n >= guardrail.min_rows
    ]  # fmt: skip
    worst: tuple[float, str] | None = None
    by_width: dict[int, list[tuple[str, tuple[float, ...], list[float], list[float]]]] = {}
    for pair in pairs:
        by_width.setdefault(len(pair[1]), []).append(pair)
    for group in by_width.values():  # one array computation per bin count (usually one)
        values = distance_rows(
            guardrail.measure, [e for _, e, _, _ in group],
            [b for _, _, _, b in group], [a for _, _, a, _ in group],
        )  # fmt: skip
        index = int(values.argmax())
        if worst is None or values[index] > worst[0]:
            worst = (float(values[index]), group[index][0])
    if worst is None:
        return DriftWindow(start, None, None)
    return DriftWindow(start, worst[0], worst[1])


def _common(mine: Sketch, theirs: Sketch) -> tuple[tuple[float, ...], list[float], list[float]]:
    """Both histograms on one set of edges: the coarser side's, the finer one moved onto them.

    The coarser side is the one whose fullest bin (the outer ones included) holds the larger
    share: moving the finer histogram onto it errs by at most one of its small bins per edge,
    while the other way round would spread a wide bin's mass evenly where it was not.
    """
    if mine.edges == theirs.edges:
        return mine.edges, [float(c) for c in mine.histogram], [float(c) for c in theirs.histogram]

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
    history = [window_distance(guardrail, variant, reference, sketches, s, profile) for s in starts]
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
        if seen is None or seen.edges != sketch.edges:
            features[feature] = sketch
        else:
            features[feature] = seen.merge(sketch)
    return grouped
