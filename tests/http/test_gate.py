"""The gate: one pure-ASGI door, its policies in order, refusals in the route's dialect."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from modelhost.access.keys import KeyRing, add_key
from modelhost.access.limits import Limiter, limit_item
from modelhost.errors import TooLarge
from modelhost.http.auth import KeyPolicy
from modelhost.http.crosssite import CrossSitePolicy
from modelhost.http.gate import BodyLimit, Gate
from modelhost.http.hosts import HostPolicy
from modelhost.http.ratelimit import RatePolicy


async def _echo(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse({"key": request.state.api_key_name, "bytes": len(body),
                         "request_id": request.state.request_id})


@pytest.fixture
def gated(tmp_path):
    keys = tmp_path / "keys"
    secret = add_key(keys, "alice")
    inner = Starlette(routes=[Route("/{path:path}", _echo, methods=["GET", "POST"])])
    app = Gate(inner, hosts=HostPolicy("127.0.0.1"), crosssite=CrossSitePolicy(),
               keys=KeyPolicy(KeyRing.load(keys)), rate=RatePolicy(Limiter(limit_item("2/s", 2))),
               body=BodyLimit(100))
    return app, secret


def call(app, method: str, path: str, **kwargs) -> httpx.Response:
    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://localhost") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(go())


def test_policies_apply_in_order_host_crosssite_key_rate_body(gated):
    app, secret = gated
    cross = {"origin": "https://evil.example"}
    # a wrong Host wins over everything after it
    r = call(app, "POST", "/api/x", headers={"host": "evil.example", **cross}, content=b"0" * 200)
    assert r.status_code == 400 and r.json()["error"]["code"] == "malformed_request"
    # then cross-site, before the missing key
    r = call(app, "POST", "/api/x", headers=cross, content=b"0" * 200)
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    # then the key, before the body limit
    r = call(app, "POST", "/api/x", content=b"0" * 200)
    assert r.status_code == 401 and r.headers["www-authenticate"] == 'Bearer realm="modelhost"'
    auth = {"authorization": f"Bearer {secret}"}
    # then the body limit (the key passed and was counted)
    r = call(app, "POST", "/api/x", headers=auth, content=b"0" * 200)
    assert r.status_code == 413 and r.headers["connection"] == "close"
    # a good request reaches the app with the key's name, counted against its budget
    r = call(app, "POST", "/api/x", headers=auth, content=b"0" * 10)
    assert r.status_code == 200 and r.json()["key"] == "alice" and r.json()["bytes"] == 10
    assert r.headers["ratelimit-remaining"] == "0"
    assert r.headers["x-request-id"] == r.json()["request_id"]
    assert r.headers["x-content-type-options"] == "nosniff"
    # over the budget: 429 with Retry-After and the RateLimit headers, before the body limit
    r = call(app, "POST", "/api/x", headers=auth, content=b"0" * 200)
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert r.headers["ratelimit-limit"] == "2"


@pytest.mark.parametrize("path", ["/v2/models/m/infer", "/v1/models/m:predict"])
def test_refusals_on_protocol_routes_use_the_protocol_dialect(gated, path):
    app, _ = gated
    r = call(app, "POST", path, content=b"{}", headers={"x-request-id": "abc-1"})
    assert r.status_code == 401 and r.json() == {"error": r.json()["error"]}
    assert isinstance(r.json()["error"], str) and r.headers["x-error-code"] == "unauthorized"
    assert r.headers["x-request-id"] == "abc-1"


def test_a_streamed_body_over_the_limit_is_refused_like_a_declared_one(gated):
    app, secret = gated

    async def chunks():
        for _ in range(5):
            yield b"0" * 50

    headers = {"authorization": f"Bearer {secret}", "x-request-id": "same"}
    # the same refusal, raised while the app reads: the app's error handler renders it
    # (tests/test_predictor.py checks the rendered responses on the real app)
    with pytest.raises(TooLarge) as raised:
        call(app, "POST", "/api/x", headers=headers, content=chunks())
    assert raised.value.code == "body_too_large"
    assert raised.value.message == "the request body is over 100 bytes"
    assert raised.value.headers == {"Connection": "close"}
