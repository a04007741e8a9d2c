"""An SDK cut off from a real ``abx serve`` for longer than the settle time (``stale_policy``).

A weight change applies ``ABX_ALLOCATION_SETTLE_SECONDS`` after it is announced, so a snapshot
is known good for that long after the SDK last heard from the server: its lease. Past it,
``stale_policy="control"`` answers a unit new to the process with the control (``sdk-stale``)
rather than proving a variant the server may since have moved.
"""

from __future__ import annotations

import time
from pathlib import Path

from abx_client import Client
from tests.conftest import ServerFactory, wait_for

US = {"country": "US", "app_version": "2.1.0"}


def test_past_its_lease_a_snapshot_gives_new_units_the_control_when_asked(
    server_factory: ServerFactory, db: str, experiments_dir: Path
) -> None:
    server = server_factory(db, experiments_dir, ABX_ALLOCATION_SETTLE_SECONDS="2")
    guarded = Client(server.base_url, server.key, stale_policy="control", close_timeout=0.5)
    available = Client(server.base_url, server.key, close_timeout=0.5)
    try:
        assert guarded.wait_ready(10) and available.wait_ready(10)
        # Nothing changes for longer than the settle time: the stream's keep-alives (every
        # third of it) renew the lease.
        time.sleep(3.0)
        assert not guarded.stale
        before = {
            u: guarded.assign("checkout_ranker", u, US) for u in map("known-{}".format, range(40))
        }
        exposed = [u for u, a in before.items() if a.reason == "hashed"]
        assert exposed
        assert guarded.flush(10)
        server.stop()

        assert wait_for(lambda: guarded.stale and available.stale, timeout=15)
        new = [f"new-{i}" for i in range(40)]
        served = {u: available.assign("checkout_ranker", u, US) for u in new}
        hashed = [u for u, a in served.items() if a.reason == "hashed"]
        assert hashed  # "serve" (the default) keeps answering from the last snapshot
        for unit in hashed:
            answer = guarded.assign("checkout_ranker", unit, US)
            assert (answer.variant, answer.reason, answer.source) == (
                "production",
                "sdk-stale",
                "sdk",
            )
        assert guarded.stats()["sdk-stale"] == len(hashed)
        assert guarded.flush(0)  # nothing was queued for them: no exposure recorded
        # Units whose exposure this process already sent keep their answer, and answers that
        # record no exposure (targeting, here) stay local.
        assert all(guarded.assign("checkout_ranker", u, US) == before[u] for u in exposed)
        assert (
            guarded.assign("checkout_ranker", "new-0", {"country": "JP"}).reason == "targeted-out"
        )
    finally:
        guarded.close()
        available.close()
