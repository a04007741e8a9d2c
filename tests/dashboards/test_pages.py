"""Dashboard pages on a real server: protection, numbers equal to the API's, reports."""

from __future__ import annotations

import re
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner

from service.cli.main import main
from service.demo.seed import seeded_dashboard_experiments
from tests.conftest import Api, Server, ServerFactory, make_key


class _Numbers(HTMLParser):
    """Collect ``data-field``/``data-value`` pairs per comparison row of the metric tables."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[tuple[str, str], dict[str, str]] = {}
        self.page: dict[str, str] = {}
        self._row: dict[str, str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "tr" and "comparison" in (found.get("class") or ""):
            self._row = self.rows.setdefault(
                (found["data-metric"] or "", found["data-variant"] or ""), {}
            )
        elif tag == "tr":
            self._row = None
        if "data-field" in found:
            target = self._row if self._row is not None else self.page
            target[found["data-field"] or ""] = found.get("data-value") or ""

    def handle_endtag(self, tag: str) -> None:
        if tag in ("tr", "table"):
            self._row = None


def _parse(html: str) -> _Numbers:
    parser = _Numbers()
    parser.feed(html)
    return parser


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


@pytest.fixture
def dashboard_server(server_factory: ServerFactory, db: str, experiments_dir: Path) -> Server:
    seeded_dashboard_experiments(db, experiments_dir)
    return server_factory(db, experiments_dir)


@pytest.fixture
def api(dashboard_server: Server) -> Api:
    return Api(dashboard_server.base_url)


@pytest.mark.parametrize("key", ["ranker_bakeoff", "checkout_ranker"])
def test_page_numbers_equal_the_analysis_api(api: Api, key: str) -> None:
    analysis = api.get(f"/v1/experiments/{key}/analysis")
    assert analysis.status_code == 200, analysis.text
    expected = analysis.json()
    page = api.get(f"/dashboards/{key}")
    assert page.status_code == 200
    numbers = _parse(page.text)
    comparisons = expected["primary"] + expected["secondary"]
    assert len(comparisons) >= 4
    assert set(numbers.rows) == {(c["metric"], c["variant"]) for c in comparisons}
    if key == "checkout_ranker":  # its ratio metric (revenue per session) is analysed and shown
        assert {c["metric"] for c in comparisons} >= {"order_value_per_session"}, expected
    for comparison in comparisons:
        shown = numbers.rows[(comparison["metric"], comparison["variant"])]
        for field, value in shown.items():
            assert value == _as_text(comparison[field]), (comparison["variant"], field)
        assert {"treatment_mean", "difference", "ci_low", "ci_high", "lift_relative", "p_value",
                "treatment_units", "cuped"} <= set(shown)  # fmt: skip
    assert numbers.page["srm_p_value"] == repr(expected["srm"]["p_value"])
    data = api.get(f"/dashboards/{key}/data.json").json()
    assert data["analysis"]["primary"] == expected["primary"]
    assert data["weights"] == expected["weights"]
    # The decision timeline is the decisions API's audit log, number for number.
    audit = api.get(f"/v1/experiments/{key}/decisions").json()
    fields = ("decision_id", "kind", "variant", "status", "actor", "reason", "numbers",
              "state_before", "state_after", "created_at", "applied_at", "seed")  # fmt: skip
    assert [{f: d[f] for f in fields} for d in data["decisions"]] == [
        {f: d[f] for f in fields} for d in audit["decisions"]
    ]
    assert len(audit["decisions"]) == 3
    assert re.findall(r'data-decision="([^"]+)"', page.text) == [
        d["decision_id"] for d in reversed(audit["decisions"])
    ]
    assert f'<span class="badge" id="state">{audit["current"]["state"]}</span>' in page.text


def _form_token(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match is not None, html[:500]
    return match.group(1)


def _sign_in(browser: requests.Session, base: str, key: str, **fields: str) -> requests.Response:
    token = _form_token(browser.get(base + "/dashboards/login", timeout=10).text)
    return browser.post(base + "/dashboards/login", allow_redirects=False, timeout=10,
                        data={"key": key, "csrf_token": token, **fields})  # fmt: skip


def test_analysts_sign_in_to_a_server_side_session(dashboard_server: Server, db: str) -> None:
    base = dashboard_server.base_url
    analyst = make_key(db, "analyst-jane", ["dashboards:read"])
    writer = make_key(db, "web-app", ["assign"])
    with requests.Session() as browser:
        first = browser.get(base + "/dashboards/checkout_ranker", allow_redirects=False, timeout=10,
                            headers={"Accept": "text/html"})  # fmt: skip
        assert first.status_code == 303
        assert first.headers["Location"].startswith("/dashboards/login?next=/dashboards/checkout")
        data = browser.get(base + "/dashboards/checkout_ranker/data.json", timeout=10)
        assert data.status_code == 401 and data.json()["status"] == 401
        assert _sign_in(browser, base, "nope").status_code == 401
        assert _sign_in(browser, base, writer).status_code == 403  # no dashboards:read
        forged = browser.post(base + "/dashboards/login", allow_redirects=False, timeout=10,
                              data={"key": analyst, "csrf_token": "forged"})  # fmt: skip
        assert forged.status_code == 400 and "abx_session" not in forged.headers.get(
            "Set-Cookie", ""
        )
        signed_in = _sign_in(browser, base, analyst, next="/dashboards/checkout_ranker")
        assert signed_in.status_code == 303
        assert signed_in.headers["Location"] == "/dashboards/checkout_ranker"
        cookie = signed_in.headers["Set-Cookie"]
        assert "abx_session=" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie
        assert "Max-Age=28800" in cookie and "Secure" not in cookie  # plain HTTP here
        assert analyst not in cookie and analyst[-43:] not in cookie  # never the key
        page = browser.get(base + "/dashboards/checkout_ranker", timeout=10)
        assert page.status_code == 200 and "key:analyst-jane" in page.text
        assert page.headers["Cache-Control"] == "no-store"
        for escape in ("https://evil.example/", "//evil.example/dashboards/", "/v1/keys"):
            assert (
                _sign_in(browser, base, analyst, next=escape).headers["Location"] == "/dashboards/"
            )
        # The session cannot do what the key cannot: it is not a key for /v1.
        assert browser.get(base + "/v1/experiments", timeout=10).status_code == 401
        # Signing out needs the session's CSRF token, and ends the session for good.
        stolen = browser.cookies.get("abx_session")
        assert browser.post(base + "/dashboards/logout", data={"csrf_token": "x"},
                            timeout=10, allow_redirects=False).status_code == 400  # fmt: skip
        # Each sign-in above opened a new session with its own token: read the current one.
        current = browser.get(base + "/dashboards/checkout_ranker", timeout=10)
        out = browser.post(base + "/dashboards/logout", data={"csrf_token": _form_token(current.text)},
                           timeout=10, allow_redirects=False)  # fmt: skip
        assert out.status_code == 303 and out.headers["Location"] == "/dashboards/login"
    replay = requests.get(base + "/dashboards/", cookies={"abx_session": stolen or ""}, timeout=10)
    assert replay.status_code == 401
    tampered = requests.get(base + "/dashboards/", cookies={"abx_session": "x" + (stolen or "")},
                            timeout=10)  # fmt: skip
    assert tampered.status_code == 401


def test_revoking_the_key_ends_its_sessions(dashboard_server: Server, db: str) -> None:
    base = dashboard_server.base_url
    analyst = make_key(db, "leaver", ["dashboards:read"])
    with requests.Session() as browser:
        assert _sign_in(browser, base, analyst).status_code == 303
        assert browser.get(base + "/dashboards/", timeout=10).status_code == 200
        revoked = requests.delete(base + f"/v1/keys/{analyst.split('_')[2]}", timeout=10,
                                  headers={"X-API-Key": dashboard_server.key or ""})  # fmt: skip
        assert revoked.status_code == 200
        deadline = time.monotonic() + 5
        while browser.get(base + "/dashboards/", timeout=10).status_code == 200:
            assert time.monotonic() < deadline, "the session outlived its key"
            time.sleep(0.1)


def test_secure_cookie_behind_an_https_proxy(
    server_factory: ServerFactory, db: str, experiments_dir: Path
) -> None:
    server = server_factory(db, experiments_dir, ABX_PROXY_HOPS="1")
    analyst = make_key(db, "analyst", ["dashboards:read"])
    browser = requests.Session()
    browser.headers["X-Forwarded-Proto"] = "https"
    browser.headers["X-Forwarded-For"] = "203.0.113.9"
    cookie = _sign_in(browser, server.base_url, analyst).headers["Set-Cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie


def test_pages_send_a_content_security_policy(api: Api) -> None:
    for path in ("/dashboards/", "/dashboards/checkout_ranker", "/dashboards/login"):
        answer = api.get(path)
        policy = answer.headers["Content-Security-Policy"]
        assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
        assert "unsafe-eval" not in policy and "'unsafe-inline'" not in policy.split("style-src")[0]
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        assert answer.headers["X-Frame-Options"] == "DENY"
        assert "<script>" not in answer.text  # no inline script for the policy to block
    report = api.get("/dashboards/checkout_ranker/report.html")
    assert report.headers["Content-Security-Policy"].startswith("sandbox")
    assert api.post("/v1/assign", {"experiment": "checkout_ranker", "unit": "u"}).headers[
        "X-Content-Type-Options"] == "nosniff"  # fmt: skip
    # plotly.js is public code: served without the key, cacheable, from this server.
    base = api.base_url
    index = api.get("/dashboards/").text
    assert "ranker_bakeoff" in index and "checkout_ranker" in index
    page = api.get("/dashboards/checkout_ranker").text
    sources = re.findall(r'<script src="([^"]+)"', page)
    assert sources[0].startswith("/dashboards/static/plotly-")
    assert sources[1] == "/dashboards/static/js/experiment.js"
    script = requests.get(base + sources[0], timeout=10)
    assert script.status_code == 200 and "max-age" in script.headers["Cache-Control"]
    assert len(script.content) > 1_000_000
    assert requests.get(base + sources[1], timeout=10).headers["Content-Type"].startswith(
        "text/javascript")  # fmt: skip
    assert requests.get(base + "/dashboards/static/js/../pages.py", timeout=10).status_code == 404
    assert "cdn" not in page.lower()


def test_unknown_experiment_is_a_404(api: Api) -> None:
    assert api.get("/dashboards/no_such_experiment").status_code == 404
    assert api.get("/v1/experiments/no_such_experiment/analysis").status_code == 404


def _self_contained(html: str) -> None:
    assert "<script src=" not in html
    markup = re.sub(r"<script>.*?</script>", "", html, flags=re.S)  # plotly.js names its site
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", markup)
    assert "<link" not in markup
    assert "Plotly.newPlot" in html
    assert len(html) > 3_000_000  # plotly.js inlined


def test_abx_report_writes_a_self_contained_file(
    db: str,
    experiments_dir: Path,
    tmp_path: Path,
    runner: CliRunner,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seeded_dashboard_experiments(db, experiments_dir)
    monkeypatch.setenv("ABX_DATABASE_URL", db)
    monkeypatch.setenv("ABX_EXPERIMENTS", str(experiments_dir))
    target = tmp_path / "report.html"
    result = runner.invoke(main, ["report", "checkout_ranker", "-o", str(target)])
    assert result.exit_code == 0, result.output
    html = target.read_text()
    _self_contained(html)
    for section in ("fig-evidence", "fig-p_value", "fig-exposures", "fig-srm", "fig-latency",
                    "fig-reliability", "fig-decisions", "decision-table", "sample-size-table",
                    "lineage-table"):  # fmt: skip
        assert f'id="{section}"' in html, section
    assert "all experiments" not in html  # no links back to a server the reader may not reach
    missing = runner.invoke(main, ["report", "nope", "-o", str(target)])
    assert missing.exit_code == 1


def test_report_download_from_the_page(api: Api) -> None:
    response = api.get("/dashboards/ranker_bakeoff/report.html")
    assert response.status_code == 200
    assert "attachment" in response.headers["Content-Disposition"]
    _self_contained(response.text)
