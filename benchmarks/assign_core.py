"""Assignments per second of the pure assignment core, against the GrowthBook Python SDK.

Both sides evaluate the same experiment for the same units: 3 variants weighted
0.34/0.33/0.33, coverage 0.8, and the targeting rule of
``experiments/checkout_ranker.yaml`` (country in [US, CA, GB, DE] and app version
>= 2.0.0; GrowthBook spells it ``$in`` and ``$vgte``). Attributes are built before
the clock starts, so only evaluation is timed.

GrowthBook is measured three ways and the fastest one is the reference:

* ``run``: one client for the whole run, ``set_attributes(unit) + run(Experiment)``
  with the ``Experiment`` built once (inline experiments, the shortest path);
* ``eval_feature``: one client holding a feature whose rule is the experiment,
  ``set_attributes(unit) + eval_feature(key)`` (the usual feature-flag path);
* ``per-request client``: ``GrowthBook(attributes=..., features=...)`` for each unit,
  as the SDK docs suggest for servers (a client is not thread-safe once its
  attributes are set per request).

Sharing one client is only correct in a single thread, as here. abx is also
measured on an experiment without targeting and on the two layered experiments.
Each figure is the median of ``--repeats`` runs.

The holdout check (the example holdout, ``experiments/holdouts/``) is measured as the
same experiment with and without it, in interleaved passes (``holdout_overhead``): the
difference of the best passes' µs per assignment is its cost (target: at most
``HOLDOUT_TARGET_US``). Without targeting every unit reaches the check (the worst case).

Run: ``python benchmarks/assign_core.py [--units N] [--repeats R]``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from common import ROOT, code_version
from growthbook import Experiment as GrowthBookExperiment
from growthbook import GrowthBook
from growthbook.core import evalCondition

from service.assignment.core import (
    CompiledHoldout,
    Reason,
    assign,
    compile_experiment,
    compile_holdout,
)
from service.experiments.schema import Experiment
from service.experiments.validation import load_experiments

TARGET_RATIO = 3.0
HOLDOUT_TARGET_US = 1.0
COUNTRIES = ("US", "CA", "GB", "DE", "FR", "BR", "JP", "IN")
APP_VERSIONS = ("1.2.0", "1.9.9", "2.0.0", "2.0.1", "2.3.7", "2.10.0", "3.0.0", "3.1.0-beta.2")
PLATFORMS = ("ios", "android", "web")
GROWTHBOOK_CONDITION = {
    "country": {"$in": ["US", "CA", "GB", "DE"]},
    "app_version": {"$vgte": "2.0.0"},
}


def make_units(count: int, seed: int = 20240601) -> tuple[list[str], list[dict[str, Any]]]:
    """Unit ids and attributes drawn once; about half of the units pass the targeting."""
    rng = random.Random(seed)
    units = [f"user-{i:08d}" for i in range(count)]
    attributes = [
        {
            "country": rng.choice(COUNTRIES[:4]) if rng.random() < 0.75 else rng.choice(COUNTRIES),
            "app_version": rng.choice(APP_VERSIONS),
            "platform": rng.choice(PLATFORMS),
        }
        for _ in units
    ]
    return units, attributes


Pass = Callable[[int], None]
"""Evaluate the first ``count`` units once."""


def measure_rates(passes: Sequence[Pass], count: int, repeats: int) -> list[list[float]]:
    """Units per second of each pass, ``repeats`` times, after a short warm-up of each.

    Passes take turns within each repeat, so a burst of other work on the machine
    slows one repeat of every case rather than every repeat of one case.
    """
    for run in passes:
        run(min(count, 2_000))  # first-call costs (caches, specialisation) are not measured
    rates: list[list[float]] = [[] for _ in passes]
    for _ in range(repeats):
        for index, run in enumerate(passes):
            started = time.perf_counter()
            run(count)
            rates[index].append(count / (time.perf_counter() - started))
    return rates


def abx_pass(
    experiment: Experiment,
    units: Sequence[str],
    attributes: Sequence[dict[str, Any]],
    holdout: CompiledHoldout | None = None,
) -> Pass:
    compiled = compile_experiment(experiment, holdout=holdout)

    def no_history() -> str | None:
        return None  # the sticky store is the edge's; the core asks it only after a re-weighting

    def run(count: int) -> None:
        for unit_id, unit_attributes in zip(units[:count], attributes[:count], strict=True):
            assign(compiled, unit_id, unit_attributes, no_history)

    return run


def holdout_overhead(
    experiment: Experiment,
    holdout: CompiledHoldout,
    units: Sequence[str],
    attributes: Sequence[dict[str, Any]],
    rounds: int,
) -> tuple[float, float]:
    """µs per assignment without and with the holdout: the best of ``rounds`` interleaved passes.

    The two passes alternate, so a burst of other work slows both; the best pass of each is
    the least disturbed one, and their difference the check's own cost.
    """
    plain = abx_pass(experiment, units, attributes)
    held = abx_pass(experiment, units, attributes, holdout)
    count = min(len(units), 20_000)
    best = [float("inf"), float("inf")]
    for run in (plain, held):
        run(min(count, 2_000))
    for _ in range(rounds):
        for index, run in enumerate((plain, held)):
            started = time.perf_counter()
            run(count)
            best[index] = min(best[index], (time.perf_counter() - started) / count * 1e6)
    return best[0], best[1]


def growthbook_experiment(
    experiment: Experiment, condition: dict[str, Any] | None
) -> GrowthBookExperiment[str]:
    return GrowthBookExperiment(
        key=experiment.key,
        variations=list(experiment.variant_keys),
        weights=[variant.weight for variant in experiment.variants],
        coverage=experiment.coverage,
        condition=condition,
        seed=experiment.seed,
        hashVersion=2,
    )


def growthbook_feature(experiment: Experiment, condition: dict[str, Any] | None) -> dict[str, Any]:
    rule: dict[str, Any] = {
        "key": experiment.key,
        "variations": list(experiment.variant_keys),
        "weights": [variant.weight for variant in experiment.variants],
        "coverage": experiment.coverage,
        "seed": experiment.seed,
        "hashVersion": 2,
    }
    if condition is not None:
        rule["condition"] = condition
    return {experiment.key: {"defaultValue": experiment.control, "rules": [rule]}}


def growthbook_attributes(
    units: Sequence[str], attributes: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    return [
        {"id": unit_id, **unit_attributes}
        for unit_id, unit_attributes in zip(units, attributes, strict=True)
    ]


def growthbook_run_pass(
    experiment: Experiment, condition: dict[str, Any] | None, gb_attributes: list[dict[str, Any]]
) -> Pass:
    client = GrowthBook()
    inline = growthbook_experiment(experiment, condition)

    def run(count: int) -> None:
        for unit_attributes in gb_attributes[:count]:
            client.set_attributes(unit_attributes)
            client.run(inline)

    return run


def growthbook_feature_pass(
    experiment: Experiment, condition: dict[str, Any] | None, gb_attributes: list[dict[str, Any]]
) -> Pass:
    client = GrowthBook(features=growthbook_feature(experiment, condition))
    key = experiment.key

    def run(count: int) -> None:
        for unit_attributes in gb_attributes[:count]:
            client.set_attributes(unit_attributes)
            client.eval_feature(key)

    return run


def growthbook_per_request_pass(
    experiment: Experiment, condition: dict[str, Any] | None, gb_attributes: list[dict[str, Any]]
) -> Pass:
    features = growthbook_feature(experiment, condition)
    key = experiment.key

    def run(count: int) -> None:
        for unit_attributes in gb_attributes[:count]:
            GrowthBook(attributes=unit_attributes, features=features).eval_feature(key)

    return run


def check_equivalence(
    experiment: Experiment,
    units: Sequence[str],
    attributes: Sequence[dict[str, Any]],
    gb_attributes: list[dict[str, Any]],
) -> list[str]:
    """Same targeting decision for every unit, and similar exposure and variant shares."""
    compiled = compile_experiment(experiment)
    disagreements = sum(
        compiled.eligible(a) != evalCondition(g, GROWTHBOOK_CONDITION)
        for a, g in zip(attributes, gb_attributes, strict=True)
    )
    ours: Counter[str] = Counter()
    for unit_id, unit_attributes in zip(units, attributes, strict=True):
        result = assign(compiled, unit_id, unit_attributes, lambda: None)
        ours[result.variant if result.reason is Reason.HASHED else "(not in experiment)"] += 1
    client = GrowthBook()
    inline = growthbook_experiment(experiment, GROWTHBOOK_CONDITION)
    theirs: Counter[str] = Counter()
    for unit_attributes in gb_attributes:
        client.set_attributes(unit_attributes)
        theirs_result = client.run(inline)
        theirs[theirs_result.value if theirs_result.inExperiment else "(not in experiment)"] += 1
    count = len(units)
    lines = [
        f"targeting decisions that differ between abx and GrowthBook: {disagreements} of {count}"
    ]
    for key in (*experiment.variant_keys, "(not in experiment)"):
        lines.append(
            f"  {key:<20} abx {ours[key] / count:6.1%}   GrowthBook {theirs[key] / count:6.1%}"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=100_000, help="units per pass")
    parser.add_argument("--repeats", type=int, default=5, help="passes per measurement")
    parser.add_argument(
        "--holdout-rounds", type=int, default=15, help="interleaved rounds for the holdout check"
    )
    parser.add_argument(
        "--experiments", type=Path, default=ROOT / "experiments", help="experiment folder"
    )
    args = parser.parse_args(argv)
    if args.units < 1 or args.repeats < 1:
        parser.error("--units and --repeats must be positive")

    loaded = load_experiments([args.experiments])
    if not loaded.ok:
        print("\n".join(str(p) for p in loaded.problems), file=sys.stderr)
        return 1
    by_key = {item.experiment.key: item.experiment for item in loaded.experiments}
    targeted = by_key["checkout_ranker"]
    untargeted = targeted.model_copy(update={"targeting": None, "key": "checkout_untargeted"})
    units, attributes = make_units(args.units)
    gb_attributes = growthbook_attributes(units, attributes)

    print(
        f"{args.units:,} units per pass, median of {args.repeats} passes, "
        f"Python {sys.version.split()[0]}, code {code_version()}"
    )
    print("\n".join(check_equivalence(targeted, units, attributes, gb_attributes)))
    print()

    cases: list[tuple[str, str, Pass]] = [
        ("abx", "checkout_ranker (targeted, coverage 0.8)", abx_pass(targeted, units, attributes)),
        (
            "GrowthBook",
            "same, reused client: set_attributes + run(Experiment)",
            growthbook_run_pass(targeted, GROWTHBOOK_CONDITION, gb_attributes),
        ),
        (
            "GrowthBook",
            "same, reused client: set_attributes + eval_feature",
            growthbook_feature_pass(targeted, GROWTHBOOK_CONDITION, gb_attributes),
        ),
        (
            "GrowthBook",
            "same, new client per unit + eval_feature",
            growthbook_per_request_pass(targeted, GROWTHBOOK_CONDITION, gb_attributes),
        ),
        ("abx", "checkout_ranker without targeting", abx_pass(untargeted, units, attributes)),
        (
            "GrowthBook",
            "same without targeting: set_attributes + run(Experiment)",
            growthbook_run_pass(untargeted, None, gb_attributes),
        ),
    ]
    holdout = compile_holdout(loaded.holdouts[0].holdout) if loaded.holdouts else None
    for key in ("search_embeddings", "search_reranker"):
        if key in by_key:
            described = "layered" + (", targeted" if by_key[key].targeting else "")
            cases.append(("abx", f"{key} ({described})", abx_pass(by_key[key], units, attributes)))

    all_rates = measure_rates([run for _, _, run in cases], args.units, args.repeats)
    rates: dict[str, float] = {}
    print(f"{'engine':<11} {'experiment / pattern':<58} {'median/s':>11} {'µs each':>8}  runs/s")
    for (engine, label, _), case_rates in zip(cases, all_rates, strict=True):
        median = statistics.median(case_rates)
        rates[label] = median
        spread = ", ".join(f"{r:,.0f}" for r in case_rates)
        print(f"{engine:<11} {label:<58} {median:>11,.0f} {1e6 / median:>8.2f}  [{spread}]")

    ours = rates["checkout_ranker (targeted, coverage 0.8)"]
    growthbook_best_label = max(
        (label for engine, label, _ in cases[1:4] if engine == "GrowthBook"), key=rates.__getitem__
    )
    growthbook_best = rates[growthbook_best_label]
    ratio = ours / growthbook_best
    print()
    print(f"fastest GrowthBook pattern: {growthbook_best_label}")
    print(
        f"abx / GrowthBook (targeted experiment): {ratio:.2f}x "
        f"(target >= {TARGET_RATIO:.0f}x: {'met' if ratio >= TARGET_RATIO else 'NOT met'})"
    )
    untargeted_ratio = (
        rates["checkout_ranker without targeting"]
        / rates["same without targeting: set_attributes + run(Experiment)"]
    )
    print(f"abx / GrowthBook (no targeting):        {untargeted_ratio:.2f}x")
    if holdout is not None:
        print()
        print(
            f"holdout check ({holdout.key}, share {holdout.share:g}): best pass of "
            f"{args.holdout_rounds} interleaved rounds, µs per assignment"
        )
        for label, experiment in (("targeted", targeted), ("without targeting", untargeted)):
            plain_us, held_us = holdout_overhead(
                experiment, holdout, units, attributes, args.holdout_rounds
            )
            added = held_us - plain_us
            verdict = "met" if added <= HOLDOUT_TARGET_US else "NOT met"
            print(
                f"  checkout_ranker {label:<18} {plain_us:6.2f} -> {held_us:6.2f}: "
                f"+{added:.2f} µs ({held_us / plain_us:.3f}x; target <= {HOLDOUT_TARGET_US:g} µs: "
                f"{verdict})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
