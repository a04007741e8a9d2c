"""Which attribute values an exposure records, and which segment a value falls in. Pure.

An experiment's ``segments`` name the attributes it is analysed by. Only those, from the
request of the unit's *first* exposure, are recorded (``recorded_attributes``): a later
request's attributes may already be changed by the treatment (a user who upgrades the app
because the new ranker is better must stay in the segment they were randomized in).

A segment attribute has at most ``cap`` values with a bucket of their own (its declared
``values``, or else the first ``max_values`` values the rollup counts, in exposure order);
every other value is ``other``; a missing attribute is ``(none)``, a bucket outside the cap. The rule is made
deterministic by recording, per value, the exposure from which it has its own bucket
(``since_exposure_pk``): a unit counted before its value got a bucket stays in ``other``,
so exposure counts and outcome sums always put one unit in one segment, even when the
YAML's values or cap change while the experiment runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from service.experiments.schema import Experiment, SegmentAttribute

OTHER = "other"
NONE = "(none)"
VALUE_CHARS = 64
CLIENT = "abx.client"
"""A built-in attribute of every segmented experiment: who made the exposure, ``server``
(``/v1/assign``, ``/v1/predict``) or the client SDK's name and version from its exposure
batch. Only the SRM drill-down reads it (an imbalance in one SDK version is a bug there)."""
CLIENT_SEGMENT = SegmentAttribute(attribute=CLIENT, max_values=10)
SERVER = "server"


def recorded_value(raw: Any) -> str:
    """The text stored for one attribute value: strings as given, scalars in JSON spelling,
    at most 64 characters, without what PostgreSQL's jsonb refuses (NUL, lone surrogates)."""
    if raw is None or isinstance(raw, dict | list):
        return NONE
    text = ("true" if raw else "false") if isinstance(raw, bool) else str(raw)
    text = text.replace("\x00", "")[:VALUE_CHARS]
    return text.encode("utf-8", "replace").decode("utf-8") or NONE


def counted_attributes(experiment: Experiment) -> tuple[SegmentAttribute, ...]:
    """The attributes the rollup counts: the experiment's segments and ``abx.client``."""
    specs = experiment.segment_attributes
    return (*specs, CLIENT_SEGMENT) if specs else ()


def recorded_attributes(
    experiment: Experiment, attributes: Mapping[str, Any], client: str = SERVER
) -> dict[str, str] | None:
    """The segment attributes to record with the exposure; None when it has no segments."""
    specs = experiment.segment_attributes
    if not specs:
        return None
    found = {s.attribute: recorded_value(attributes.get(s.attribute)) for s in specs}
    found[CLIENT] = recorded_value(client)
    return found


def segment_of(
    spec: SegmentAttribute, admitted: Mapping[str, int], value: str | None, exposure_pk: int
) -> str:
    """The segment of a unit counted at ``exposure_pk`` whose attribute is ``value``.

    ``admitted`` maps each value with a bucket of its own to the exposure it has had it
    since; a unit counted earlier than that is in ``other``.
    """
    if value is None:
        value = NONE
    since = admitted.get(value)
    return value if since is not None and since <= exposure_pk else OTHER


def admits(spec: SegmentAttribute, admitted: Mapping[str, int], value: str) -> bool:
    """Whether a value not yet admitted gets its own bucket now (while counting exposures)."""
    if value in admitted or value == OTHER:
        return False
    if value == NONE:  # always its own bucket, outside the cap
        return True
    if spec.values is not None:
        return value in spec.values
    return sum(1 for known in admitted if known != NONE) < spec.cap
