"""schemathesis over the live server's /openapi.json: generated requests to every documented
operation never get a 5xx (bad input is always a 4xx with the error contract)."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from ..support import serve_in_process


@pytest.fixture(scope="module")
def fuzz_target(rgb_repo, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("schema")
    images = tmp / "images"
    images.mkdir()
    server = serve_in_process([str(rgb_repo), "--allow-path-root", str(images), "--max-body",
                               str(2**20)], tmp)
    yield server
    assert server.stop() == 0


@pytest.fixture(scope="module")
def api_schema(fuzz_target):
    return schemathesis.openapi.from_url(fuzz_target.url + "/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                 HealthCheck.function_scoped_fixture])
def test_no_5xx_for_any_generated_request(case):
    response = case.call()
    assert response.status_code < 500, (case.method, case.path, response.text[:300])
    if response.status_code >= 400 and response.headers.get("content-type", [""])[0].startswith(
            "application/json"):
        body = response.json()
        if case.path.startswith(("/v2", "/v1")) and isinstance(body["error"], str):
            assert body["error"]  # a standard protocol's route: {"error": "<message>"}
            return
        if "results" in body:  # /api/predict: every model failed, each error under its name
            errors = [result["error"] for result in body["results"].values()]
        else:
            errors = [body["error"]]
        assert all({"code", "message"} <= set(error) for error in errors)
