"""The web page and the dashboard on a server with API keys, in headless Chromium: the page asks
for a key when the server answers 401, refuses a wrong one, and with the right one predicts,
sends feedback and draws the dashboard — every API call carrying the key."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, Request, expect

from ..e2e.test_page import browser, choose_model, open_page, top_label, upload  # noqa: F401
from ..support import serve_in_process, solid
from .test_auth import cli_add_key

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def keyed(rgb_repo, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("page_keys")
    keys = tmp / "keys.txt"
    secret = cli_add_key(keys, "browser")
    server = serve_in_process([str(rgb_repo), "--api-keys", str(keys)], tmp)
    yield server, secret
    assert server.stop() == 0


@pytest.fixture
def page(browser: Browser, keyed) -> Iterator[Page]:  # noqa: F811
    page = open_page(browser, keyed[0].url)
    yield page
    problems = list(page.problems)  # type: ignore[attr-defined]
    page.context.close()
    assert problems == [], "the page had script errors or CSP violations"


def test_the_page_asks_for_a_key_and_then_works(page: Page, keyed, tmp_path):
    server, secret = keyed
    form = page.locator("[data-testid=key-form]")
    expect(form).to_be_visible()
    expect(page.locator("#key-message")).to_have_text("This server needs an API key.")

    page.fill("[data-testid=key-input]", secret + "-wrong")
    page.click("[data-testid=key-submit]")  # the page reloads with the key
    expect(page.locator("#key-message")).to_contain_text("did not accept")

    page.fill("[data-testid=key-input]", secret)
    page.click("[data-testid=key-submit]")
    choose_model(page, "rgb")
    expect(form).to_have_count(0)  # the key was accepted: nothing to ask
    sent: list[Request] = []
    page.on("request", lambda r: sent.append(r) if "/api/" in r.url else None)
    picture = tmp_path / "blue.png"
    picture.write_bytes(solid((10, 10, 250)))
    upload(page, picture)
    expect(top_label(page)).to_have_text("blue")
    with page.expect_response(lambda r: r.url.endswith("/feedback")) as answer:
        page.locator("#feedback-choices button").first.click()
    assert answer.value.status == 200
    assert sent and all(r.headers.get("authorization") == f"Bearer {secret}" for r in sent)
    assert secret not in server.log()

    page.goto(server.url + "/dashboard?model=rgb")  # the same tab keeps the key
    page.wait_for_selector("body[data-loaded=true]")
    expect(page.locator("[data-testid=summary] [data-key=with_feedback]")).not_to_have_text("0")
    expect(form).to_have_count(0)

    page.click("[data-testid=key-forget]")
    expect(form).to_be_visible()  # after the reload the server answers 401 again
