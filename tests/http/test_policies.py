"""Default-off input sources, the SSRF guard and slow senders, on a server with safe defaults."""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ..support import rgb_model, serve_in_process


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("strict")
    rgb_model(tmp / "repo" / "rgb")
    server = serve_in_process([str(tmp / "repo"), "--timeout", "2"], tmp)
    yield server
    assert server.stop() == 0


@pytest.fixture(scope="module")
def url_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("urls")
    rgb_model(tmp / "repo" / "rgb")
    server = serve_in_process([str(tmp / "repo"), "--allow-urls"], tmp)
    yield server
    assert server.stop() == 0


def test_urls_and_paths_are_off_by_default(strict_server):
    client = strict_server.client
    by_url = client.post("/api/models/rgb/predict", json={"url": "http://example.com/a.jpg"})
    assert by_url.status_code == 422 and by_url.json()["error"]["code"] == "url_not_allowed"
    by_path = client.get("/api/models/rgb/predict", params={"path": "a.jpg"})
    assert by_path.status_code == 404 and by_path.json()["error"]["code"] == "not_found"


class _Canary(BaseHTTPRequestHandler):
    hits = 0

    def do_GET(self):
        type(self).hits += 1
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "2130706433", "127.1",
                                  "[::ffff:127.0.0.1]", "0.0.0.0"])
def test_private_addresses_are_refused_and_never_contacted(url_server, host):
    canary = ThreadingHTTPServer(("127.0.0.1", 0), _Canary)
    threading.Thread(target=canary.serve_forever, daemon=True).start()
    try:
        url = f"http://{host}:{canary.server_port}/x.jpg"
        response = url_server.client.post("/api/models/rgb/predict", json={"url": url})
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "url_not_allowed"
        assert _Canary.hits == 0
    finally:
        canary.shutdown()
        canary.server_close()


def test_a_client_too_slow_to_send_its_body_gets_408(strict_server):
    port = int(strict_server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /api/models/rgb/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: image/png\r\nContent-Length: 1000\r\n\r\n" + b"\x89PNG")
        started = time.monotonic()
        sock.settimeout(10)
        reply = ""
        while "request_timeout" not in reply and (chunk := sock.recv(65536)):
            reply += chunk.decode(errors="replace")
    assert reply.startswith("HTTP/1.1 408"), reply
    assert '"request_timeout"' in reply and 1.5 < time.monotonic() - started < 5
    assert strict_server.client.get("/healthz").status_code == 200
