"""Holdouts in the assignment core: who is held out, what they get, what is recorded."""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from service.assignment.core import (
    Reason,
    ServingOverride,
    assign,
    compile_experiment,
    compile_holdout,
)
from service.assignment.hashing import fraction_threshold, hash_prefix, unit_fraction
from service.assignment.registry import Registry, shrunk_holdouts
from service.experiments.holdouts import Holdout
from service.experiments.schema import Experiment
from tests.experiment_files import minimal_experiment


def holdout(**overrides: Any) -> Holdout:
    data: dict[str, Any] = {
        "key": "launches",
        "description": "d",
        "owner": "o",
        "share": 0.05,
        "scope": "all",
        "start": "2026-01-01",
        "metrics": [{"name": "conversion", "type": "binary"}],
    }
    data.update(overrides)
    return Holdout.model_validate(data)


def no_store() -> str | None:
    return None


def spec_fraction(*parts: str) -> float:
    """docs/hashing.md in plain hashlib, independent of service.assignment.hashing."""
    digest = hashlib.sha256("|".join(("abx1", *parts)).encode()).digest()
    return (int.from_bytes(digest[:8], "big") >> 11) / 2**53


def test_members_are_those_the_holdout_hash_puts_under_the_share() -> None:
    h = holdout(share=0.05)
    compiled = compile_experiment(
        Experiment.model_validate(minimal_experiment()), holdout=compile_holdout(h)
    )
    held = 0
    for i in range(4000):
        unit = f"user-{i}"
        result = assign(compiled, unit, {}, no_store)
        member = spec_fraction("holdout", "launches", "launches.v1", unit) < 0.05
        assert (result.reason == Reason.HOLDOUT) == member
        assert result.holdout is not None
        assert result.holdout.group == ("holdout" if member else "rest")
        if member:
            held += 1
            assert result.variant == "a" and not result.exposed
    # 5% of 4000 units: a two-sided binomial test, not a tuned count.
    assert stats.binomtest(held, 4000, 0.05).pvalue > 0.001


def test_membership_is_the_same_in_every_experiment_in_scope_and_independent_of_variants() -> None:
    h = compile_holdout(holdout(share=0.1))
    first = compile_experiment(Experiment.model_validate(minimal_experiment("one")), holdout=h)
    second = compile_experiment(Experiment.model_validate(minimal_experiment("two")), holdout=h)
    plain = compile_experiment(Experiment.model_validate(minimal_experiment("one")))
    table = np.zeros((2, 2))
    for i in range(20_000):
        unit = f"u{i}"
        a, b = assign(first, unit, {}, no_store), assign(second, unit, {}, no_store)
        assert (a.reason == Reason.HOLDOUT) == (b.reason == Reason.HOLDOUT)
        # The variant a unit would get without the holdout is unrelated to membership.
        without = assign(plain, unit, {}, no_store)
        table[int(a.reason == Reason.HOLDOUT), int(without.variant == "b")] += 1
        if a.reason != Reason.HOLDOUT:
            assert (a.variant, a.reason) == (without.variant, without.reason)
    assert stats.chi2_contingency(table).pvalue > 0.001


def test_raising_the_share_only_adds_units() -> None:
    small, large = compile_holdout(holdout(share=0.02)), compile_holdout(holdout(share=0.06))
    experiment = Experiment.model_validate(minimal_experiment())
    before = compile_experiment(experiment, holdout=small)
    after = compile_experiment(experiment, holdout=large)
    for i in range(5000):
        unit = f"n{i}"
        if assign(before, unit, {}, no_store).reason == Reason.HOLDOUT:
            assert assign(after, unit, {}, no_store).reason == Reason.HOLDOUT


def test_forced_targeting_and_layers_come_first_and_promotion_does_not_reach_members() -> None:
    h = compile_holdout(holdout(share=0.1))
    members = [
        f"m{i}"
        for i in range(2000)
        if spec_fraction("holdout", "launches", "launches.v1", f"m{i}") < 0.1
    ]
    forced = {members[0]: "b"}
    experiment = Experiment.model_validate(
        minimal_experiment(
            forced=forced,
            targeting={"attribute": "country", "op": "eq", "value": "US"},
        )
    )
    promoted = compile_experiment(experiment, serving=ServingOverride(winner="b"), holdout=h)
    forced_result = assign(promoted, members[0], {"country": "US"}, no_store)
    assert (forced_result.variant, forced_result.reason, forced_result.holdout) == (
        "b",
        Reason.FORCED,
        None,
    )
    targeted_out = assign(promoted, members[1], {"country": "FR"}, no_store)
    assert (targeted_out.reason, targeted_out.holdout) == (Reason.TARGETED_OUT, None)
    for unit in members[1:50]:
        result = assign(promoted, unit, {"country": "US"}, no_store)
        assert (result.variant, result.reason) == ("a", Reason.HOLDOUT)
    rest = next(
        f"r{i}"
        for i in range(100)
        if spec_fraction("holdout", "launches", "launches.v1", f"r{i}") >= 0.1
    )
    result = assign(promoted, rest, {"country": "US"}, no_store)
    assert (result.variant, result.reason, result.holdout.group) == ("b", Reason.PROMOTED, "rest")  # type: ignore[union-attr]


def test_the_registry_puts_only_experiments_in_scope_under_the_holdout(tmp_path: Any) -> None:
    from service.experiments.validation import load_experiments
    from tests.experiment_files import write_experiment

    write_experiment(tmp_path, minimal_experiment("inside"))
    write_experiment(tmp_path, minimal_experiment("outside"))
    write_experiment(
        tmp_path / "holdouts",
        {**holdout_yaml(), "scope": {"experiments": ["inside"]}},
    )
    loaded = load_experiments([tmp_path])
    assert loaded.ok, loaded.problems
    registry = Registry(loaded)
    inside, outside = registry.get("inside"), registry.get("outside")
    assert inside is not None and outside is not None
    assert inside.holdout is not None and inside.holdout.key == "launches"
    assert outside.holdout is None
    assert registry.holdout_experiments["launches"].variant_keys == ("holdout", "rest")


def holdout_yaml() -> dict[str, Any]:
    return {
        "key": "launches",
        "description": "d",
        "owner": "o",
        "share": 0.05,
        "scope": "all",
        "start": "2026-01-01",
        "metrics": [{"name": "conversion", "type": "binary"}],
    }


def test_a_smaller_share_under_the_same_seed_is_refused() -> None:
    old = {"launches": holdout(share=0.05)}
    assert shrunk_holdouts(old, {"launches": holdout(share=0.08)}) == []
    assert shrunk_holdouts(old, {"launches": holdout(share=0.02, version=2)}) == []
    (message,) = shrunk_holdouts(old, {"launches": holdout(share=0.02)})
    assert "launches" in message and "version" in message


@given(
    st.text(max_size=40),
    st.one_of(
        st.floats(0.0, 0.1),
        st.sampled_from([0.0, 0.03, 0.05, 0.1, 2**-53, 0.1 - 2**-55]),
    ),
)
def test_the_threshold_comparison_is_exactly_fraction_below_share(unit: str, share: float) -> None:
    prefix = hash_prefix("holdout", "launches", "launches.v1")
    digest = hashlib.sha256(prefix + unit.encode()).digest()
    assert (digest < fraction_threshold(share)) == (unit_fraction(prefix, unit) < share)


def test_the_threshold_is_exact_at_the_fraction_grid() -> None:
    """A digest whose fraction equals the share is not below it; one step less is."""
    share = 0.03
    top53 = math.ceil(share * 2**53)
    threshold = fraction_threshold(share)
    at = (top53 << 11).to_bytes(8, "big") + bytes(24)
    below = ((top53 - 1) << 11 | 0x7FF).to_bytes(8, "big") + b"\xff" * 24
    assert not at < threshold and below < threshold
    assert (top53 - 1) / 2**53 < share <= top53 / 2**53


def test_hot_reload_applies_a_larger_share_and_refuses_a_smaller_one(tmp_path: Any) -> None:
    from service.experiments.reload import HotReloader
    from service.experiments.validation import load_experiments
    from tests.experiment_files import write_experiment

    write_experiment(tmp_path, minimal_experiment("exp"))
    path = write_experiment(tmp_path / "holdouts", holdout_yaml())
    registry = Registry(load_experiments([tmp_path]))
    reloader = HotReloader(tmp_path, tmp_path / "models", registry.replace, interval=0)

    def share_of_exp() -> float:
        compiled = registry.get("exp")
        assert compiled is not None and compiled.holdout is not None
        return compiled.holdout.share

    path.write_text(path.read_text().replace("share: 0.05", "share: 0.08"))
    assert reloader.check() is True
    assert share_of_exp() == 0.08 and registry.holdouts["launches"].share == 0.08
    path.write_text(path.read_text().replace("share: 0.08", "share: 0.02"))
    assert reloader.check() is False  # refused: the old configuration keeps serving
    assert share_of_exp() == 0.08
    path.write_text(path.read_text().replace("share: 0.02", "share: 0.5"))
    assert reloader.check() is False  # invalid: share above 0.1
    path.write_text(path.read_text().replace("share: 0.5", "share: 0.02\nversion: 2"))
    assert reloader.check() is True  # a new version is a new holdout: any share
    assert share_of_exp() == 0.02


def test_the_largest_share_is_kept_and_a_smaller_one_refused_across_restarts(db: str) -> None:
    import psycopg

    from service.assignment.holdouts import record_shares

    with psycopg.connect(db) as conn:
        assert record_shares(conn, {"launches": holdout(share=0.05)}) == []
        assert record_shares(conn, {"launches": holdout(share=0.08)}) == []
        (refusal,) = record_shares(conn, {"launches": holdout(share=0.02)})
        assert "0.08" in refusal and "version" in refusal
        assert record_shares(conn, {"launches": holdout(share=0.02, version=2)}) == []
        rows = conn.execute(
            "SELECT seed, share FROM holdout_shares WHERE holdout_key = 'launches' ORDER BY seed"
        ).fetchall()
    assert rows == [("launches.v1", 0.08), ("launches.v2", 0.02)]


def test_abx_serve_refuses_to_start_with_a_smaller_share(db: str, tmp_path: Any) -> None:
    import os

    import psycopg
    from click.testing import CliRunner

    from service.cli.main import main
    from tests.experiment_files import write_experiment

    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("INSERT INTO holdout_shares VALUES ('launches', 'launches.v1', 0.08, now())")
    write_experiment(tmp_path, minimal_experiment("exp"))
    write_experiment(tmp_path / "holdouts", holdout_yaml())  # share 0.05
    env = {**os.environ, "ABX_DATABASE_URL": db, "ABX_EXPERIMENTS": str(tmp_path),
           "ABX_DATA_DIR": str(tmp_path / "data")}  # fmt: skip
    result = CliRunner().invoke(main, ["serve", "--no-migrate"], env=env)
    assert result.exit_code == 1, result.output
    assert "share 0.05 is below the 0.08" in result.output
