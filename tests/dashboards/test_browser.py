"""The dashboards in a real browser: Debian's Chromium driven by Playwright against gunicorn.

Screenshots of every page land in ``test-artifacts/`` (git-ignored) for a person to look at.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.demo.seed import seeded_dashboard_experiments
from service.settings import PROJECT_ROOT
from tests.conftest import Api, Server, ServerFactory, make_key
from tests.suite.system_tools import requires_system_tool, system_tool_path

CHROMIUM = system_tool_path("chromium")
ARTIFACTS = PROJECT_ROOT / "test-artifacts"
pytestmark = requires_system_tool("chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync"]  # fmt: skip
CHARTS_RENDERED = """() => {
  const charts = Array.from(document.querySelectorAll('div.chart'));
  return charts.length > 0 && charts.every(c => c.classList.contains('js-plotly-plot')
      && c.querySelector('.main-svg') !== null);
}"""
CHART_SUMMARY = """() => Array.from(document.querySelectorAll('div.chart')).map(c => ({
  name: c.dataset.figure,
  traces: c.data.length,
  points: c.data.reduce((n, t) => n + (t.y || []).filter(v => v !== null).length, 0),
  drawn: c.querySelectorAll('.scatterlayer .trace, .barlayer .trace').length,
}))"""


@pytest.fixture
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def dashboard_server(server_factory: ServerFactory, db: str, experiments_dir: Path) -> Server:
    seeded_dashboard_experiments(db, experiments_dir)
    return server_factory(db, experiments_dir)


@pytest.fixture
def analyst(db: str) -> str:
    return make_key(db, "analyst-jane", ["dashboards:read"])


def _watch(page: Any, base_url: str) -> list[str]:
    """Console errors, uncaught exceptions and any request that leaves the server."""
    problems: list[str] = []
    page.on(
        "console", lambda m: problems.append(f"console: {m.text}") if m.type == "error" else None
    )
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))

    def only_ours(route: Any) -> None:
        if route.request.url.startswith(base_url) or route.request.url.startswith("file://"):
            route.continue_()
        else:
            problems.append(f"external request: {route.request.url}")
            route.abort()

    page.route("**/*", only_ours)
    return problems


def _check_charts(page: Any, expected: set[str]) -> list[dict[str, Any]]:
    page.wait_for_function(CHARTS_RENDERED, timeout=20_000)
    charts: list[dict[str, Any]] = page.evaluate(CHART_SUMMARY)
    assert {c["name"] for c in charts} == expected
    for chart in charts:
        assert chart["traces"] > 0 and chart["points"] > 0 and chart["drawn"] > 0, chart
    return charts


ALL_CHARTS = {"evidence", "p_value", "exposures", "srm", "latency", "reliability", "decisions"}


def test_index_and_experiment_pages_in_chromium(
    browser: Any, dashboard_server: Server, experiments_dir: Path, analyst: str
) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    base = dashboard_server.base_url
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    problems = _watch(page, base)

    page.goto(base + "/dashboards/")
    assert "/dashboards/login" in page.url  # the key is required
    page.fill("#key", analyst)
    page.click("button[type=submit]")
    page.wait_for_url(base + "/dashboards/")
    assert page.locator("form.account span").inner_text() == "key:analyst-jane"
    rows = page.locator("#experiments tbody tr")
    assert rows.count() == len(list(experiments_dir.glob("*.yaml")))
    page.screenshot(path=ARTIFACTS / "dashboard-index.png", full_page=True)

    page.fill("#search", "bakeoff")
    assert page.locator("#experiments tbody tr:visible").count() == 1
    page.fill("#search", "")
    page.click("th:nth-child(4) button")  # exposed units, ascending
    page.click("th:nth-child(4) button")  # descending
    units = page.eval_on_selector_all(
        "#experiments tbody tr td:nth-child(4)", "cells => cells.map(c => +c.dataset.sort)"
    )
    assert units == sorted(units, reverse=True) and units[0] > 0

    page.click("a[href='/dashboards/ranker_bakeoff']")
    page.wait_for_url(base + "/dashboards/ranker_bakeoff")
    charts = _check_charts(page, ALL_CHARTS)
    evidence = next(c for c in charts if c["name"] == "evidence")
    assert evidence["traces"] == 12  # 4 treatments x (line + interval band edges)
    assert page.locator("tr.comparison").count() == 8  # 4 treatments x 2 metrics
    page.screenshot(path=ARTIFACTS / "dashboard-ranker_bakeoff.png", full_page=True)

    page.go_back()
    page.wait_for_url(base + "/dashboards/")
    page.click("a[href='/dashboards/checkout_ranker']")
    page.wait_for_url(base + "/dashboards/checkout_ranker")
    _check_charts(page, ALL_CHARTS)
    page.screenshot(path=ARTIFACTS / "dashboard-checkout_ranker.png", full_page=True)
    page.click("#back")
    page.wait_for_url(base + "/dashboards/")
    page.click("#sign-out")
    page.wait_for_url(base + "/dashboards/login")
    page.goto(base + "/dashboards/")
    assert "/dashboards/login" in page.url  # signed out for good

    assert problems == []


def test_report_renders_offline(
    browser: Any, dashboard_server: Server, tmp_path: Path, analyst: str
) -> None:
    import requests

    report = requests.get(
        dashboard_server.base_url + "/dashboards/checkout_ranker/report.html",
        headers={"X-API-Key": analyst},
        timeout=30,
    )
    assert report.status_code == 200
    target = tmp_path / "report.html"
    target.write_bytes(report.content)
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    problems = _watch(page, "file://")  # nothing but the file itself may load
    page.goto(target.as_uri())
    _check_charts(page, ALL_CHARTS)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "dashboard-report-checkout_ranker.png", full_page=True)
    assert problems == []


LINEAGE_ROWS = """() => Array.from(document.querySelectorAll('#lineage-table tbody tr')).map(r => {
  const field = name => r.querySelector(`[data-field=${name}]`).dataset.value;
  return [r.dataset.variant, r.dataset.servedBy, r.dataset.sha256, r.dataset.provider,
          +field('predictions'), field('first_served_at'), field('last_served_at'),
          field('registry_version') || null, r.offsetParent !== null];
})"""


def test_model_lineage_on_the_page_is_the_models_api(
    browser: Any, dashboard_server: Server, db: str, analyst: str, tmp_path: Path
) -> None:
    """The lineage table, read in Chromium, row for row what /v1/experiments/<key>/models says."""
    import requests

    base = dashboard_server.base_url
    reader = make_key(db, "lineage-reader", ["experiments:read"])
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    problems = _watch(page, base)
    page.goto(base + "/dashboards/login?next=/dashboards/checkout_ranker")
    page.fill("#key", analyst)
    page.click("button[type=submit]")
    page.wait_for_url(base + "/dashboards/checkout_ranker")
    shown = page.evaluate(LINEAGE_ROWS)
    api = requests.get(base + "/v1/experiments/checkout_ranker/models",
                       headers={"X-API-Key": reader}, timeout=10).json()  # fmt: skip
    expected = [
        [entry["variant"], m["served_by"], m["model_sha256"], m["provider"], m["predictions"],
         m["first_served_at"], m["last_served_at"], m["registry_version"], True]
        for entry in api["variants"] for m in entry["models"]
    ]  # fmt: skip
    assert shown == expected
    # The seed served 300 predictions per variant with traffic, a few by the control's model.
    served: dict[str, int] = {}
    for row in shown:
        served[row[0]] = served.get(row[0], 0) + row[4]
    assert set(served.values()) == {300} and len(served) >= 2
    assert any(row[0] != row[1] for row in shown)  # a fallback row
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator("#lineage").scroll_into_view_if_needed()
    page.screenshot(path=ARTIFACTS / "dashboard-lineage.png", full_page=False)

    # The downloaded report carries the same table, rendered from the file alone.
    report = requests.get(base + "/dashboards/checkout_ranker/report.html",
                          headers={"X-API-Key": analyst}, timeout=30)  # fmt: skip
    target = tmp_path / "report.html"
    target.write_bytes(report.content)
    offline = browser.new_page(viewport={"width": 1400, "height": 900})
    offline_problems = _watch(offline, "file://")
    offline.goto(target.as_uri())
    assert [row[:5] for row in offline.evaluate(LINEAGE_ROWS)] == [row[:5] for row in expected]
    assert problems == [] and offline_problems == []


HOSTILE = (
    '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2">'
    '<a href="https://evil.example/">click</a><a href="javascript:window.__xss=3">js</a>'
    '<svg onload="window.__xss = 4"></svg><b>bold</b>{{7*7}}'
)
LINKS = """() => Array.from(document.querySelectorAll('a')).map(a => a.getAttribute('href')
  || a.getAttribute('xlink:href') || '')"""


def test_stored_xss_renders_as_text_everywhere(
    browser: Any, server_factory: ServerFactory, db: str, experiments_dir: Path
) -> None:
    """Every string a user controls that can reach a page, made hostile, then rendered in
    Chromium: no script runs, no foreign link appears, nothing is fetched from elsewhere."""
    from service.experiments.validation import load_experiments

    source = experiments_dir / "retention_offer.yaml"
    text = source.read_text()
    yaml_hostile = HOSTILE.replace("'", "''")
    text = text.replace(
        "description: Time retention offers with the MLP churn model instead of the logistic one.",
        f"description: '{yaml_hostile}'",
    ).replace("owner: growth-team@example.com", f"owner: '{yaml_hostile}'")
    source.write_text(text)
    # Names that pages show are keys of a restricted alphabet: a hostile one never loads.
    (experiments_dir / "evil.yaml").write_text(
        source.read_text().replace("key: retention_offer", "key: '<b>evil</b>'")
    )
    refused = load_experiments([experiments_dir])
    assert any("evil.yaml" in str(problem) for problem in refused.problems)
    (experiments_dir / "evil.yaml").unlink()
    for field in ("variants", "metrics"):  # variant and metric names are keys too
        assert field in text
    server = server_factory(db, experiments_dir)
    api = Api(server.base_url)
    refused_key = api.post("/v1/keys", {"name": "<img src=x onerror=1>", "scopes": ["assign"]})
    assert refused_key.status_code == 422  # key names (actors on pages) are restricted too
    for action in ("pause", "resume", "pause"):
        answer = api.post("/v1/experiments/retention_offer/actions",
                          {"action": action, "reason": HOSTILE, "actor": "<b onclick=1>ana</b>"})  # fmt: skip
        assert answer.status_code == 201, answer.text
    event = {"event_id": "xss", "experiment": "retention_offer", "unit": "u1",
             "metric": "retained", "value": 1, "properties": {"note": HOSTILE}}  # fmt: skip
    assert api.post("/v1/events", {"events": [event]}).status_code == 202

    page = browser.new_page(viewport={"width": 1400, "height": 900})
    problems = _watch(page, server.base_url)
    page.goto(server.base_url + "/dashboards/login")
    page.fill("#key", make_key(db, "analyst", ["dashboards:read"]))
    page.click("button[type=submit]")
    page.wait_for_url(server.base_url + "/dashboards/")
    assert HOSTILE in page.locator("tr[data-key=retention_offer] td.name .muted").inner_text()
    page.goto(server.base_url + "/dashboards/retention_offer")
    page.wait_for_function(CHARTS_RENDERED, timeout=20_000)
    assert HOSTILE in page.locator("h1 + p").inner_text()
    cells = page.locator("#decision-table tbody tr td:nth-child(7)").all_inner_texts()
    assert len(cells) == 3 and all(cell.startswith(HOSTILE) for cell in cells)
    actors = page.locator("#decision-table tbody tr td:nth-child(5)").all_inner_texts()
    assert set(actors) == {"key:test-suite"}  # the key's name, never the body's
    # Plotly renders <a href> and markup in hover text: hover a decision and read the label.
    page.evaluate("() => Plotly.Fx.hover('fig-decisions', [{curveNumber: 0, pointNumber: 0}])")
    hover = page.locator("#fig-decisions .hoverlayer")
    assert "<a href=" in (hover.text_content() or "") and hover.locator("a").count() == 0
    for _ in (1, 2):
        links = page.evaluate(LINKS)
        assert not [h for h in links if h.startswith(("http", "//", "javascript"))], links
        assert page.evaluate("() => window.__xss") is None
        page.goto(server.base_url + "/dashboards/")
    page.screenshot(path=ARTIFACTS / "dashboard-xss.png", full_page=True)
    assert problems == []
