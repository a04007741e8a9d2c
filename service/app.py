"""Flask application factory: wires settings, storage, the registry and the blueprints."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from dashboards import pages as dashboard_pages
from service.access.directory import KeyDirectory
from service.access.sessions import SessionStore
from service.api import analysis as analysis_routes
from service.api import (
    assignments,
    auth,
    experiments,
    health,
    instrumentation,
    keys,
    openapi,
    predictions,
    problems,
    sdk,
)
from service.api import decisions as decision_routes
from service.api import events as events_routes
from service.api import holdouts as holdout_routes
from service.api import jobs as job_routes
from service.api import lineage as lineage_routes
from service.api import shadows as shadow_routes
from service.assignment.registry import Registry
from service.assignment.service import AssignmentService
from service.assignment.snapshot import SnapshotCache
from service.assignment.sticky import (
    ASSIGNMENTS,
    EXPOSURE_ATTRIBUTES,
    EXPOSURES,
    StickyStore,
)
from service.assignment.sync import StateSync
from service.background import PeriodicThread
from service.decisions.webhooks import check_secrets
from service.events.ingest import EventIngestor
from service.events.periods import configured_bandits_from, settle_guard
from service.events.ratios import configured_pairs_from
from service.events.rollup import RollupScheduler, metric_windows_from, windows_from
from service.events.segments import segment_specs_from
from service.experiments.model_registry import count_resolutions, model_registry
from service.experiments.validation import load_experiments
from service.inference.records import PREDICTIONS, REGISTRY_VERSIONS
from service.inference.runtime import ModelRuntime, build_model_runtime
from service.inference.sketches import SKETCHES
from service.observability.logging import flush_access_log
from service.settings import Settings
from service.storage.database import Database
from service.storage.embedded import database_url
from service.storage.spool import Spool
from service.storage.writer import BatchWriter

log = logging.getLogger(__name__)


class ConfigurationError(RuntimeError):
    """The experiment files or the settings are unusable: the service refuses to start."""


@dataclass
class Runtime:
    """The collaborators of one process, closed together at shutdown."""

    settings: Settings
    registry: Registry
    database: Database
    writer: BatchWriter
    sticky: StickyStore
    state: StateSync
    assignments: AssignmentService
    events: EventIngestor
    rollup: RollupScheduler
    models: ModelRuntime
    keys: KeyDirectory | None
    sessions: SessionStore
    sampler: PeriodicThread = field(init=False)
    """Copies this process's gauges (buffers, spools, pending allocations) into the metrics."""

    def __post_init__(self) -> None:
        self.sampler = PeriodicThread(
            "abx-metrics-sampler", self.settings.metrics_sample_seconds, self.publish_metrics
        )

    def publish_metrics(self) -> None:
        instrumentation.publish_metrics()
        self.registry.publish_metrics()
        self.writer.publish_metrics()
        self.events.publish_metrics()

    def close(self) -> None:
        self.sampler.close()
        flush_access_log()
        if self.keys is not None:
            self.keys.close()
        self.models.close()
        self.events.close()
        self.rollup.close()
        self.writer.close()
        self.state.close()
        self.database.close()


def _load_registry(settings: Settings) -> Registry:
    models = model_registry(settings.mlflow_tracking_uri, settings.models)
    count_resolutions(models)
    loaded = load_experiments([settings.experiments], settings.models, models)
    if not loaded.ok:
        raise ConfigurationError(
            "invalid experiment files:\n" + "\n".join(str(p) for p in loaded.problems)
        )
    return Registry(loaded)


def build_runtime(settings: Settings) -> Runtime:
    if settings.api_key:
        raise ConfigurationError(
            "ABX_API_KEY is no longer read: keys live in PostgreSQL, each with its own scopes."
            " Create them with `abx keys create --name NAME --scopes SCOPES` and unset"
            " ABX_API_KEY (README: Access)."
        )
    registry = _load_registry(settings)
    try:
        check_secrets(
            settings.webhook_secrets, any(e.policy.webhooks for e in registry.experiments.values())
        )
    except ValueError as error:
        raise ConfigurationError(str(error)) from error
    database = Database(database_url(settings.database_url, settings.data_dir))
    database.open()
    keys = None
    if settings.auth == "on":
        keys = KeyDirectory(
            database,
            settings.data_dir / "access" / "keys.json",
            settings.key_refresh_seconds,
            settings.lookup_timeout_seconds,
        )
        keys.load()
    sessions = SessionStore(
        database, settings.session_secret, timedelta(hours=settings.session_hours)
    )
    writer = BatchWriter(
        database,
        {
            ASSIGNMENTS.table: ASSIGNMENTS,
            EXPOSURES.table: EXPOSURES,
            EXPOSURE_ATTRIBUTES.table: EXPOSURE_ATTRIBUTES,
            PREDICTIONS.table: PREDICTIONS,
            SKETCHES.table: SKETCHES,
            REGISTRY_VERSIONS.table: REGISTRY_VERSIONS,
        },
        flush_interval=settings.flush_interval_seconds,
        max_rows=settings.flush_max_rows,
        max_pending=settings.max_pending_rows,
        spool=Spool(settings.writes_spool_path, settings.spool_max_bytes, "writes-segment"),
    )
    sticky = StickyStore(
        database, writer, settings.sticky_cache_size, settings.lookup_timeout_seconds
    )
    state = StateSync(
        database,
        registry,
        writer,
        settings.state_poll_seconds,
        settings.allocation_settle_seconds,
    )
    state.poll_once(timeout=1.0)
    events = EventIngestor(
        database,
        Spool(settings.spool_path, settings.spool_max_bytes, "events-segment"),
        wait_timeout=settings.event_wait_seconds,
    )
    rollup = RollupScheduler(
        database,
        windows_from(registry.live(with_holdouts=True)),
        timedelta(seconds=settings.attribution_grace_seconds),
        settings.rollup_interval_seconds,
        metric_windows_from(registry.live(with_holdouts=True)),
        segment_specs_from(registry.live()),
        configured_pairs_from(registry.live()),
        configured_bandits_from(registry.live(), settle_guard(settings.state_poll_seconds)),
    )
    assignment_service = AssignmentService(
        registry, sticky, lookup_grace=2 * settings.flush_interval_seconds + 0.1
    )
    models = build_model_runtime(settings, registry, state, writer, assignment_service)
    writer.start()
    state.start()
    events.start()
    rollup.start()
    if keys is not None:
        keys.start()
    runtime = Runtime(
        settings,
        registry,
        database,
        writer,
        sticky,
        state,
        assignment_service,
        events,
        rollup,
        models,
        keys,
        sessions,
    )
    runtime.publish_metrics()
    runtime.sampler.start()
    return runtime


BLUEPRINTS = (
    assignments.bp,
    events_routes.bp,
    experiments.bp,
    health.bp,
    openapi.bp,
    predictions.bp,
    analysis_routes.bp,
    holdout_routes.bp,
    decision_routes.bp,
    shadow_routes.bp,
    keys.bp,
    sdk.bp,
    job_routes.bp,
    lineage_routes.bp,
    dashboard_pages.bp,
)
"""Every blueprint the app serves; each route must be declared in openapi.yaml."""


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings()
    app = Flask("abx", static_folder=None)  # no /static route: every route is declared
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    instrumentation.init_app(app, settings.access_log)  # first: it sees every request
    problems.init_app(app)
    if settings.proxy_hops:
        hops = settings.proxy_hops
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)  # type: ignore[method-assign]
    runtime = build_runtime(settings)
    app.extensions["abx"] = runtime
    sdk.init_app(
        app,
        SnapshotCache(runtime.registry, settings.allocation_settle_seconds),
        settings.threads,
        settings.sdk_max_streams,
    )
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)
    # After every blueprint: each route must have its security declaration.
    app.extensions["abx.gate"] = auth.Gate(app, settings, runtime.keys, runtime.sessions)
    return app
