"""What the checks for unstorable values cost on the hot paths, side by side in one run.

``POST /v1/events`` validates every event (``service.events.validation.validate_events``)
and ``POST /v1/assign`` parses its body (``AssignRequest.model_validate_json``, whose unit
id goes through ``service.assignment.units``). Both now refuse what PostgreSQL cannot store
(NUL, lone surrogates, infinities and deep nesting in ``properties``). Each is timed with the
checks and, in the same process and rounds, alternating which goes first, with them switched off (the check
functions replaced by ones that find nothing), so the ratio needs no baseline from another
run. Events are 500 per request, half with a small ``properties`` object, a tenth with a
non-ASCII unit. Reported: requests/s validated with and without, their ratio (median of the
per-round ratios), and this process's RSS.

Run: ``python benchmarks/validation.py [--rounds N] [--seconds S]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from common import code_version, load_average, print_header, rss_mib


def _events(count: int) -> list[dict[str, Any]]:
    events = []
    for i in range(count):
        event: dict[str, Any] = {
            "event_id": f"evt-{i:06d}",
            "experiment": "checkout_ranker",
            "unit": f"user-{i}" if i % 10 else f"utilisateur-é-{i}",
            "metric": "checkout_conversion",
            "value": i % 2,
        }
        if i % 2:
            event["properties"] = {"page": "cart", "items": [1, 2, 3], "coupon": {"code": "X"}}
        events.append(event)
    return events


def _rate(action: Callable[[], object], seconds: float) -> float:
    done, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        action()
        done += 1
    return done / elapsed


@contextmanager
def _checks_off() -> Iterator[None]:
    """Switch the new checks off (this process only): they find nothing."""
    import service.assignment.units as units
    import service.events.validation as validation

    saved = validation._storable_problem, units.text_problem
    validation._storable_problem = lambda event, properties: None  # type: ignore[assignment]
    units.text_problem = lambda text: None  # type: ignore[assignment]
    try:
        yield
    finally:
        validation._storable_problem, units.text_problem = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0, help="per measurement")
    args = parser.parse_args()

    from service.api.bodies import AssignRequest
    from service.events.validation import validate_events
    from service.experiments.validation import load_experiments
    from service.settings import PROJECT_ROOT

    loaded = load_experiments([PROJECT_ROOT / "experiments"])
    experiments = {item.experiment.key: item.experiment for item in loaded.experiments}
    events = _events(500)
    now, future = datetime.now(UTC), timedelta(minutes=5)
    assign_body = b'{"experiment": "checkout_ranker", "unit": "user-12345", "attributes": {}}'

    def events_request() -> None:
        rows, errors = validate_events(events, experiments.get, now, future)
        assert len(rows) == 500 and not errors

    def assign_request() -> None:
        AssignRequest.model_validate_json(assign_body)

    print_header(f"validation cost, code {code_version()}, load {load_average()}")
    for name, action in (("POST /v1/events (500 events)", events_request),
                         ("POST /v1/assign body", assign_request)):  # fmt: skip
        ratios, with_checks, without = [], [], []
        for number in range(args.rounds):
            if number % 2:  # alternate which goes first: neither gets the warmer machine
                with _checks_off():
                    off = _rate(action, args.seconds)
                on = _rate(action, args.seconds)
            else:
                on = _rate(action, args.seconds)
                with _checks_off():
                    off = _rate(action, args.seconds)
            with_checks.append(on)
            without.append(off)
            ratios.append(on / off)
        print(
            f"{name}: {statistics.median(with_checks):,.0f}/s with the checks,"
            f" {statistics.median(without):,.0f}/s without; ratio"
            f" {statistics.median(ratios):.3f} (rounds: {', '.join(f'{r:.3f}' for r in ratios)})"
        )
    # The same question answered by the minimum of repeated timings (robust to a busy machine,
    # where the rates above swing by a third from round to round): the checks' own cost as a
    # share of the validation that contains them.
    import json
    import timeit

    from service.events.schema import OutcomeEvent
    from service.events.validation import _storable_problem
    from service.storage.values import text_problem

    parsed = [OutcomeEvent.model_validate(e) for e in events]
    dumped = [
        json.dumps(e.properties, separators=(",", ":"), allow_nan=False) if e.properties else None
        for e in parsed
    ]

    def best(action: Callable[[], object], number: int) -> float:
        return min(timeit.repeat(action, number=number, repeat=7)) / number

    check = (
        best(lambda: [_storable_problem(e, p) for e, p in zip(parsed, dumped, strict=True)], 50)
        / 500
    )
    whole = best(events_request, 5) / 500
    print(f"events: check {check * 1e6:.2f} us of {whole * 1e6:.2f} us an event"
          f" ({check / whole:.1%}): throughput ratio bound {whole / (whole + check):.3f}")  # fmt: skip
    unit_check = best(lambda: text_problem("user-12345"), 20000)
    parse = best(assign_request, 20000)
    print(f"assign: unit check {unit_check * 1e9:.0f} ns of {parse * 1e9:.0f} ns a body parse"
          f" ({unit_check / parse:.1%}), before the handler, the hash and the writer")  # fmt: skip
    print(f"RSS of this process: {rss_mib(__import__('os').getpid()):.0f} MiB")


if __name__ == "__main__":
    main()
