"""The promises across replicas: HAProxy, three `abx serve` replicas, two Celery workers and
one scheduler on one PostgreSQL, under steady mixed traffic (deploy/topology.py).

One run, in phases, because starting the whole costs more than any phase: a rolling restart
of every replica, a replica SIGKILLed and started again on its spool, a weight change rolled
out one replica at a time, and an expand migration applied while they serve. At the end no
request failed, every acknowledged event is in PostgreSQL, and no unit saw two variants.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import yaml

from deploy.topology import Topology, Traffic, create_key
from tests.conftest import MIGRATIONS, wait_for
from tests.model_fixtures import MODELS, demo_models
from tests.suite.system_tools import requires_system_tool

pytestmark = requires_system_tool("haproxy")


def stored(db: str, ids: set[str]) -> set[str]:
    with psycopg.connect(db) as conn:
        rows = conn.execute(
            "SELECT event_id FROM outcomes WHERE event_id = ANY(%s)", (list(ids),)
        ).fetchall()
    return {row[0] for row in rows}


def roll_out_weights(topology: Topology, traffic: Traffic) -> None:
    """checkout_ranker's weights changed in one replica's YAML after another (hot reload)."""
    for replica in topology.servers:
        path = replica.experiments / "checkout_ranker.yaml"
        experiment = yaml.safe_load(path.read_text())
        for variant, weight in zip(experiment["variants"], (0.2, 0.4, 0.4), strict=True):
            variant["weight"] = weight
        path.write_text(yaml.safe_dump(experiment, sort_keys=False))
        target = traffic.requests_sent + 30  # some traffic while the replicas disagree
        assert wait_for(lambda: traffic.requests_sent > target, timeout=60)  # noqa: B023


def test_rolling_restart_kill_rollout_and_migration_under_traffic(
    db: str, celery_broker: dict[str, str], tmp_path: Path
) -> None:
    demo_models()
    experiments = tmp_path / "experiments"
    experiments.mkdir()
    shutil.copy(Path(MODELS).parent / "checkout_ranker.yaml", experiments)
    topology = Topology(
        tmp_path / "topology", db, celery_broker["ABX_BROKER_URL"], experiments, MODELS,
        replicas=3, gunicorn_workers=1, celery_workers=2,
        environment={"ABX_QUEUE": celery_broker["ABX_QUEUE"], "ABX_STATE_POLL_SECONDS": "0.5",
                     "ABX_FLUSH_INTERVAL_SECONDS": "0.05"},
    )  # fmt: skip
    with topology:
        traffic = Traffic(topology.url, create_key(db)).start()
        try:
            assert wait_for(lambda: traffic.requests_sent > 50, timeout=60)
            traffic.phase = "rolling restart"
            topology.rolling_restart()
            traffic.phase = "replica killed"
            killed = topology.servers[1]
            topology.stop_replica(killed, signal.SIGKILL)
            topology.start_replica(killed)  # on the same spool folder
            traffic.phase = "weight rollout"
            roll_out_weights(topology, traffic)
            traffic.phase = "migration"
            expand = tmp_path / "migrations"
            shutil.copytree(MIGRATIONS, expand)
            (expand / "9999_expand_outcomes.sql").write_text(
                "ALTER TABLE outcomes ADD COLUMN topology_note text;\n"
                "CREATE TABLE topology_expand (id bigint PRIMARY KEY);\n"
            )
            migrated = topology.env(ABX_MIGRATIONS=str(expand))
            done = subprocess.run(
                [sys.executable, "-m", "service.cli", "migrate"],
                env=migrated, capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            time.sleep(2)
        finally:
            traffic.stop()
        sent = traffic.requests_sent
        assert sent > 200 and traffic.failures == [], traffic.failures[:10]
        print(f"{sent} requests; first tries without an answer, retried: {traffic.retried}")
        assert traffic.units_with_two_variants() == {}
        assert len(traffic.acknowledged) > 100
        assert wait_for(lambda: stored(db, traffic.acknowledged) == traffic.acknowledged, 60), len(
            traffic.acknowledged - stored(db, traffic.acknowledged)
        )
    with psycopg.connect(db) as conn:
        columns = conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'outcomes'"
        ).fetchall()
    assert ("topology_note",) in columns
