"""The ops port (``--ops-port``): /healthz, /readyz and /metrics from a thread of their own,
with the main port's answers, Host check, API keys and error contract."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest

from modelhost.assembly import build
from modelhost.http.ops_port import OpsPortError

from ..support import serve_in_process, settings_from_args
from .test_auth import cli_add_key


@pytest.fixture(scope="module")
def served(rgb_repo, tmp_path_factory):
    """A server with an ops port on a free port; its main and ops clients."""
    tmp = tmp_path_factory.mktemp("ops")
    server = serve_in_process([str(rgb_repo), "--ops-port", "0"], tmp)
    ops = httpx.Client(base_url=server.app.ops.url, timeout=30)
    yield server, ops
    ops.close()
    assert server.stop() == 0


def test_the_ops_port_answers_as_the_main_port(served):
    server, ops = served
    assert ops.get("/healthz").json() == server.client.get("/healthz").json() == {"status": "ok"}
    ours, theirs = ops.get("/readyz"), server.client.get("/readyz")
    assert ours.status_code == theirs.status_code == 200
    assert {k: v for k, v in ours.json().items() if k != "prediction_log"} == \
        {k: v for k, v in theirs.json().items() if k != "prediction_log"}
    assert ours.json()["models"]["rgb"]["state"] == "ready"
    server.client.post("/api/models/rgb/predict", content=_red_png(),
                       headers={"Content-Type": "image/png"})
    metrics = ops.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert 'modelhost_requests_total{model="rgb"' in metrics.text
    for response in (ours, metrics):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert "server" not in response.headers and response.headers["x-request-id"]
    head = ops.head("/healthz")
    assert head.status_code == 200 and head.content == b""


def test_the_ops_port_refuses_in_the_error_contract(served):
    server, ops = served
    missing = ops.get("/api/models")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    posted = ops.post("/readyz", content=b"x")
    assert posted.status_code == 405 and posted.headers["allow"] == "GET, HEAD"
    assert posted.json()["error"]["code"] == "method_not_allowed"
    odd = ops.request("BREW", "/healthz")
    assert odd.status_code == 405 and odd.json()["error"]["code"] == "method_not_allowed"
    port = int(server.app.ops.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"NOT A REQUEST\r\n\r\n")
        answer = b"".join(iter(lambda: sock.recv(4096), b"")).decode()  # until it closes
    assert answer.startswith("HTTP/1.1 400") and '"code":"malformed_request"' in answer
    foreign = ops.get("/healthz", headers={"Host": "evil.example"})
    main = server.client.get("/healthz", headers={"Host": "evil.example"})
    assert foreign.status_code == main.status_code >= 400, foreign.text
    assert foreign.json()["error"]["code"] == main.json()["error"]["code"]


def test_protected_ops_need_a_key_on_the_ops_port_too(rgb_repo, tmp_path):
    keys = tmp_path / "keys.txt"
    secret = cli_add_key(keys, "prometheus")
    server = serve_in_process([str(rgb_repo), "--ops-port", "0", "--api-keys", str(keys),
                               "--protect-ops"], tmp_path, wait_ready=False)
    try:
        ops = httpx.Client(base_url=server.app.ops.url, timeout=30)
        refused = ops.get("/metrics")
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
        assert refused.headers["www-authenticate"].startswith("Bearer")
        assert ops.get("/metrics", headers={"X-API-Key": secret}).status_code == 200
    finally:
        assert server.stop() == 0


def test_an_ops_port_in_use_stops_the_start_with_one_error(rgb_repo, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = settings_from_args([str(rgb_repo), "--ops-port", str(port), "--port", "0",
                                       "--db", f"sqlite:///{tmp_path / 'p.db'}"], None)
        application = build(settings)

        async def start_and_stop() -> None:
            try:
                await application.start()
            finally:
                await application.stop()

        with pytest.raises(OpsPortError, match=f"the ops port 127.0.0.1:{port} cannot be "
                                               "opened: Address already in use"):
            asyncio.run(start_and_stop())


def _red_png() -> bytes:
    from ..support import solid

    return solid((250, 10, 10))
