"""``abx plan``: sample sizes from analysis.planning, traffic and baseline from observed data."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import psycopg
import pytest
from click.testing import CliRunner
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import proportion_effectsize

from service.cli.main import main
from service.decisions.plan import PlanInputs, make_plan, observed_inputs
from service.experiments.validation import load_experiments
from tests.conftest import EXAMPLES


def experiment(key: str):  # type: ignore[no-untyped-def]
    return next(
        i.experiment for i in load_experiments([EXAMPLES]).experiments if i.experiment.key == key
    )


def test_two_arm_binary_plan_matches_statsmodels() -> None:
    plan = make_plan(
        experiment("search_embeddings"), PlanInputs(0.02, baseline=0.2, daily_units=1000), {}
    )
    effect = proportion_effectsize(0.22, 0.2)
    # Cohen's h uses the arcsine transform, so only the order of magnitude is shared.
    reference = NormalIndPower().solve_power(effect, alpha=0.05, power=0.8, ratio=1.0)
    assert plan.n_control == plan.n_per_treatment
    assert plan.n_control == pytest.approx(reference, rel=0.03)
    assert plan.days == -(-plan.n_total // 1000)


def test_three_arms_split_alpha_and_sequential_designs_inflate() -> None:
    fixed = make_plan(experiment("checkout_ranker"), PlanInputs(0.01, baseline=0.1), {})
    assert fixed.alpha_per_comparison == pytest.approx(0.025)
    assert fixed.days is None
    two_arm = make_plan(experiment("search_embeddings"), PlanInputs(0.01, baseline=0.1), {})
    assert fixed.n_control > two_arm.n_control  # the split alpha costs units
    obf = make_plan(
        experiment("search_embeddings"), PlanInputs(0.01, baseline=0.1, design="obf", looks=5), {}
    )
    # gsDesign(k=5, test.type=2, sfu="OF", beta=0.2): n.I[5] = 1.028 x the fixed design.
    assert obf.inflation_factor == pytest.approx(1.028, abs=6e-4)
    assert obf.n_control == pytest.approx(two_arm.n_control * obf.inflation_factor, abs=1)


def test_missing_inputs_are_explained() -> None:
    with pytest.raises(ValueError, match="needs --baseline"):
        make_plan(experiment("checkout_ranker"), PlanInputs(0.01), {})
    with pytest.raises(ValueError, match="unknown design"):
        make_plan(experiment("checkout_ranker"), PlanInputs(0.01, baseline=0.1, design="magic"), {})


def test_observed_traffic_and_baseline(db: str) -> None:
    exp = experiment("search_embeddings")
    today = datetime.now(UTC).date()
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO exposure_counts VALUES (%s, %s, 'baseline', %s, 500), (%s, %s, 'embeddings_v2', %s, 500)",
            (exp.key, exp.seed, today, exp.key, exp.seed, today),
        )
        conn.execute(
            "INSERT INTO metric_stats (experiment_key, seed, variant_key, metric, bucket, sum_y, sum_y2)"
            " VALUES (%s, %s, 'baseline', 'search_click', %s, 100, 100)",
            (exp.key, exp.seed, today),
        )
        observed = observed_inputs(conn, exp)
    assert observed["daily_units"] == 1000
    assert observed["baseline"] == pytest.approx(0.2)
    plan = make_plan(exp, PlanInputs(0.02), observed)
    assert plan.sources == {"baseline": "observed", "daily_units": "observed"}


def test_cli(runner: CliRunner, db: str) -> None:
    env = {"ABX_DATABASE_URL": db, "ABX_EXPERIMENTS": str(EXAMPLES)}
    ok = runner.invoke(
        main,
        [
            "plan",
            "checkout_ranker",
            "--mde",
            "0.01",
            "--baseline",
            "0.1",
            "--daily-units",
            "20000",
            "--design",
            "obf",
        ],
        env=env,
    )
    assert ok.exit_code == 0, ok.output
    assert (
        "units: control" in ok.output and "expected duration" in ok.output and "day(s)" in ok.output
    )
    missing = runner.invoke(main, ["plan", "checkout_ranker", "--mde", "0.01"], env=env)
    assert missing.exit_code == 1 and "needs --baseline" in missing.output
    unknown = runner.invoke(main, ["plan", "ghost", "--mde", "0.01"], env=env)
    assert unknown.exit_code == 1 and "no valid experiment 'ghost'" in unknown.output


def test_always_valid_designs_need_the_mixture_inflation_factor() -> None:
    from analysis.planning import final_look_mixture_inflation_factor, mixture_inflation_factor

    # The factor asks for the power at any of the looks (analysis tests check it against
    # simulation); it is below the closed form that asks the final look alone.
    expected = mixture_inflation_factor(0.05, 0.8)
    assert 1.0 < expected < final_look_mixture_inflation_factor(0.05, 0.8)
    fixed = make_plan(experiment("search_embeddings"), PlanInputs(0.01, baseline=0.1), {})
    for design in ("msprt", "confidence_sequence"):
        plan = make_plan(
            experiment("search_embeddings"), PlanInputs(0.01, baseline=0.1, design=design), {}
        )
        assert plan.inflation_factor == pytest.approx(expected, rel=1e-9)
        assert plan.n_control == pytest.approx(fixed.n_control * expected, abs=1)


def test_mixture_factor_of_several_treatments_follows_each_methods_tuning() -> None:
    """Three arms: the confidence sequence is tuned and tested at alpha / 2; the mSPRT is
    tuned at the family's alpha (its design's comparison level) and Holm's first step
    rejects at alpha / 2, so its mixture is a little wider than the plan's level alone says."""
    from analysis.mixture_tuning import optimal_variance_ratio
    from analysis.planning import mixture_inflation_factor
    from service.decisions.simulation import experiment_for

    inputs = PlanInputs(0.1, relative=True, baseline=0.1, design="policy")
    factors = {
        method: make_plan(experiment_for(3, method), inputs, {})
        for method in ("msprt", "confidence_sequence")
    }
    assert factors["confidence_sequence"].inflation_factor == pytest.approx(
        mixture_inflation_factor(0.025, 0.8), rel=1e-9
    )
    assert factors["msprt"].inflation_factor == pytest.approx(
        mixture_inflation_factor(0.025, 0.8, variance_ratio=optimal_variance_ratio(0.05)),
        rel=1e-9,
    )
    assert factors["msprt"].inflation_factor != factors["confidence_sequence"].inflation_factor
    assert factors["msprt"].alpha_per_comparison == pytest.approx(0.025)


def test_the_policy_design_is_the_experiments_own_method() -> None:
    exp = experiment("search_embeddings")
    own = make_plan(exp, PlanInputs(0.01, baseline=0.1, design="policy"), {})
    named = make_plan(exp, PlanInputs(0.01, baseline=0.1, design=exp.policy.method), {})
    assert own == named and own.inflation_factor > 1.0


def test_observed_ratio_baseline_is_the_delta_method_unit(db: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from service.events.ingest import ingest_rows
    from service.events.ratios import configured_pairs_from
    from service.events.rollup import roll_up_once, windows_from
    from tests.experiment_files import minimal_experiment, write_experiment

    metrics = {
        "primary": {"name": "rps", "type": "ratio", "numerator": "revenue", "denominator": "sessions"},
        "secondary": [{"name": "revenue", "type": "continuous"}, {"name": "sessions", "type": "count"}],
    }  # fmt: skip
    path = write_experiment(tmp_path, minimal_experiment("rps", metrics=metrics))
    exp = load_experiments([path]).experiments[0].experiment
    revenue, sessions = [5.0, 0.0, 12.0, 3.0, 8.0], [2.0, 1.0, 4.0, 1.0, 3.0]
    exposed = datetime.now(UTC) - timedelta(hours=2)
    with psycopg.connect(db, autocommit=True) as conn:
        for i in range(6):  # 6 exposed units: the sixth has no outcomes (counts as 0 / 0)
            conn.execute(
                "INSERT INTO exposures (experiment_key, seed, unit_id, variant_key,"
                " first_exposed_at) VALUES (%s, %s, %s, 'a', %s)",
                (exp.key, exp.seed, f"u{i}", exposed),
            )
        events = [
            (exp.key, exp.seed, f"{metric}-{i}", f"u{i}", metric, "sum", value,
             exposed + timedelta(minutes=5), exposed, None)
            for metric, values in (("revenue", revenue), ("sessions", sessions))
            for i, value in enumerate(values)
        ]  # fmt: skip
        with conn.transaction():
            ingest_rows(conn, events)
        assert observed_inputs(conn, exp).get("baseline") is None  # no cross products kept yet
        roll_up_once(conn, windows_from({exp.key: exp}), timedelta(hours=1),
                     ratio_pairs=configured_pairs_from({exp.key: exp}))  # fmt: skip
        observed = observed_inputs(conn, exp)
    x, y = np.array([*revenue, 0.0]), np.array([*sessions, 0.0])
    ratio = x.sum() / y.sum()
    linearised = (x - ratio * y) / y.mean()  # Deng et al. (2018): the unit's influence
    assert observed["baseline"] == pytest.approx(ratio)
    assert observed["standard_deviation"] == pytest.approx(linearised.std())
    plan = make_plan(exp, PlanInputs(0.1), observed)
    assert plan.sources["standard_deviation"] == "observed"


def continuous(method: str = "msprt", arms: int = 2, metric: str = "continuous"):  # type: ignore[no-untyped-def]
    from service.decisions.simulation import experiment_for

    return experiment_for(arms, method, metric)


def fixed_n(sd_a: float, sd_b: float, delta: float, alpha: float = 0.05) -> float:
    """(z_{1-alpha/2} + z_0.8)^2 (s_a^2 + s_b^2) / delta^2: a z-test with unequal variances."""
    from scipy.stats import norm

    z = norm.ppf(1 - alpha / 2) + norm.ppf(0.8)
    return float(z**2 * (sd_a**2 + sd_b**2) / delta**2)


@pytest.mark.parametrize("metric", ["continuous", "ratio", "count"])
def test_a_multiplicative_lift_scales_the_treatments_deviation(metric: str) -> None:
    exp = continuous("msprt", 2, metric)
    relative = make_plan(exp, PlanInputs(0.1, relative=True, design="fixed", baseline=20.0,
                                         standard_deviation=26.0), {})  # fmt: skip
    assert relative.treatment_standard_deviation == pytest.approx(28.6)
    assert relative.n_control == math.ceil(fixed_n(26.0, 28.6, 2.0))
    # The same lift given in the metric's units, with the baseline observed: the same plan.
    absolute = make_plan(exp, PlanInputs(2.0, design="fixed", standard_deviation=26.0),
                         {"baseline": 20.0})  # fmt: skip
    assert absolute.n_control == relative.n_control
    assert absolute.sources["baseline"] == "observed"
    additive = make_plan(exp, PlanInputs(2.0, design="fixed", standard_deviation=26.0,
                                         effect="additive"), {"baseline": 20.0})  # fmt: skip
    assert additive.treatment_standard_deviation == 26.0
    assert additive.n_control == math.ceil(fixed_n(26.0, 26.0, 2.0))
    # No baseline: an absolute lift's relative size is unknown; equal deviations, said so.
    unknown = make_plan(exp, PlanInputs(2.0, design="fixed", standard_deviation=26.0), {})
    assert unknown.n_control == additive.n_control
    assert "no baseline" in unknown.sources["treatment_standard_deviation"]


@pytest.mark.parametrize(
    ("method", "arms"),
    [("msprt", 2), ("confidence_sequence", 3), ("group_sequential", 2), ("group_sequential", 5)],
)
def test_every_method_inflates_the_unequal_variance_size(method: str, arms: int) -> None:
    """The inflation factors are ratios of information, which the unequal deviations leave
    alone: each method's size is its factor times the unequal-variance fixed size."""
    exp = continuous(method, arms, "ratio")
    inputs = PlanInputs(0.125, relative=True, design="policy", baseline=1.0,
                        standard_deviation=3.16)  # fmt: skip
    plan = make_plan(exp, inputs, {})
    fixed = fixed_n(3.16, 3.16 * 1.125, 0.125, alpha=0.05 / (arms - 1))
    assert plan.inflation_factor > 1.0
    assert plan.n_control == pytest.approx(fixed * plan.inflation_factor, abs=1)
    equal = make_plan(exp, replace(inputs, effect="additive"), {})
    assert plan.n_control / equal.n_control == pytest.approx((1 + 1.125**2) / 2, rel=1e-3)


def test_effect_model_errors() -> None:
    exp = continuous()
    with pytest.raises(ValueError, match="unknown effect 'log'"):
        make_plan(exp, PlanInputs(0.1, relative=True, baseline=1.0, standard_deviation=1.0,
                                  effect="log"), {})  # fmt: skip
    with pytest.raises(ValueError, match=r"lift above -100 %, got -1\.5"):
        make_plan(exp, PlanInputs(-3.0, baseline=2.0, standard_deviation=1.0), {})


def test_cli_effect_option(runner: CliRunner, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.experiment_files import minimal_experiment, write_experiment

    metrics = {"primary": {"name": "revenue", "type": "continuous"}}
    path = write_experiment(tmp_path, minimal_experiment("rev", metrics=metrics))
    env = {"ABX_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none", "ABX_EXPERIMENTS": str(path)}
    common = ["plan", "rev", "--mde", "0.1", "--relative", "--baseline", "20", "--sd", "26",
              "--daily-units", "1000", "--design", "fixed"]  # fmt: skip
    scaled = runner.invoke(main, common, env=env)
    assert scaled.exit_code == 0, scaled.output
    assert "treatment_standard_deviation 28.6 (control x (1 + lift 0.1), multiplicative)" in (
        scaled.output
    )
    equal = runner.invoke(main, [*common, "--effect", "additive"], env=env)
    assert equal.exit_code == 0 and "28.6" not in equal.output
    bad = runner.invoke(main, [*common, "--effect", "log"], env=env)
    assert bad.exit_code == 2 and "'log' is not one of" in bad.output


def bandit_experiment(arms: int, **bandit: float):  # type: ignore[no-untyped-def]
    from service.decisions.simulation import experiment_for

    settings = {"control_floor": 0.2, "arm_floor": 0.05, "min_hours_between_moves": 1.0} | bandit
    return experiment_for(arms, "bandit", "continuous", planned_units=20_000, horizon_days=1,
                          bandit=settings)  # fmt: skip


def test_a_bandit_is_sized_for_thompson_samplings_allocation() -> None:
    """Two arms: the control drifts towards its floor, so the comparison needs more units in
    all than at the YAML's weights; the plan says what it assumed."""
    inputs = PlanInputs(0.1, relative=True, design="policy", baseline=1.0, standard_deviation=3.0,
                        daily_units=10_000)  # fmt: skip
    plan = make_plan(bandit_experiment(2), inputs, {})
    assert plan.bandit is not None and plan.bandit.periods == 24  # hourly moves over a day
    assert plan.n_total == plan.bandit.total_units > 1.2 * plan.bandit.fixed_total_units
    assert plan.n_control < plan.n_per_treatment and plan.bandit.share_by_arm[0] < 0.35
    assert plan.days == -(-plan.n_total // 10_000)
    assert "Thompson sampling's allocation with t1 better by the MDE" in plan.bandit_assumption
    assert plan.alpha_per_comparison == 0.05 and plan.inflation_factor > 1.0


def test_a_bandit_whose_floors_fix_the_weights_is_planned_as_its_confidence_sequence() -> None:
    """Floors of 0.5 leave Thompson sampling nothing to move: the bandit's plan is the
    confidence sequence's at those weights (the same closed form, times the same factor)."""
    inputs = PlanInputs(0.1, relative=True, design="policy", baseline=1.0, standard_deviation=3.0)
    fixed = bandit_experiment(2, control_floor=0.5, arm_floor=0.5)
    plan = make_plan(fixed, inputs, {})
    sequence = make_plan(fixed, replace(inputs, design="confidence_sequence"), {})
    assert plan.bandit is not None and sequence.bandit is None
    assert plan.n_total == pytest.approx(sequence.n_total, rel=2e-3)
    assert plan.n_total == pytest.approx(plan.bandit.fixed_total_units, abs=1)


def test_a_bandits_power_check_counts_units_in_all() -> None:
    from service.decisions.plan import planned_bandit_units, underpowered

    base = bandit_experiment(2)
    policy = base.policy.model_copy(update={"expected_effect": 0.05, "standard_deviation": 3.0,
                                            "baseline": 1.0})  # fmt: skip
    experiment = base.model_copy(update={"policy": policy})
    warning = underpowered(experiment)
    assert warning is not None and "units in all" in warning and "40000" in warning
    assert planned_bandit_units(experiment) == 40_000
    roomy = experiment.model_copy(
        update={"policy": policy.model_copy(update={"planned_units": 200_000})}
    )
    assert underpowered(roomy) is None


def test_a_bandits_effect_must_point_the_metrics_way() -> None:
    with pytest.raises(ValueError, match=r"direction of primary \(increase\), got -0\.1"):
        make_plan(bandit_experiment(2), PlanInputs(-0.1, relative=True, design="policy",
                                                   baseline=1.0, standard_deviation=3.0), {})  # fmt: skip


def test_cli_plans_a_bandit(runner: CliRunner) -> None:
    env = {"ABX_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
           "ABX_EXPERIMENTS": str(EXAMPLES)}  # fmt: skip
    common = ["plan", "offer_banner", "--baseline", "0.1", "--daily-units", "60000"]
    ok = runner.invoke(main, [*common, "--mde", "0.12", "--relative"], env=env)
    assert ok.exit_code == 0, ok.output
    assert "design policy (bandit)" in ok.output
    assert "assumed              Thompson sampling's allocation with social better" in ok.output
    assert "the other treatments equal to the control" in ok.output
    assert "units (expected under that allocation): control" in ok.output
    assert "expected duration    1 day(s)" in ok.output
    wrong = runner.invoke(main, [*common, "--mde", "-0.01"], env=env)
    assert wrong.exit_code == 1 and "give it in the direction of banner_click" in wrong.output
