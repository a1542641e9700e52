"""Two versions compared on feedback: the statistics against independent references (SciPy's
chi-square test and Wilson interval, the textbook sample-size formula), and the compare
endpoint on a real server with two real versions, feedback sent for each version's
predictions and shadow pairs, giving the numbers worked out by hand."""

from __future__ import annotations

import math
import time

import orjson
import pytest
from playwright.sync_api import expect
from scipy.stats import binomtest, chi2_contingency
from typer.testing import CliRunner

from modelhost.cli import app
from modelhost.feedback.compare import more_needed, two_proportions

from ..e2e.test_page import browser, open_page  # noqa: F401 (fixture)
from ..support import serve_in_process, solid, two_versions


@pytest.mark.parametrize(("hits_a", "n_a", "hits_b", "n_b"),
                         [(34, 40, 22, 40), (50, 100, 60, 100), (7, 9, 3, 11), (10, 10, 9, 10)])
def test_two_proportions_against_scipy(hits_a, n_a, hits_b, n_b):
    test = two_proportions(hits_a, n_a, hits_b, n_b)
    table = [[hits_a, n_a - hits_a], [hits_b, n_b - hits_b]]
    assert test["p_value"] == pytest.approx(chi2_contingency(table, correction=False).pvalue,
                                            rel=1e-6)
    p_a, p_b = hits_a / n_a, hits_b / n_b
    half = 1.959964 * math.sqrt(p_a * (1 - p_a) / n_a + p_b * (1 - p_b) / n_b)
    assert test["difference"] == pytest.approx(p_b - p_a, abs=1e-6)
    assert test["ci95"] == pytest.approx([p_b - p_a - half, p_b - p_a + half], abs=1e-6)


def test_feedback_needed_matches_the_textbook():
    # 50 % against 60 %, 5 % two-sided, 80 % power: 388 per group (no continuity correction)
    assert more_needed({"rate": 0.5, "total": 0}, {"rate": 0.6, "total": 0}) == 388
    assert more_needed({"rate": 0.5, "total": 100}, {"rate": 0.6, "total": 150}) == 288
    assert more_needed({"rate": 0.5, "total": 10}, {"rate": 0.5, "total": 10}) is None


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare")
    two_versions(tmp / "repo" / "m", '[versions]\nserve = "all"\ndefault = "1"\nshadow = "2"\n')
    live = serve_in_process([str(tmp / "repo")], tmp)
    yield live
    assert live.stop() == 0


def predict(server, path: str, colour=(255, 0, 0)) -> str:
    response = server.client.post(path, content=solid(colour),
                                  headers={"Content-Type": "image/png"})
    assert response.status_code == 200, response.text
    return response.json()["id"]


def feedback(server, prediction_id: str, label: str) -> None:
    response = server.client.post(f"/api/predictions/{prediction_id}/feedback",
                                  json={"label": label})
    assert response.status_code == 200, response.text


def wilson(hits: int, n: int) -> list[float]:
    low, high = binomtest(hits, n).proportion_ci(method="wilson")
    return [low, high]


@pytest.fixture(scope="module")
def compared(server) -> dict:
    """The predictions and feedback every test here compares, made once per server (whichever
    test runs first), and the compare endpoint's answer once all of it is stored."""
    # version 1: 50 named predictions (red → "red"); users confirm 34, say "blue" for 6
    ones = [predict(server, "/api/models/m/versions/1/predict") for _ in range(50)]
    for i, pid in enumerate(ones[:40]):
        feedback(server, pid, "red" if i < 34 else "blue")
    # version 2: 50 named predictions (red → "green"); 22 confirmed, 18 called "blue"
    twos = [predict(server, "/api/models/m/versions/2/predict") for _ in range(50)]
    for i, pid in enumerate(twos[:40]):
        feedback(server, pid, "green" if i < 22 else "blue")
    # 15 unnamed: answered by 1, shadowed on 2; red disagrees (red/green), grey agrees
    for colour in [(255, 0, 0)] * 10 + [(128, 128, 128)] * 5:
        predict(server, "/api/models/m/predict", colour)
    deadline = time.monotonic() + 60  # records reach the database from the journal
    while True:
        body = server.client.get("/api/models/m/versions/compare?a=1&b=2").json()
        one, two = body["versions"]["1"], body["versions"]["2"]
        stored = (one["predictions"], two["predictions"], body["shadow_agreement"]["total"],
                  one["with_feedback"], two["with_feedback"])
        if stored == (65, 50, 15, 40, 40) or time.monotonic() > deadline:
            return body
        time.sleep(0.1)


def test_compare_endpoint_gives_the_hand_worked_numbers(compared):
    body = compared
    one, two = body["versions"]["1"], body["versions"]["2"]
    assert (one["predictions"], one["with_feedback"]) == (65, 40)
    assert (two["predictions"], two["with_feedback"]) == (50, 40)
    assert two["feedback_share"] == pytest.approx(0.8)
    assert (one["top1"]["rate"], two["top1"]["rate"]) == (0.85, 0.55)
    assert one["top1"]["ci95"] == pytest.approx(wilson(34, 40), abs=1e-6)
    assert two["top1"]["ci95"] == pytest.approx(wilson(22, 40), abs=1e-6)
    # top-3 of a 3-label model holds every label: each named label is in it
    assert (one["topk"]["k"], one["topk"]["rate"], two["topk"]["rate"]) == (3, 1.0, 1.0)
    red = next(r for r in one["labels"] if r["label"] == "red")
    assert (red["precision"], red["recall"]) == (0.85, 1.0)
    blue = next(r for r in two["labels"] if r["label"] == "blue")
    assert (blue["predicted"], blue["actual"], blue["recall"]) == (0, 18, 0.0)
    test = body["top1_test"]
    reference = chi2_contingency([[34, 6], [22, 18]], correction=False).pvalue
    assert test["difference"] == pytest.approx(-0.30)
    assert test["p_value"] == pytest.approx(reference, rel=1e-6)
    assert reference == pytest.approx(0.003, abs=0.0005)  # χ² = 8.57 on 1 degree of freedom
    half = 1.959964 * math.sqrt(0.85 * 0.15 / 40 + 0.55 * 0.45 / 40)
    assert test["ci95"] == pytest.approx([-0.30 - half, -0.30 + half], abs=1e-6)
    agreement = body["shadow_agreement"]
    assert (agreement["hits"], agreement["total"]) == (5, 15)
    assert agreement["ci95"] == pytest.approx(wilson(5, 15), abs=1e-6)
    assert body["verdict"].startswith("1 is better than 2: top-1 30.0 points higher (p = 0.003")


def test_compare_errors(server):
    same = server.client.get("/api/models/m/versions/compare?a=1&b=1")
    assert same.status_code == 422 and same.json()["error"]["code"] == "invalid_parameter"
    missing = server.client.get("/api/models/m/versions/compare?a=1")
    assert missing.status_code == 422
    unknown = server.client.get("/api/models/nope/versions/compare?a=1&b=2")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"


def test_report_compare_prints_what_the_api_answers(server, compared):
    api = server.client.get("/api/models/m/versions/compare?a=1&b=2").json()
    runner = CliRunner()
    as_json = runner.invoke(app, ["report", "m", "--db", server.settings.db,
                                  "--compare", "1", "2", "--json"])
    assert as_json.exit_code == 0, as_json.output
    printed = orjson.loads(as_json.output)
    assert printed["versions"] == api["versions"] and printed["verdict"] == api["verdict"]
    assert printed["top1_test"] == api["top1_test"]
    table = runner.invoke(app, ["report", "m", "--db", server.settings.db,
                                "--compare", "1", "2"])
    assert table.exit_code == 0, table.output
    assert "85.0 % (34/40)" in table.output and "55.0 % (22/40)" in table.output
    assert "shadow agreement: 33.3 % (5/15)" in table.output
    assert f"verdict: {api['verdict']}" in table.output


@pytest.mark.browser
def test_dashboard_compares_the_versions_side_by_side(browser, server, compared):  # noqa: F811
    assert server.client.put("/api/models/m/routing", json={"sticky": True}).status_code == 200
    api = server.client.get("/api/models/m/versions/compare?a=1&b=2").json()
    page = open_page(browser, server.url)
    try:
        page.goto(server.url + "/dashboard?model=m&window=")
        page.select_option("#window", "")  # everything
        page.wait_for_selector("body[data-loaded=true]")
        expect(page.locator("[data-testid=compare-panel]")).to_be_visible()
        rows = [[c.strip() for c in row.split("\t")] for row in
                page.locator("[data-testid=compare-table] tbody tr").all_inner_texts()]
        one, two = api["versions"]["1"], api["versions"]["2"]
        assert rows[:2] == [["Predictions", str(one["predictions"]), str(two["predictions"])],
                            ["With feedback", "40", "40"]]
        assert rows[3] == ["Top-1 accuracy", "85.0 % (34/40)", "55.0 % (22/40)"]
        low, high = (f"{v * 100:.1f} %" for v in one["top1"]["ci95"])
        assert rows[4][1] == f"{low} – {high}"
        test = page.locator("[data-testid=compare-test]")
        assert test.locator("[data-key=difference]").inner_text() == "-30.0 points"
        assert test.locator("[data-key=p_value]").inner_text() == \
            f"{api['top1_test']['p_value']:.2g}"
        assert test.locator("[data-key=agreement]").inner_text().startswith("33.3 % (5/15)")
        assert test.locator("[data-key=verdict]").inner_text() == api["verdict"]
        changes = page.locator("[data-testid=routing-changes] tbody tr").all_inner_texts()
        assert len(changes) == 1 and "\tset\t1\t" in changes[0]
        drawn = page.evaluate(
            "() => Chart.getChart(document.getElementById('chart-compare'))"
            ".data.datasets.filter(d => d.data.length).length")
        assert drawn == 6  # each version: its rate and the two ends of its interval
        assert page.problems == []  # type: ignore[attr-defined]
    finally:
        page.context.close()
