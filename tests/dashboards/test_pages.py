"""Dashboard pages on a real server: protection, numbers equal to the API's, reports."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner

from service.cli.main import main
from service.demo.seed import seeded_dashboard_experiments
from tests.conftest import API_KEY, Api, Server, ServerFactory


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
    return server_factory(db, experiments_dir, ABX_API_KEY=API_KEY)


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


def test_dashboards_need_the_key_when_one_is_set(dashboard_server: Server) -> None:
    base = dashboard_server.base_url
    with requests.Session() as browser:
        first = browser.get(base + "/dashboards/checkout_ranker", allow_redirects=False, timeout=10)
        assert first.status_code == 303
        assert first.headers["Location"].startswith("/dashboards/login?next=/dashboards/checkout")
        assert (
            browser.get(base + "/dashboards/checkout_ranker/data.json", timeout=10).status_code
            == 401
        )
        wrong = browser.post(base + "/dashboards/login", data={"key": "nope"}, timeout=10)
        assert wrong.status_code == 401
        signed_in = browser.post(
            base + "/dashboards/login",
            data={"key": API_KEY, "next": "/dashboards/checkout_ranker"},
            allow_redirects=False,
            timeout=10,
        )
        assert signed_in.status_code == 303
        assert signed_in.headers["Location"] == "/dashboards/checkout_ranker"
        cookie = signed_in.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert browser.get(base + "/dashboards/checkout_ranker", timeout=10).status_code == 200
        escape = browser.post(
            base + "/dashboards/login",
            data={"key": API_KEY, "next": "https://evil.example/"},
            allow_redirects=False,
            timeout=10,
        )
        assert escape.headers["Location"] == "/dashboards/"
    # plotly.js is public code: served without the key, cacheable, from this server.
    index = requests.get(base + "/dashboards/", headers={"X-API-Key": API_KEY}, timeout=10).text
    assert "ranker_bakeoff" in index and "checkout_ranker" in index
    page = requests.get(
        base + "/dashboards/checkout_ranker", headers={"X-API-Key": API_KEY}, timeout=10
    ).text
    source = re.search(r'<script src="([^"]+)"', page)
    assert source is not None and source.group(1).startswith("/dashboards/static/plotly-")
    script = requests.get(base + source.group(1), timeout=10)
    assert script.status_code == 200 and "max-age" in script.headers["Cache-Control"]
    assert len(script.content) > 1_000_000
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
                    "fig-reliability", "fig-decisions", "decision-table", "sample-size-table"):  # fmt: skip
        assert f'id="{section}"' in html, section
    assert "all experiments" not in html  # no links back to a server the reader may not reach
    missing = runner.invoke(main, ["report", "nope", "-o", str(target)])
    assert missing.exit_code == 1


def test_report_download_from_the_page(api: Api) -> None:
    response = api.get("/dashboards/ranker_bakeoff/report.html")
    assert response.status_code == 200
    assert "attachment" in response.headers["Content-Disposition"]
    _self_contained(response.text)
