"""modelhost.Client and modelhost.AsyncClient against a real server with real models."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import modelhost
from modelhost.errors import InvalidInput, ModelhostError, NotFound, UnsupportedMedia

from .support import halves, image_bytes, solid

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


@pytest.fixture
def client(repo_server):
    with modelhost.Client(repo_server.url) as c:
        yield c


def test_import_is_light_until_a_client_is_used():
    code = ("import sys, modelhost; assert 'httpx' not in sys.modules; "
            "modelhost.Client; assert 'httpx' in sys.modules; print(modelhost.__all__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert "Client" in done.stdout


def test_predict_from_path_bytes_and_file(client, tmp_path):
    path = tmp_path / "green.png"
    path.write_bytes(solid(GREEN))
    from_path = client.predict(path, "rgb")
    assert [p.label for p in from_path.labels] == ["green", "red", "blue"]
    assert from_path.model == "rgb" and from_path.version == "1" and len(from_path.id) == 32
    assert from_path.labels[0].score == pytest.approx(0.99991, abs=1e-4)
    assert from_path.timings.total >= from_path.timings.inference > 0
    assert client.predict(str(path), "rgb", top_k=1).labels[0].label == "green"
    assert client.predict(solid(RED), "rgb").labels[0].label == "red"
    assert client.predict(io.BytesIO(solid(BLUE, fmt="JPEG")), "rgb").labels[0].label == "blue"


def test_predict_at_a_point_with_a_crop(client):
    data = image_bytes(halves(left=RED, right=BLUE))
    assert client.predict(data, "rgb", x=20, y=50, crop=0.3).labels[0].label == "red"
    assert client.predict(data, "rgb", x=180, y=50, crop=0.3).labels[0].label == "blue"


def test_predict_from_a_url(client):
    png = solid(GREEN)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(png)))
            self.end_headers()
            self.wfile.write(png)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/g.png"
        assert client.predict(url, "rgb", top_k=2).labels[0].label == "green"
    finally:
        server.shutdown()
        server.server_close()


def test_predict_many_keeps_order_and_reports_failures(client):
    colours = [RED, GREEN, BLUE] * 4
    results = client.predict_many([solid(c) for c in colours], "rgb", concurrency=4, top_k=1)
    assert [r.labels[0].label for r in results] == ["red", "green", "blue"] * 4
    mixed = client.predict_many([solid(RED), b"not an image"], "rgb", return_exceptions=True)
    assert mixed[0].labels[0].label == "red"
    assert isinstance(mixed[1], UnsupportedMedia) and mixed[1].status == 415
    assert mixed[1].code == "unsupported_image_format"
    with pytest.raises(UnsupportedMedia):
        client.predict_many([solid(RED), b"not an image"], "rgb")


def test_models_and_model(client):
    assert [m["name"] for m in client.models()] == ["rgb", "rgb_nhwc"]
    assert client.model("rgb")["label_names"] == ["red", "green", "blue"]


def test_errors_carry_the_server_code_status_and_request_id(client):
    with pytest.raises(NotFound) as caught:
        client.predict(solid(RED), "nope")
    error = caught.value
    assert (error.code, error.status) == ("not_found", 404) and "nope" in error.message
    assert error.request_id
    with pytest.raises(InvalidInput) as caught:
        client.predict(solid(RED), "rgb", top_k=0)
    assert caught.value.code == "invalid_parameter" and caught.value.status == 422
    with pytest.raises(TypeError):
        client.predict(12345, "rgb")  # type: ignore[arg-type]


def test_feedback_on_a_prediction(client):
    prediction = client.predict(solid(RED), "rgb")
    said = client.feedback(prediction.id, "blue")
    assert said["prediction_id"] == prediction.id and said["model"] == "rgb"
    assert said["label"] == "blue" and said["correct"] is False
    confirmed = client.feedback(prediction.id, correct=True)  # re-sent: updates, one row
    assert confirmed["label"] == "red" and confirmed["correct"] is True
    with pytest.raises(InvalidInput) as caught:
        client.feedback(prediction.id, "purple")
    assert caught.value.code == "unknown_label" and caught.value.status == 422
    with pytest.raises(NotFound) as caught:
        client.feedback("0" * 32, "red")
    assert caught.value.status == 404
    with pytest.raises(ValueError, match="label= or correct="):
        client.feedback(prediction.id)


def test_async_client(repo_server):
    async def scenario():
        async with modelhost.AsyncClient(repo_server.url) as client:
            names = [m["name"] for m in await client.models()]
            many = await client.predict_many([solid(c) for c in (BLUE, RED, GREEN)], "rgb",
                                             concurrency=2)
            failed = await client.predict_many([b"nope"], "rgb", return_exceptions=True)
            said = await client.feedback(many[0].id, correct=True)
            assert said["label"] == "blue" and said["correct"] is True
            try:
                await client.predict(solid(RED), "nope")
            except ModelhostError as exc:
                missing = exc
            return names, [p.labels[0].label for p in many], failed[0], missing

    names, labels, failed, missing = asyncio.run(scenario())
    assert names == ["rgb", "rgb_nhwc"] and labels == ["blue", "red", "green"]
    assert isinstance(failed, UnsupportedMedia)
    assert isinstance(missing, NotFound) and missing.code == "not_found"
