"""Cross-site requests and markup injection, with raw headers and in real headless Chromium."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image
from playwright.sync_api import expect, sync_playwright

from ..e2e.test_page import CHROMIUM, CHROMIUM_ARGS, choose_model, is_predict
from ..support import image_bytes, rgb_model, serve_in_process, solid

EVIL_LABELS = ("<script>document.body.dataset.pwned='script'</script>",
               "<img src=x onerror=\"document.body.dataset.pwned='img'\">",
               "blue</li><li>injected")
RED = solid((250, 10, 10))


@pytest.fixture(scope="module")
def evil_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("crosssite")
    rgb_model(tmp / "repo" / "rgb", labels=EVIL_LABELS)
    server = serve_in_process([str(tmp / "repo"), "--allowed-origins", "https://app.example.com"],
                              tmp)
    yield server
    assert server.stop() == 0


def post(server, headers):
    return server.client.post("/api/models/rgb/predict", content=RED,
                              headers={"Content-Type": "image/png", **headers})


@pytest.mark.parametrize("headers", [
    {"Origin": "http://evil.example"},
    {"Origin": "null"},
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},
    {"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"},
])
def test_cross_site_posts_are_403(evil_server, headers):
    response = post(evil_server, headers)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"


def test_api_clients_same_origin_pages_and_listed_origins_pass(evil_server):
    own = evil_server.url
    for headers in ({}, {"Origin": own, "Sec-Fetch-Site": "same-origin"},
                    {"Sec-Fetch-Site": "none"}, {"Origin": "https://app.example.com"},
                    {"Origin": "https://APP.example.com/", "Sec-Fetch-Site": "cross-site"}):
        response = post(evil_server, headers)
        assert response.status_code == 200, (headers, response.text)
        assert response.json()["predictions"][0]["label"] == EVIL_LABELS[0]
    # reading is never refused
    listed = evil_server.client.get("/api/models", headers={"Origin": "http://evil.example"})
    assert listed.status_code == 200


class _Attacker(BaseHTTPRequestHandler):
    """Serves a page on another origin that posts to the model server two ways."""

    target = ""

    def do_GET(self):
        body = f"""<!doctype html><html><body>
<form id=f method=post enctype="multipart/form-data" action="{self.target}">
<input name=url value="http://example.com/x.jpg"></form>
<script>
fetch("{self.target}", {{method: "POST", mode: "no-cors", body: "not an image",
                        headers: {{"Content-Type": "text/plain"}}}})
  .finally(() => document.getElementById("f").submit());
</script></body></html>""".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.mark.browser
def test_a_cross_site_form_and_fetch_are_refused_in_chromium(evil_server, browser):
    _Attacker.target = evil_server.url + "/api/models/rgb/predict"
    attacker = ThreadingHTTPServer(("127.0.0.1", 0), _Attacker)
    threading.Thread(target=attacker.serve_forever, daemon=True).start()
    before = evil_server.log().count("cross-site request refused")
    context = browser.new_context()
    try:
        page = context.new_page()
        # "localhost" and "127.0.0.1" are different sites to the browser.
        with page.expect_response(lambda r: r.request.method == "POST"
                                  and r.request.resource_type == "document") as answer:
            page.goto(f"http://localhost:{attacker.server_port}/")
        assert answer.value.status == 403
        assert '"forbidden"' in answer.value.text()
        deadline = time.monotonic() + 15  # lines land from a writer thread: wait for both
        while (evil_server.log().count("cross-site request refused") - before < 2
               and time.monotonic() < deadline):
            time.sleep(0.05)
        assert evil_server.log().count("cross-site request refused") - before == 2
    finally:
        context.close()
        attacker.shutdown()
        attacker.server_close()
    metrics = evil_server.client.get("/metrics").text
    assert 'route="predict",status="422"' not in metrics  # the url form never reached a route


@pytest.mark.browser
def test_labels_and_file_names_with_markup_show_as_text(evil_server, browser, tmp_path):
    context = browser.new_context()
    problems: list[str] = []
    try:
        page = context.new_page()
        page.on("pageerror", lambda exc: problems.append(str(exc)))
        page.on("dialog", lambda dialog: problems.append(f"dialog {dialog.message}"))
        page.goto(evil_server.url + "/")
        choose_model(page, "rgb")
        evil_name = "<img src=x onerror=\"document.body.dataset.pwned='name'\">.png"
        with page.expect_response(lambda r: is_predict(r.request)) as answer:
            page.set_input_files("#file", files=[{
                "name": evil_name, "mimeType": "image/png",
                "buffer": image_bytes(Image.new("RGB", (40, 40), (250, 10, 10)))}])
        assert answer.value.ok, answer.value.text()
        labels = page.locator("#results li .label")
        expect(labels.first).to_have_text(EVIL_LABELS[0])
        assert labels.all_inner_texts() == list(EVIL_LABELS)
        expect(page.locator("#file-name")).to_contain_text(evil_name)
        assert page.locator("#results img, #results script, #file-name img").count() == 0
        assert page.evaluate("document.body.dataset.pwned") is None
    finally:
        context.close()
    assert problems == []
