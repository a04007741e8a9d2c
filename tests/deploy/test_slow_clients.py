"""Slow clients cannot hold the service: HAProxy reads each request whole before a replica
sees it (`option http-buffer-request`), so 64 clients trickling their bodies hold balancer
connections, not gunicorn threads, and are cut after `timeout http-request`."""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

import requests

from deploy.topology import Topology
from tests.model_fixtures import MODELS, demo_models
from tests.suite.system_tools import requires_system_tool

pytestmark = requires_system_tool("haproxy")

SLOW_CLIENTS = 64


def test_health_answers_while_64_clients_trickle_their_bodies(
    db: str, celery_broker: dict[str, str], tmp_path: Path
) -> None:
    demo_models()
    experiments = tmp_path / "experiments"
    experiments.mkdir()
    shutil.copy(Path(MODELS).parent / "checkout_ranker.yaml", experiments)
    topology = Topology(
        tmp_path / "topology", db, celery_broker["ABX_BROKER_URL"], experiments, MODELS,
        replicas=1, gunicorn_workers=1, celery_workers=0, scheduler=False,
        environment={"ABX_QUEUE": celery_broker["ABX_QUEUE"], "ABX_THREADS": "4"},
    )  # fmt: skip
    with topology:
        host, port = "127.0.0.1", topology.port
        slow = []
        for _ in range(SLOW_CLIENTS):
            client = socket.create_connection((host, port), timeout=5)
            client.sendall(
                b"POST /v1/events HTTP/1.1\r\nHost: abx\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100000\r\n\r\n{"
            )
            slow.append(client)
        try:
            for _ in range(5):  # the clients keep trickling while health is asked
                for client in slow:
                    client.sendall(b" ")
                started = time.monotonic()
                answer = requests.get(topology.url + "/healthz", timeout=5)
                assert answer.status_code == 200
                assert time.monotonic() - started < 2.0
                time.sleep(0.5)
            # The replica itself, four threads, is as free as the balancer says.
            direct = requests.get(topology.servers[0].url + "/healthz", timeout=2)
            assert direct.status_code == 200
        finally:
            for client in slow:
                client.close()
