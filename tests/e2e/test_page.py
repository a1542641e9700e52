"""The web page at `/`, driven in headless Chromium against a real demo server.

`demo_server` (tests/conftest.py) yields the base URL of a modelhost server with the demo models
`imagenet`, `digits` and `colors`. Chromium is Debian's, driven by Playwright's sync API.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Page,
    Request,
    expect,
    sync_playwright,
)

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("MODELHOST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 60_000  # a first prediction may wait for a worker to warm up
SCREENSHOT = Path("/tmp/modelhost_page.png")
PREDICT_PATH = re.compile(r"/api/models/[^/]+/predict(\?|$)")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def open_page(browser: Browser, base_url: str, width: int = 1280, height: int = 900) -> Page:
    """A fresh page at `/` that records script errors and CSP violations in `page.problems`."""
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    problems: list[str] = []

    def on_console(msg: ConsoleMessage) -> None:
        if msg.type == "error" and "Content Security Policy" in msg.text:
            problems.append(f"console: {msg.text}")

    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("console", on_console)
    page.problems = problems  # type: ignore[attr-defined]
    page.goto(base_url + "/")
    return page


@pytest.fixture
def page(browser: Browser, demo_server: str) -> Iterator[Page]:
    page = open_page(browser, demo_server)
    yield page
    problems = list(page.problems)  # type: ignore[attr-defined]
    page.context.close()
    assert problems == [], "the page had script errors or CSP violations"


def choose_model(page: Page, name: str) -> None:
    """Wait until the model is listed as ready (the page polls while models load), select it."""
    page.wait_for_function(
        "name => { const o = document.querySelector(`#model option[value='${name}']`);"
        " return !!o && o.dataset.state === 'ready' && !o.disabled; }",
        arg=name,
    )
    page.select_option("#model", name)
    expect(page.locator("#model")).to_have_value(name)


def is_predict(request: Request) -> bool:
    return request.method == "POST" and bool(PREDICT_PATH.search(request.url))


def upload(page: Page, path: Path) -> None:
    """Choose a file and wait until the page's prediction request has been answered."""
    with page.expect_response(lambda r: is_predict(r.request)):
        page.set_input_files("#file", str(path))


def top_label(page: Page):
    return page.locator("#results li").first.locator(".label")


def score_percent(text: str) -> float:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*%\s*", text)
    assert match, f"score text {text!r} is not a percentage"
    return float(match.group(1))


@pytest.fixture
def coffee_jpeg(tmp_path: Path) -> Path:
    from skimage import data

    path = tmp_path / "coffee.jpg"
    Image.fromarray(data.coffee()).save(path, quality=92)
    return path


@pytest.fixture
def red_blue_png(tmp_path: Path) -> Path:
    """400x200 pixels: the left half pure red, the right half pure blue."""
    image = Image.new("RGB", (400, 200), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 200, 200))
    path = tmp_path / "red_blue.png"
    image.save(path)
    return path


def test_imagenet_recognises_the_coffee_photo(page: Page, coffee_jpeg: Path) -> None:
    choose_model(page, "imagenet")
    upload(page, coffee_jpeg)

    expect(top_label(page)).to_contain_text("espresso")
    first = page.locator("#results li").first
    assert score_percent(first.locator(".score").inner_text()) > 90
    meter = first.locator("meter")
    assert float(meter.get_attribute("value") or 0) > 0.9
    expect(page.locator("#results li")).to_have_count(5)  # the model's top_k
    expect(page.locator("#prediction-id")).to_have_text(re.compile(r"\S"))
    expect(page.locator("#timings")).to_be_visible()
    expect(page.locator("#timings")).to_contain_text("Total")
    expect(page.locator("#error")).to_be_hidden()
    expect(page.locator("#preview")).to_be_visible()
    assert page.locator("#preview").get_attribute("data-natural-width") == "600"

    page.screenshot(path=str(SCREENSHOT), full_page=True)


def test_clicking_the_preview_sets_the_crop_point(page: Page, red_blue_png: Path) -> None:
    choose_model(page, "colors")
    upload(page, red_blue_png)
    preview = page.locator("#preview")
    expect(preview).to_be_visible()
    expect(page.locator("#results li")).not_to_have_count(0)
    box = preview.bounding_box()
    assert box is not None

    for fx, natural_x, colour in [(0.25, 100, "red"), (0.75, 300, "blue")]:
        with page.expect_response(lambda r: is_predict(r.request)) as answer:
            preview.click(position={"x": box["width"] * fx, "y": box["height"] * 0.5})
        assert answer.value.ok, answer.value.text()
        # The click became natural-image pixel coordinates (±2 px for the preview's scaling).
        point = page.locator("#point")
        assert abs(int(point.get_attribute("data-x") or -99) - natural_x) <= 2
        assert abs(int(point.get_attribute("data-y") or -99) - 100) <= 2
        expect(top_label(page)).to_have_text(colour)

    # Clearing the point predicts on the whole image again.
    with page.expect_response(lambda r: is_predict(r.request)) as answer:
        page.click("#clear-point")
    assert answer.value.ok
    assert page.locator("#point").get_attribute("data-x") is None
    expect(page.locator("#clear-point")).to_be_disabled()


def test_a_corrupt_file_shows_the_api_error(page: Page, tmp_path: Path) -> None:
    path = tmp_path / "x.jpg"
    path.write_bytes(b"not an image\0" + random.Random(7).randbytes(4096))
    choose_model(page, "imagenet")
    upload(page, path)

    error = page.locator("#error")
    expect(error).to_be_visible()
    expect(error.locator(".error-message")).to_have_text(re.compile(r"\w"))
    expect(error).to_contain_text(re.compile(r"HTTP 4\d\d"))
    expect(page.locator("#results li")).to_have_count(0)
    expect(page.locator("#prediction-id")).to_have_text("")


def test_server_text_is_shown_as_text_never_html(page: Page, tmp_path: Path) -> None:
    """Labels and messages may contain markup; the page must show it, not run it."""
    evil = "<img src=x onerror=\"document.body.dataset.pwned='1'\"><script>1</script>"
    answers = iter(
        [
            {
                "status": 200,
                "json": {
                    "id": "<b>id</b>",
                    "model": "imagenet",
                    "version": "1",
                    "predictions": [{"label": evil, "index": 0, "score": 0.5}],
                    "timings_ms": {"total": 1.0},
                },
            },
            {
                "status": 422,
                "json": {
                    "error": {"code": "invalid_parameter", "message": evil, "request_id": "r1"}
                },
            },
        ]
    )
    page.route(PREDICT_PATH, lambda route: route.fulfill(**next(answers)))
    image = tmp_path / "grey.png"
    Image.new("RGB", (32, 32), (128, 128, 128)).save(image)
    choose_model(page, "imagenet")

    upload(page, image)
    expect(top_label(page)).to_have_text(evil)
    expect(page.locator("#prediction-id")).to_have_text("<b>id</b>")
    upload(page, image)
    expect(page.locator("#error .error-message")).to_have_text(evil)
    assert page.locator("#results img, #error img, #results script, #error script").count() == 0
    assert page.evaluate("document.body.dataset.pwned") is None


def test_narrow_screen_and_keyboard_only(
    browser: Browser, demo_server: str, coffee_jpeg: Path
) -> None:
    page = open_page(browser, demo_server, width=360, height=740)
    try:
        choose_model(page, "imagenet")
        assert page.evaluate("document.documentElement.scrollWidth") <= 360

        # Listening early lets Playwright intercept the chooser before the key is pressed (the
        # interception is switched on asynchronously when the first listener is added).
        page.on("filechooser", lambda _chooser: None)

        # Tab from the top of the page to the file chooser (the input or its drop zone).
        page.locator("body").focus()
        focused = None
        for _ in range(25):
            page.keyboard.press("Tab")
            focused = page.evaluate("document.activeElement && document.activeElement.id")
            if focused in ("file", "dropzone"):
                break
        assert focused in ("file", "dropzone"), f"Tab never reached the file chooser ({focused})"
        outline = page.evaluate(
            "getComputedStyle(document.querySelector('#dropzone')).outlineStyle"
        )
        assert outline not in ("", "none"), "the focused drop zone shows no focus ring"

        # Enter opens the chooser; the chosen file is classified.
        with page.expect_file_chooser() as chooser:
            page.keyboard.press("Enter")
        with page.expect_response(lambda r: is_predict(r.request)):
            chooser.value.set_files(str(coffee_jpeg))
        expect(top_label(page)).to_contain_text("espresso")

        # Still no horizontal scrolling with the preview and the results on the page.
        expect(page.locator("#preview")).to_be_visible()
        assert page.evaluate("document.documentElement.scrollWidth") <= 360
        assert page.problems == []  # type: ignore[attr-defined]
    finally:
        page.context.close()
