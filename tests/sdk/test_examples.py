"""The SDK's example apps (sdk/python/examples) against a real `abx serve`: their answers are
the server's, and what they queued is stored once they stop (flushed at exit)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psycopg
import requests

from tests.conftest import PROJECT_ROOT, Api, ServerFactory, free_port, wait_for

EXAMPLES = PROJECT_ROOT / "sdk" / "python" / "examples"


def start_example(
    name: str, base_url: str, token: str, log: Path
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "ABX_URL": base_url, "ABX_TOKEN": token, "PORT": str(port)}
    with log.open("wb") as output:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen([sys.executable, str(EXAMPLES / name)], env=env,
                                   stdout=output, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return requests.get(url + "/checkout/probe", timeout=1).status_code < 500
        except requests.RequestException:
            return False

    assert wait_for(up, timeout=60), log.read_text()
    return process, url


def stop(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGINT)  # both examples close the client: it flushes
    try:
        return process.wait(20)
    finally:
        if process.poll() is None:
            process.kill()


def test_flask_and_wsgi_examples(
    server_factory: ServerFactory, db: str, experiments_dir: Path, tmp_path: Path
) -> None:
    server = server_factory(db, experiments_dir)
    assert server.key is not None
    api = Api(server.base_url)
    flask_app, flask_url = start_example("flask_app.py", server.base_url, server.key,
                                         tmp_path / "flask.log")  # fmt: skip
    wsgi_app, wsgi_url = start_example("wsgi_app.py", server.base_url, server.key,
                                       tmp_path / "wsgi.log")  # fmt: skip
    try:
        users = [f"example-{i}" for i in range(15)]
        for user in users:
            page = requests.get(f"{flask_url}/checkout/{user}?country=US&app_version=2.1.0",
                                timeout=10).json()  # fmt: skip
            served = api.assign("checkout_ranker", user, country="US", app_version="2.1.0")
            assert (page["ranker"], page["reason"]) == (served["variant"], served["reason"])
            other = requests.post(f"{wsgi_url}/{user}", timeout=10).json()
            assert other["ready"]
            served = api.assign("search_reranker", user, platform="ios")
            assert (other["variant"], other["reason"]) == (served["variant"], served["reason"])
        requests.post(f"{flask_url}/checkout/{users[0]}/converted", timeout=10).raise_for_status()
    finally:
        codes = stop(flask_app), stop(wsgi_app)
    assert codes[1] == 0 and codes[0] in (0, -signal.SIGINT), codes
    with psycopg.connect(db, autocommit=True) as conn:
        events = conn.execute(
            "SELECT experiment_key, count(*) FROM outcomes WHERE unit_id = ANY(%s) GROUP BY 1",
            (users,),
        ).fetchall()
    assert dict(events) == {"search_reranker": 15, "checkout_ranker": 1}
