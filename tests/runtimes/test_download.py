"""``modelhost serve URL --sha256 HEX``: downloaded once into the cache, verified before use,
refused on a mismatch. The files come from a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import functools
import hashlib
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ..support import rgb_model, serve_in_process, solid


@pytest.fixture
def file_server(tmp_path):
    """Serves tmp_path/www on a free loopback port; records the paths requested."""
    www = tmp_path / "www"
    rgb_model(www)
    requested: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def do_GET(self):
            requested.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0),
                                 functools.partial(Handler, directory=str(www)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.www, server.requested = www, requested  # type: ignore[attr-defined]
    server.url = f"http://127.0.0.1:{server.server_address[1]}"  # type: ignore[attr-defined]
    yield server
    server.shutdown()
    server.server_close()


def _serve(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "modelhost.cli", "serve", *args, "--port", "0"],
                          capture_output=True, text=True, timeout=120, check=False)


def test_model_url_is_downloaded_once_and_served(file_server, tmp_path):
    digest = hashlib.sha256((file_server.www / "model.onnx").read_bytes()).hexdigest()
    cache = tmp_path / "cache"
    args = [f"{file_server.url}/model.onnx", "--sha256", digest, "--cache-dir", str(cache)]
    for run in range(2):
        server = serve_in_process(args, tmp_path)
        try:
            response = server.client.post("/api/models/model/predict",
                                          files={"image": ("g.png", solid((0, 250, 0)))})
            assert response.status_code == 200
            assert response.json()["predictions"][0]["index"] == 1  # green
        finally:
            assert server.stop() == 0
        assert file_server.requested == ["/model.onnx"], run  # the second start: from cache
    assert (cache / "downloads" / digest / "model.onnx").read_bytes() == \
        (file_server.www / "model.onnx").read_bytes()


def test_hash_mismatch_is_refused_and_nothing_is_kept(file_server, tmp_path):
    wrong = "0" * 64
    done = _serve([f"{file_server.url}/model.onnx", "--sha256", wrong,
                   "--cache-dir", str(tmp_path / "cache")])
    assert done.returncode == 2
    assert f"SHA-256 mismatch: expected {wrong}, downloaded " in done.stderr
    assert "the file was not used" in done.stderr
    assert not any(p.is_file() for p in (tmp_path / "cache").rglob("*"))


def test_model_url_needs_a_hash(file_server, tmp_path):
    done = _serve([f"{file_server.url}/model.onnx", "--cache-dir", str(tmp_path)])
    assert done.returncode == 2
    assert "a model URL needs --sha256" in done.stderr
    assert file_server.requested == []


def test_missing_file_is_reported(file_server, tmp_path):
    done = _serve([f"{file_server.url}/nothing.onnx", "--sha256", "a" * 64,
                   "--cache-dir", str(tmp_path)])
    assert done.returncode == 2
    assert "nothing.onnx: HTTP 404" in done.stderr
