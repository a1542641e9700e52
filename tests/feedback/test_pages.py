"""Feedback from the web page and the dashboard, in headless Chromium against a live server:
the clicks are stored, the charts have content and the tables show the API's numbers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect

from ..e2e.test_page import browser, choose_model, open_page, upload  # noqa: F401 (fixture)
from ..support import serve_in_process, solid

pytestmark = pytest.mark.browser

COLOURS = {"red": (250, 10, 10), "green": (10, 250, 10), "blue": (10, 10, 250)}

@pytest.fixture(scope="module")
def server(model_repo, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pages")
    server = serve_in_process([str(model_repo), "--db", f"sqlite:///{tmp / 'log.db'}"], tmp)
    yield server
    assert server.stop() == 0

@pytest.fixture
def page(browser: Browser, server) -> Iterator[Page]:  # noqa: F811
    page = open_page(browser, server.url)
    yield page
    problems = list(page.problems)  # type: ignore[attr-defined]
    page.context.close()
    assert problems == [], "the page had script errors or CSP violations"

def accuracy(server) -> dict:
    return server.client.get("/api/models/rgb/accuracy").json()

def test_one_click_and_none_of_these_are_stored(page: Page, server, tmp_path):
    before = accuracy(server)["with_feedback"]
    picture = tmp_path / "green.png"
    picture.write_bytes(solid(COLOURS["green"]))
    choose_model(page, "rgb")
    upload(page, picture)
    choices = page.locator("#feedback-choices button")
    expect(choices).to_have_count(3)
    expect(choices.first).to_have_text("green")

    with page.expect_response(lambda r: r.url.endswith("/feedback")) as answer:
        choices.nth(1).click()  # "no, the second label is right"
    assert answer.value.status == 200
    expect(page.locator("#feedback-status")).to_contain_text("recorded")
    expect(choices.nth(1)).to_have_attribute("aria-pressed", "true")  # shown as chosen:
    style = "(el, pseudo) => getComputedStyle(el, pseudo)"
    assert choices.nth(1).evaluate(f"el => ({style})(el, '::before').content") == '"✓ "'
    backgrounds = [choices.nth(i).evaluate(f"el => ({style})(el, null).backgroundColor")
                   for i in range(3)]
    assert backgrounds[0] == backgrounds[2] != backgrounds[1]  # filled, the others outlined
    wrong = answer.value.json()
    assert wrong["correct"] is False and wrong["label"] in ("red", "blue")

    page.fill("#feedback-label", "purple")  # not a label of this model
    with page.expect_response(lambda r: r.url.endswith("/feedback")) as refused:
        page.click("[data-testid=feedback-send]")
    assert refused.value.status == 422
    expect(page.locator("#feedback-status")).to_contain_text("is not a label")

    page.fill("#feedback-label", "green")
    with page.expect_response(lambda r: r.url.endswith("/feedback")) as fixed:
        page.click("[data-testid=feedback-send]")
    assert fixed.value.status == 200
    after = accuracy(server)
    assert after["with_feedback"] == before + 1  # the same prediction, updated, not doubled
    assert after["rejected"] == [] or all(r["id"] != wrong["prediction_id"]
                                          for r in after["rejected"])

def test_dashboard_shows_the_apis_numbers(page: Page, server):
    for colour, label in [("red", "red"), ("red", "red"), ("green", "blue"), ("blue", "blue")]:
        answer = server.client.post("/api/models/rgb/predict",
                                    content=image_bytes_of(colour),
                                    headers={"Content-Type": "image/png"}).json()
        assert server.client.post(f"/api/predictions/{answer['id']}/feedback",
                                  json={"label": label}).status_code == 200
    expected = accuracy(server)

    page.goto(server.url + "/dashboard?model=rgb")
    page.wait_for_selector("body[data-loaded=true]")
    summary = page.locator("[data-testid=summary]")
    assert summary.locator("[data-key=predictions]").inner_text() == str(expected["predictions"])
    assert summary.locator("[data-key=with_feedback]").inner_text() == \
        str(expected["with_feedback"])
    assert summary.locator("[data-key=top1]").inner_text() == \
        f"{expected['top1']['rate'] * 100:.1f} %"
    table = [[c.strip() for c in row.split("\t")] for row in
             page.locator("[data-testid=labels-table] tbody tr").all_inner_texts()]
    assert table == [[r["label"], str(r["predicted"]), str(r["actual"]), str(r["hits"]),
                      _pct(r["precision"]), _pct(r["recall"])] for r in expected["labels"]]
    confusions = page.locator("[data-testid=confusions] tbody tr").all_inner_texts()
    assert len(confusions) == len(expected["confusions"]) >= 1

    for chart in ("chart-labels", "chart-accuracy", "chart-latency", "chart-throughput"):
        points = page.evaluate(
            "id => { const c = Chart.getChart(document.getElementById(id));"
            " return c.data.datasets.flatMap(d => d.data).filter(v => v !== null).length; }",
            chart)
        assert points > 0, chart
        drawn = page.evaluate(
            "id => { const c = document.getElementById(id);"
            " const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
            " let n = 0; for (let i = 3; i < px.length; i += 4) if (px[i]) n++; return n; }",
            chart)
        assert drawn > 500, chart  # pixels actually painted
    for chart in ("chart-accuracy", "chart-latency", "chart-throughput"):
        axis = page.evaluate(
            "id => { const c = Chart.getChart(document.getElementById(id)); const x = c.scales.x;"
            " return {type: x.type, min: x.min, max: x.max, tick: x.ticks[0].label,"
            " xs: c.data.datasets.flatMap(d => d.data).map(p => p.x)}; }", chart)
        assert axis["type"] == "linear", chart  # time, not evenly spaced categories
        # one time bucket: padded either side; several (a slow run crosses a bucket edge): the
        # axis runs from the first to the last, so the end points sit on it
        assert axis["min"] < axis["max"], (chart, axis)
        assert all(axis["min"] <= x <= axis["max"] for x in axis["xs"]), (chart, axis)
        if len(set(axis["xs"])) == 1:
            assert axis["min"] < axis["xs"][0] < axis["max"], (chart, axis)
        assert not axis["tick"].replace(",", "").isdigit(), axis  # a date, not epoch ms
    page.screenshot(path="/tmp/modelhost_dashboard.png", full_page=True)

def image_bytes_of(colour: str) -> bytes:
    return solid(COLOURS[colour])

def _pct(value) -> str:
    return "–" if value is None else f"{value * 100:.1f} %"


def test_the_url_field_only_when_urls_are_allowed_and_a_docs_link(browser, page: Page,  # noqa: F811
                                                                   repo_server):
    expect(page.locator("#url-form")).to_be_hidden()  # this server does not fetch URLs
    docs = page.locator("footer a[href=docs]")
    expect(docs).to_have_text("API docs")
    with page.expect_navigation():
        docs.click()
    assert page.url.endswith("/docs") and page.title()
    allowing = open_page(browser, repo_server.url)  # --allow-urls
    try:
        expect(allowing.locator("#url-form")).to_be_visible()
    finally:
        allowing.context.close()
