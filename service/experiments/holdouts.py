"""Shape of one holdout file (``experiments/holdouts/*.yaml``; experiments/README.md documents it).

A holdout keeps a small, sticky share of units on every in-scope experiment's control, so
that the launches together can be measured against them for months. Membership is one hash
of its own (purpose ``holdout``, docs/hashing.md): ``fraction < share``, so raising the share
only adds units. For the events, the rollup and the analysis a holdout is an experiment of two
groups (``as_experiment``): ``holdout`` (the baseline) and ``rest``, with the holdout's
metrics, so outcomes are posted, attributed and summed exactly as an experiment's are.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Discriminator, Field, Tag

from service.experiments.rules import RuleProblem
from service.experiments.schema import (
    MODEL_HEALTH_METRICS,
    Duration,
    Experiment,
    Key,
    Metric,
    Metrics,
    Policy,
    StrictModel,
    Variant,
    duration_hours,
)

MAX_SHARE = 0.1
HOLDOUT_GROUP = "holdout"
REST_GROUP = "rest"


class Scope(StrictModel):
    """The experiments a holdout covers: those named, and every experiment of the layers named."""

    experiments: list[Key] = Field(default_factory=list)
    layers: list[Key] = Field(default_factory=list)


def _scope_kind(value: Any) -> str | None:
    if value == "all":
        return "<all>"
    return "<scope>" if isinstance(value, dict | Scope) else None


ScopeSpec = Annotated[
    Annotated[Literal["all"], Tag("<all>")] | Annotated[Scope, Tag("<scope>")],
    Discriminator(
        _scope_kind,
        custom_error_type="holdout_scope",
        custom_error_message="`all`, or a mapping of `experiments` and/or `layers` lists",
    ),
]


def _iso_date(value: Any) -> Any:
    """YAML reads ``2026-01-01`` as a date; a quoted one must still be an ISO date."""
    if isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError:
            raise ValueError(f"an ISO date like 2026-01-01, got {value!r}") from None
    return value


class Holdout(StrictModel):
    key: Key
    description: str = Field(min_length=1)
    owner: str = Field(min_length=1)
    share: Annotated[float, Field(gt=0.0, le=MAX_SHARE)]
    """Share of units held out, at most 0.1; raising it only adds units (nested)."""
    salt: Key | None = None
    version: Annotated[int, Field(ge=1)] = 1
    scope: ScopeSpec
    metrics: list[Metric] = Field(min_length=1)
    start: Annotated[date, BeforeValidator(_iso_date)]
    """When the holdout began (for people and the dashboard; membership does not depend on it)."""
    outcome_window: Duration = "52w"
    """How long after a unit's first holdout exposure its outcomes count (at most a year)."""
    alpha: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.05

    @property
    def seed(self) -> str:
        """Membership seed: changing salt or version re-randomizes who is held out."""
        return f"{self.salt or self.key}.v{self.version}"

    @property
    def weights(self) -> dict[str, float]:
        """The split the holdout hash gives among the units that reach its check."""
        return {HOLDOUT_GROUP: self.share, REST_GROUP: 1.0 - self.share}

    def covers(self, experiment: Experiment) -> bool:
        """Whether ``experiment`` is in this holdout's scope."""
        if self.scope == "all":
            return True
        assert isinstance(self.scope, Scope)
        if experiment.key in self.scope.experiments:
            return True
        return experiment.layer is not None and experiment.layer.name in self.scope.layers

    def as_experiment(self) -> Experiment:
        """The holdout as the events pipeline and the analysis see it: two groups, its metrics.

        ``holdout`` is listed first and is the control, so every comparison reads as the
        effect of everything launched (``rest``) against units that got none of it. The
        policy is read by the analysis only (no decision worker acts on a holdout): an
        always-valid confidence sequence, no minimum runtime, no horizon.
        """
        return Experiment(
            key=self.key,
            description=f"Holdout of {self.share:.1%} of units since {self.start}: "
            f"{self.description}",
            owner=self.owner,
            status="running",
            salt=self.salt,
            version=self.version,
            control=HOLDOUT_GROUP,
            variants=[
                Variant(key=HOLDOUT_GROUP, weight=self.share),
                Variant(key=REST_GROUP, weight=1.0 - self.share),
            ],
            metrics=Metrics(primary=self.metrics[0], secondary=list(self.metrics[1:])),
            outcome_window_hours=duration_hours(self.outcome_window),
            policy=Policy(
                method="confidence_sequence",
                alpha=self.alpha,
                min_units=0,
                min_runtime_hours=0.0,
                horizon_days=None,
                auto_promote=False,
            ),
        )


def check_holdout(holdout: Holdout) -> list[RuleProblem]:
    """Cross-field problems of one holdout: unique metric names, a scope that names something."""
    problems: list[RuleProblem] = []
    seen: set[str] = set()
    for index, metric in enumerate(holdout.metrics):
        if metric.name in seen:
            problems.append(
                RuleProblem(("metrics", index, "name"), f"duplicate metric {metric.name!r}")
            )
        seen.add(metric.name)
        if metric.name in MODEL_HEALTH_METRICS:
            problems.append(
                RuleProblem(
                    ("metrics", index, "name"),
                    f"{metric.name!r} is read from predictions, not events: a holdout "
                    "measures outcome metrics only",
                )
            )
    if isinstance(holdout.scope, Scope) and not (holdout.scope.experiments or holdout.scope.layers):
        problems.append(
            RuleProblem(("scope",), "name experiments or layers, or write `scope: all`")
        )
    return problems
