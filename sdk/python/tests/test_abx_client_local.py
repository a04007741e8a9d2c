"""The SDK without a server: the published hashing vectors, the rules, never blocking.

The vectors are the abx repository's (tests/assignment/vectors); a copy of the SDK installed
on its own skips those tests.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from abx_client import Client
from abx_client._breaker import CircuitBreaker
from abx_client._hashing import cumulative_bounds, hash_prefix, pick_index, unit_fraction
from abx_client._queue import BatchQueue
from abx_client._snapshot import Snapshot, compile_experiment, evaluate, from_stored

VECTORS = Path(__file__).parents[3] / "tests" / "assignment" / "vectors" / "hashing_v1.json"
needs_vectors = pytest.mark.skipif(not VECTORS.exists(), reason="outside the abx repository")


def snapshot_entry(definition: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """An experiment as GET /v1/sdk/config publishes it, from its YAML definition."""
    seed = f"{definition.get('salt') or definition['key']}.v{definition.get('version', 1)}"
    entry = {
        "key": definition["key"], "status": definition["status"], "seed": seed,
        "hashing_version": 1, "control": definition["control"],
        "variants": [{"key": v["key"], "weight": v["weight"]} for v in definition["variants"]],
        "coverage": definition.get("coverage", 1.0), "layer": definition.get("layer"),
        "targeting": definition.get("targeting"), "forced": definition.get("forced", {}),
        "metrics": [definition["metrics"]["primary"]["name"]],
        "allocation": {"earlier_weights": [], "pending_weights": None, "moved_ranges": []},
        "decision": {"state": "running", "winner": None, "rolled_back": [], "stopped": None,
                     "coverage_cap": None},
    }  # fmt: skip
    entry.update(changes)
    return entry


@needs_vectors
def test_fraction_vectors() -> None:
    for case in json.loads(VECTORS.read_text("utf-8"))["fractions"]:
        prefix = hash_prefix(case["purpose"], *case["parts"])
        assert (prefix + case["unit"].encode()).decode() == case["hashed_string"]
        assert unit_fraction(prefix, case["unit"]) == case["fraction"]


@needs_vectors
def test_assignment_vectors() -> None:
    vectors = json.loads(VECTORS.read_text("utf-8"))["assignments"]
    compiled = compile_experiment(snapshot_entry(vectors["experiment"]))
    for case in vectors["cases"]:
        answer = evaluate(compiled, case["unit"], case["attributes"])
        assert answer is not None
        assert (answer.variant, answer.reason) == (case["variant"], case["reason"]), case
        assert answer.in_experiment == (case["reason"] in ("hashed", "sticky"))


@needs_vectors
def test_holdout_assignment_vectors() -> None:
    vectors = json.loads(VECTORS.read_text("utf-8"))["holdout_assignments"]
    holdout = vectors["holdout"]
    entry = snapshot_entry(
        vectors["experiment"],
        holdout={"key": holdout["key"], "seed": f"{holdout['key']}.v1", "share": holdout["share"]},
    )
    compiled = compile_experiment(entry)
    for case in vectors["cases"]:
        answer = evaluate(compiled, case["unit"], case["attributes"])
        assert answer is not None
        assert (answer.variant, answer.reason, answer.holdout_group) == (
            case["variant"], case["reason"], case["holdout_group"]), case  # fmt: skip
        assert answer.holdout == (holdout["key"] if case["holdout_group"] else None)


def test_bounds_end_at_one_from_the_last_positive_weight() -> None:
    assert cumulative_bounds((0.1, 0.2, 0.7)) == (0.1, 0.30000000000000004, 1.0)
    assert cumulative_bounds((0.5, 0.5, 0.0)) == (0.5, 1.0, 1.0)
    assert pick_index(0.9999999, (0.5, 1.0, 1.0)) == 1


def test_decisions_and_moved_ranges() -> None:
    definition = {"key": "e", "status": "running", "control": "a", "metrics": {
        "primary": {"name": "m"}}, "variants": [{"key": "a", "weight": 0.5},
                                                  {"key": "b", "weight": 0.5}]}  # fmt: skip
    decision: dict[str, Any] = {"state": "running", "winner": None, "rolled_back": [], "stopped": None,
                "coverage_cap": None}  # fmt: skip
    plain = compile_experiment(snapshot_entry(definition))
    units = [f"u{i}" for i in range(400)]
    hashed = {u: evaluate(plain, u, {}) for u in units}
    assert {a.reason for a in hashed.values() if a} == {"hashed"}
    halted = compile_experiment(snapshot_entry(definition, decision={
        **decision, "state": "halted", "stopped": "experiment-halted"}))  # fmt: skip
    assert {(a.variant, a.reason) for u in units if (a := evaluate(halted, u, {}))} == {
        ("a", "experiment-halted")}  # fmt: skip
    promoted = compile_experiment(snapshot_entry(definition, decision={
        **decision, "state": "promoted", "winner": "b"}))  # fmt: skip
    assert {(a.variant, a.reason, a.in_experiment) for u in units
            if (a := evaluate(promoted, u, {}))} == {("b", "promoted", False)}  # fmt: skip
    rolled = compile_experiment(snapshot_entry(definition, decision={
        **decision, "rolled_back": ["b"]}))  # fmt: skip
    for unit in units:
        answer, before = evaluate(rolled, unit, {}), hashed[unit]
        assert answer is not None and answer.variant == "a" and before is not None
        assert answer.reason == ("rolled-back" if before.variant == "b" else "hashed")
    ramp = compile_experiment(
        snapshot_entry(definition, decision={**decision, "coverage_cap": 0.1})
    )
    covered = [u for u in units if (a := evaluate(ramp, u, {})) and a.reason == "hashed"]
    assert 0.05 < len(covered) / len(units) < 0.15
    moved = compile_experiment(snapshot_entry(definition, allocation={
        "earlier_weights": [[0.8, 0.2]], "pending_weights": None,
        "moved_ranges": [[0.5, 0.8]]}))  # fmt: skip
    for unit in units:
        fraction = unit_fraction(hash_prefix("variant", "e", "e.v1"), unit)
        assert (evaluate(moved, unit, {}) is None) == (0.5 <= fraction < 0.8)
    assert from_stored(rolled, "b").reason == "rolled-back"
    assert from_stored(plain, "b").reason == "sticky"
    assert from_stored(plain, "gone").reason == "variant-removed"
    with pytest.raises(ValueError, match="hashing version 2"):
        compile_experiment(snapshot_entry(definition, hashing_version=2))
    assert Snapshot.from_json({"version": "v", "experiments": {}}).experiments == {}


def test_not_ready_answers_the_default_within_the_ready_timeout() -> None:
    with Client("http://127.0.0.1:9", "t", ready_timeout=2.0, timeout=0.2) as client:
        started = time.monotonic()
        first = client.assign("e", "u1", default="control")
        assert time.monotonic() - started >= 1.9  # waited for a snapshot, up to ready_timeout
        started = time.monotonic()
        second = client.assign("e", 42)
        assert time.monotonic() - started < 1.0  # and only once: no second wait
        assert (first.variant, first.reason, first.in_experiment) == (
            "control", "sdk-not-ready", False)  # fmt: skip
        assert (second.variant, second.reason) == (None, "sdk-not-ready")
        assert client.stats()["sdk-not-ready"] == 2
        assert client.predict("e", "u1", default=0.5).outputs == 0.5
        client.track("u1", "m", 1.0)
        assert client.stats()["events_queued"] == 1
    # close() gave up on the unreachable server within its timeout, counting nothing as sent.


def test_circuit_breaker_opens_then_tries_once() -> None:
    now = [0.0]
    breaker = CircuitBreaker(2, 10.0, clock=lambda: now[0])
    breaker.failure()
    assert breaker.allow()
    breaker.failure()
    assert breaker.is_open and not breaker.allow()
    now[0] = 10.5
    assert breaker.allow() and not breaker.allow()  # one trial at a time
    breaker.failure()
    assert not breaker.allow()
    now[0] = 21.0
    assert breaker.allow()
    breaker.success()
    assert not breaker.is_open and breaker.allow()
    breaker.trip()
    assert not breaker.allow()


def test_queue_full_policies_are_counted() -> None:
    oldest, newest = BatchQueue(2, "drop-oldest"), BatchQueue(2, "drop-newest")
    for item in (1, 2, 3):
        oldest.put(item)
        newest.put(item)
    assert oldest.take(5) == [2, 3] and newest.take(5) == [1, 2]
    assert oldest.dropped == newest.dropped == 1
    with pytest.raises(ValueError, match="queue_full"):
        BatchQueue(2, "block")  # type: ignore[arg-type]


def test_the_package_imports_only_the_standard_library_and_httpx() -> None:
    import ast
    import sys

    package = Path(__file__).parents[1] / "abx_client"
    imported = set()
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add(node.module.split(".")[0])
    outside = imported - set(sys.stdlib_module_names) - {"__future__", "abx_client"}
    assert outside == {"httpx"}
