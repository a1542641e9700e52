"""/openapi.json describes every route with real schemas; /docs renders it offline in Chromium;
schemathesis finds no server error against the live document."""

from __future__ import annotations

import re
import subprocess
import sys
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import sync_playwright

from ..e2e.test_page import CHROMIUM, CHROMIUM_ARGS
from ..support import rgb_model, serve_in_process


def test_document_covers_native_and_protocol_routes(repo_server):
    doc = repo_server.client.get("/openapi.json").json()
    paths = doc["paths"]
    for path in ("/api/models/{model}/predict", "/api/predict", "/api/models", "/healthz",
                 "/v2", "/v2/health/ready", "/v2/models/{model}/infer",
                 "/v2/models/{model}/versions/{version}/infer", "/v1/models/{model}:predict",
                 "/v1/models/{model}/labels/{label}:classify"):
        assert path in paths, path
    schemas = doc["components"]["schemas"]

    def body_of(path, method="post", status="200"):
        return paths[path][method]["responses"][status]["content"]["application/json"]["schema"]

    assert body_of("/api/models/{model}/predict")["$ref"].endswith("/PredictionBody")
    assert body_of("/api/models", "get")["$ref"].endswith("/ModelList")
    assert body_of("/api/models/{model}/predict", status="413")["$ref"].endswith("/Error")
    assert body_of("/v2/models/{model}/infer")["$ref"].endswith("/InferenceResponse")
    assert body_of("/v2/models/{model}/infer", status="400")["$ref"].endswith("/ProtocolError")
    assert body_of("/v1/models/{model}:classify")["$ref"].endswith("/ClassifyResponse")
    infer = paths["/v2/models/{model}/infer"]["post"]
    assert [p["name"] for p in infer["parameters"]] == ["model",
                                                         "Inference-Header-Content-Length"]
    request = infer["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert request == "#/components/schemas/InferenceRequest"
    assert set(schemas["InferenceRequest"]["properties"]) == {"id", "parameters", "inputs",
                                                             "outputs"}
    assert schemas["RequestInput"]["required"] == ["name", "shape", "datatype"]
    assert set(schemas["PredictionBody"]["properties"]) == {"id", "model", "version",
                                                           "predictions", "timings_ms"}
    refs = set(re.findall(r'"#/components/schemas/([^"]+)"', str(doc).replace("'", '"')))
    assert refs <= set(schemas), refs - set(schemas)


def test_docs_assets_are_served_locally(repo_server):
    page = repo_server.client.get("/docs")
    assert page.status_code == 200 and "swagger-ui" in page.text
    assets = re.findall(r'(?:href|src)="([^"]+)"', page.text)
    assert len(assets) == 4
    for asset in assets:
        assert not urlsplit(asset).netloc, asset  # same origin, no CDN
        assert repo_server.client.get(asset).status_code == 200, asset


@pytest.mark.browser
def test_docs_render_in_chromium_without_network(repo_server):
    requested: list[str] = []
    problems: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.on("request", lambda r: requested.append(r.url))
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(f"{repo_server.url}/docs")
            page.wait_for_selector(".swagger-ui .info .title", timeout=30_000)
            assert "modelhost" in page.inner_text(".swagger-ui .info .title")
            page.wait_for_selector(".opblock-summary-path", timeout=30_000)
            shown = page.locator(".opblock-summary-path").all_inner_texts()
            assert "/v2/models/{model}/infer" in [s.replace("\u200b", "") for s in shown]
            page.locator(".opblock-tag", has_text="kserve v2").first.wait_for()
            page.locator("#operations-kserve_v2-infer_v2_models__model__infer_post").click()
            example = page.locator(
                "#operations-kserve_v2-infer_v2_models__model__infer_post .body-param__example")
            example.first.wait_for()
            assert '"datatype"' in example.first.inner_text()  # the request schema rendered
        finally:
            browser.close()
    assert problems == []
    assert requested and all(url.startswith(repo_server.url) for url in requested), requested


@pytest.mark.slow
def test_schemathesis_finds_no_server_errors(tmp_path):
    """Generated requests against every documented operation (path names fixed to the served
    model so that they reach the model, not a 404): no 5xx, and every response matches its
    documented schema and content type."""
    rgb_model(tmp_path / "repo" / "rgb")
    config = tmp_path / "schemathesis.toml"
    config.write_text('[parameters]\n"path.model" = "rgb"\n"path.version" = "1"\n'
                      '"path.label" = "latest"\n')
    server = serve_in_process([str(tmp_path / "repo")], tmp_path)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run",
             f"{server.url}/openapi.json", "--checks",
             "not_a_server_error,response_schema_conformance,content_type_conformance",
             "--max-examples", "5", "--workers", "1", "--seed", "1", "--request-timeout", "30",
             "--suppress-health-check", "all", "--no-color"],
            capture_output=True, text=True, timeout=240, cwd=tmp_path,
        )
        assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
        assert re.search(r"\d+ generated, \d+ passed", done.stdout), done.stdout[-3000:]
        operations = sum(len(ops) for ops in
                         server.client.get("/openapi.json").json()["paths"].values())
        assert f"Tested: {operations}" in done.stdout, done.stdout[-3000:]  # none skipped
    finally:
        assert server.stop() == 0
