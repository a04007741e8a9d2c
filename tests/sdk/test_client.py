"""The SDK against a real server that refuses streams, then goes away: polling, fork safety,
AsyncClient, predict's default and circuit breaker, never a slow call."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from abx_client import AsyncClient, Client
from abx_client._targeting import compile_targeting as sdk_targeting
from service.experiments.schema import Condition
from service.experiments.targeting import compile_targeting as server_targeting
from tests.conftest import Api, ServerFactory, wait_for

FEATURES = {"features": [[1, 0.5, 2] + [1] * 17]}
US = {"country": "US", "app_version": "2.1.0"}

scalars = st.one_of(
    st.booleans(),
    st.integers(-3, 3),
    st.floats(-3, 3, allow_nan=False),
    st.sampled_from(["US", "2.0.0", "v2.1.0-beta.1", "1.10", "x", ""]),
)
numbers = st.one_of(st.integers(-3, 3), st.floats(-3, 3, allow_nan=False))
versions = st.sampled_from(["2.0.0", "v2.1.0-beta.1", "1.10", "2.0.0-rc.1", "3"])
attribute = st.sampled_from(["a", "b"])
# Conditions as the experiment rules accept them (experiments/rules.py): an operator's value
# of the kind it compares.
conditions = st.one_of(
    st.fixed_dictionaries(
        {"attribute": attribute, "op": st.sampled_from(["eq", "neq"]), "value": scalars}
    ),
    st.fixed_dictionaries({"attribute": attribute, "op": st.sampled_from(["in", "not_in"]),
                           "values": st.lists(scalars, min_size=1, max_size=3)}),
    st.fixed_dictionaries(
        {"attribute": attribute, "op": st.sampled_from(["gt", "gte", "lt", "lte"]), "value": numbers}
    ),
    st.fixed_dictionaries({"attribute": attribute, "op": st.sampled_from(
        ["version_eq", "version_gt", "version_gte", "version_lt", "version_lte"]),
        "value": versions}),
    st.fixed_dictionaries({"attribute": attribute, "op": st.just("exists"), "value": st.booleans()}),
)  # fmt: skip
attribute_values = st.one_of(scalars, versions, st.none(), st.lists(st.integers(), max_size=2))


@settings(max_examples=300, deadline=None)
@given(conditions, st.dictionaries(st.sampled_from(["a", "b", "c"]), attribute_values, max_size=3))
def test_targeting_is_the_servers(condition: dict[str, Any], attributes: dict[str, Any]) -> None:
    server = server_targeting(Condition.model_validate(condition, strict=False))
    sdk = sdk_targeting(Condition.model_validate(condition, strict=False).model_dump(
        mode="json", exclude_none=True))  # fmt: skip
    assert sdk(attributes) == server(attributes)
    for group in ("all", "any"):
        node = {group: [condition, {"attribute": "c", "op": "exists", "value": True}]}
        assert sdk_targeting(node)(attributes) == server_targeting(
            _tree(node))(attributes)  # fmt: skip
    negated = {"not": condition}
    assert sdk_targeting(negated)(attributes) == server_targeting(_tree(negated))(attributes)


def _tree(node: dict[str, Any]) -> Any:
    from service.experiments.schema import Experiment
    from tests.experiment_files import minimal_experiment

    return Experiment.model_validate(minimal_experiment(targeting=node), strict=False).targeting


def test_polling_fork_async_predict_and_a_server_that_goes_away(
    server_factory: ServerFactory, db: str, experiments_dir: Path
) -> None:
    server = server_factory(db, experiments_dir, ABX_SDK_MAX_STREAMS="0")
    api = Api(server.base_url)
    client = Client(server.base_url, server.key, poll_interval=0.2, flush_interval=0.1,
                    breaker_failures=2, breaker_reset_seconds=60, predict_timeout=5)  # fmt: skip
    try:
        assert client.wait_ready(10)
        users = [f"client-{i}" for i in range(200)]
        before = {u: client.assign("checkout_ranker", u, US) for u in users}
        for user in users[:50]:
            served = api.assign("checkout_ranker", user, **US)
            assert (before[user].variant, before[user].reason) == (
                served["variant"],
                served["reason"],
            )
        # Streams are refused (503): a decision still arrives, by conditional polls.
        old = client.version
        assert api.post("/v1/experiments/retention_offer/actions",
                        {"action": "pause", "reason": "poll"}).status_code == 201  # fmt: skip
        assert wait_for(lambda: client.version != old, timeout=30)
        assert client.assign("retention_offer", "u1").reason == "experiment-paused"
        assert client.stats()["stream_failures"] > 0

        # A forked child (gunicorn --preload) is ready at once and has threads of its own.
        child = os.fork()
        if child == 0:  # pragma: no cover - runs in the child
            inherited = client.stats()["exposures_queued"] + client.stats()["events_queued"]
            ok = inherited == 0 and client.ready  # the parent's queues stay with the parent
            ok = ok and client.assign("checkout_ranker", users[0], US) == before[users[0]]
            ok = ok and client.flush(10)  # its own threads and connection
            os._exit(0 if ok else 1)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0

        predicted = client.predict("checkout_ranker", users[0], US, FEATURES, default=-1)
        assert predicted.from_server and predicted.variant == before[users[0]].variant

        async def use_async() -> None:
            async with AsyncClient(server.base_url, server.key, stream=False) as asynchronous:
                answer = await asynchronous.assign("checkout_ranker", users[1], US)
                assert answer == before[users[1]]
                result = await asynchronous.predict("checkout_ranker", users[1], US, FEATURES)
                assert result.from_server and result.outputs

        asyncio.run(use_async())
        assert client.flush(10)
        assert client.stats()["exposures_sent"] >= sum(a.in_experiment for a in before.values())
    finally:
        server.stop()

    # The server is gone: the last snapshot stays in force, answered locally (no call goes to
    # the network; benchmarks/sdk.py times them).
    for user in users * 10:
        assert client.assign("checkout_ranker", user, US) == before[user]
    failed = [client.predict("checkout_ranker", users[0], US, FEATURES,
                             default=lambda assignment: assignment.variant) for _ in range(4)]  # fmt: skip
    assert [p.from_server for p in failed] == [False] * 4
    assert failed[0].outputs == before[users[0]].variant
    assert failed[-1].error == "circuit-open"  # two failures opened it: no more waiting
    client.track(users[0], "checkout_conversion", 1)
    assert not client.flush(0.5)  # nothing can be sent: kept for later, retried with backoff
    assert client.stats()["batch_failures"] >= 1
    started = time.monotonic()
    client.close()
    assert time.monotonic() - started < 20  # close_timeout (5 s) bounds the last flush, not 60 s
