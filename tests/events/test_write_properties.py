"""Property: whatever a client posts, every acknowledged event is in PostgreSQL, nothing wedges.

hypothesis draws text from every Unicode category, control characters and lone surrogates
included, nested ``properties`` and numbers of any size, and posts them to ``/v1/events``
(JSON and NDJSON), ``/v1/assign`` and the SDK's ``/v1/sdk/exposures`` on one real server.
Every answer must be 2xx or a 4xx problem, never 5xx; a value PostgreSQL cannot store (NUL, a
lone surrogate) in any field must be answered 422 naming that field; afterwards every event
acknowledged with 202 must be a row of ``outcomes``, every exposure an SDK batch recorded a
row of ``exposures``, nothing may be quarantined or spooled, and a fresh unit's exposure must
still reach PostgreSQL (the writers are not wedged). The same events go through ``abx events
import``: a file is imported whole or refused whole. Sized for ~20 s of CI time.
"""

from __future__ import annotations

import itertools
import json
import uuid
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.cli.main import main
from tests.conftest import EXAMPLES, Api, wait_for
from tests.sdk.test_api import hashed_variant

ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=12)
"""Every code point: controls, NUL, lone surrogates, private use, unassigned."""
NUMBERS = st.one_of(
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
)
JSON_VALUES = st.recursive(
    st.one_of(st.none(), NUMBERS, ANY_TEXT),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(ANY_TEXT, inner, max_size=3)
    ),
    max_leaves=40,
)
EVENTS = st.fixed_dictionaries(
    {
        "experiment": st.sampled_from(["search_embeddings"]),
        "unit": st.one_of(ANY_TEXT, st.integers(min_value=-(10**30), max_value=10**30)),
        "metric": st.sampled_from(["search_click", "search_click", "x\x00"]),
        "value": NUMBERS,
    },
    optional={"properties": st.dictionaries(ANY_TEXT, JSON_VALUES, max_size=4)},
)

SEED = "search_embeddings.v1"
VARIANTS = ("baseline", "embeddings_v2")
UNSTORABLE = st.sampled_from(["\x00", "seed\x00", "\ud800", "a\udfffb"])
"""Drawn often on purpose: in 60 examples, ANY_TEXT alone seldom holds a NUL or a surrogate."""


def mostly(good: Any, *bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``good`` three times in four: a batch is refused whole for one bad item, so with bad
    values as likely as good ones a run of 60 examples could record no exposure at all."""
    return st.one_of(st.just(good), st.just(good), st.just(good), *bad)


EXPOSURES = st.fixed_dictionaries(
    {
        "experiment": mostly("search_embeddings", ANY_TEXT, UNSTORABLE),
        "unit": st.one_of(
            st.text(
                st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=12
            ),
            st.text(
                st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=12
            ),
            ANY_TEXT,
            st.integers(min_value=-(10**30), max_value=10**30),
        ),
        "seed": mostly(SEED, st.one_of(ANY_TEXT, UNSTORABLE)),
        # None: the variant the unit's hash gives (an exposure the server records).
        "variant": st.one_of(st.none(), st.sampled_from(VARIANTS), ANY_TEXT, UNSTORABLE),
    },
    optional={"exposed_at": mostly(None, NUMBERS)},
)


def unstorable(value: Any) -> bool:
    """Text PostgreSQL refuses: a NUL, or a lone surrogate UTF-8 cannot encode."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return "\x00" in value


def post_exposures(api: Api, items: list[dict[str, Any]], recorded: list[str]) -> None:
    """Post one SDK batch; note the units whose exposure must now be in PostgreSQL."""
    for item in items:
        if item["variant"] is None:
            unit = str(item["unit"])
            item["variant"] = (
                VARIANTS[hashed_variant("search_embeddings", SEED, unit, (0.5, 1.0))]
                if not unstorable(unit)
                else VARIANTS[0]
            )
    answer = api.post(
        "/v1/sdk/exposures",
        data=encode({"batch_id": uuid.uuid4().hex, "exposures": items}),
        headers={"Content-Type": "application/json"},
    )
    assert answer.status_code < 500, answer.text
    bad = {
        f"exposures[{index}].{field}"
        for index, item in enumerate(items)
        for field, value in item.items()
        if unstorable(value)
    }
    if bad:
        assert answer.status_code == 422, (bad, answer.text)
    if answer.status_code != 200:
        assert answer.headers["Content-Type"].startswith("application/problem+json")
        if bad:  # the problem names a field holding what PostgreSQL cannot store
            named = {error["field"] for error in answer.json()["errors"]}
            assert named & bad, (bad, answer.text)
        return
    recorded.extend(
        str(item["unit"])
        for item in items
        if item["experiment"] == "search_embeddings"
        and item["seed"] == SEED
        and item["variant"]
        == VARIANTS[hashed_variant("search_embeddings", SEED, str(item["unit"]), (0.5, 1.0))]
    )


def encode(body: Any) -> bytes:
    """JSON as a client would send it: lone surrogates escaped, as json.dumps does."""
    return json.dumps(body, ensure_ascii=True).encode("ascii")


@pytest.fixture(scope="module")
def property_server(tmp_path_factory: pytest.TempPathFactory, template_database: str) -> Any:
    from service.access.scopes import SCOPES
    from tests.conftest import (
        _url_for,
        create_database,
        drop_database,
        make_key,
        start_server,
    )

    name = create_database(template_database)
    url = _url_for(name)
    folder = tmp_path_factory.mktemp("property")
    key = make_key(url, "test-suite", list(SCOPES))
    server = start_server(
        {"ABX_DATABASE_URL": url, "ABX_EXPERIMENTS": str(EXAMPLES),
         "ABX_DATA_DIR": str(folder / "data")},
        folder / "server.log",
        key=key,
    )  # fmt: skip
    yield url, Api(server.base_url), folder
    server.stop()
    drop_database(name)


def test_whatever_is_posted_every_acknowledged_event_is_stored(property_server: Any) -> None:
    """One test (one server, one xdist worker): post the examples, then check the database."""
    url, api, folder = property_server
    acknowledged: list[str] = []
    recorded: list[str] = []
    numbers = itertools.count()

    @settings(
        max_examples=60,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(
        events=st.lists(EVENTS, min_size=1, max_size=4),
        ndjson=st.booleans(),
        exposures=st.lists(EXPOSURES, min_size=1, max_size=3),
    )
    def post(events: list[dict[str, Any]], ndjson: bool, exposures: list[dict[str, Any]]) -> None:
        number = next(numbers)
        for index, event in enumerate(events):
            event["event_id"] = f"p{number}-{index}"
        if ndjson:
            body = b"\n".join(encode(event) for event in events)
            kind = "application/x-ndjson"
        else:
            body, kind = encode({"events": events}), "application/json"
        response = api.post("/v1/events", data=body, headers={"Content-Type": kind})
        assert response.status_code < 500, response.text
        if response.status_code == 202:
            assert response.json()["durable"] == "committed", response.text
            acknowledged.extend(event["event_id"] for event in events)
        else:
            assert response.headers["Content-Type"].startswith("application/problem+json")
        assign = api.post(
            "/v1/assign", data=encode({"experiment": "search_embeddings", "unit": events[0]["unit"]}),
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        assert assign.status_code < 500, assign.text
        post_exposures(api, exposures, recorded)

    post()
    assert acknowledged, "no example was acknowledged: the strategy only makes bad events"
    assert recorded, "no SDK exposure was recorded: the strategy only makes bad ones"
    with psycopg.connect(url, autocommit=True) as conn:
        stored = {row[0] for row in conn.execute("SELECT event_id FROM outcomes")}
        assert set(acknowledged) <= stored
        exposed_units = {
            row[0]
            for row in conn.execute(
                "SELECT unit_id FROM exposures WHERE experiment_key = 'search_embeddings'"
                " AND seed = %s",
                (SEED,),
            )
        }
        assert set(recorded) <= exposed_units
        assert conn.execute("SELECT count(*) FROM quarantine").fetchone()[0] == 0
        units = [f"after-{i}" for i in range(6)]
        exposed = [u for u in units if api.assign("search_embeddings", u)["in_experiment"]]
        assert wait_for(
            lambda: (
                conn.execute(
                    "SELECT count(*) FROM exposures WHERE unit_id = ANY(%s)"
                    " AND experiment_key = 'search_embeddings'",
                    (exposed,),
                ).fetchone()[0]
                == len(exposed)
            ),
            timeout=10,
        )
    assert api.get("/readyz").json()["checks"]["events"]["spooling"] is False

    @settings(max_examples=15, deadline=None, derandomize=True)
    @given(events=st.lists(EVENTS, min_size=1, max_size=3))
    def import_file(events: list[dict[str, Any]]) -> None:
        for index, event in enumerate(events):
            event["event_id"] = f"import-{id(events)}-{index}"
        path = folder / "events.ndjson"
        path.write_bytes(b"\n".join(encode(event) for event in events) + b"\n")
        result = CliRunner().invoke(
            main, ["events", "import", str(path)],
            env={"ABX_DATABASE_URL": url, "ABX_EXPERIMENTS": str(EXAMPLES)},
        )  # fmt: skip
        assert result.exception is None or isinstance(result.exception, SystemExit), result.output
        ids = [event["event_id"] for event in events]
        with psycopg.connect(url) as conn:
            stored = {
                row[0]
                for row in conn.execute(
                    "SELECT event_id FROM outcomes WHERE event_id = ANY(%s)", (ids,)
                )
            }
        assert stored == (set(ids) if result.exit_code == 0 else set()), result.output
        path.unlink()

    import_file()
