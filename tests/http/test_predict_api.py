"""The native prediction API through a real server: every input method, option and error."""

from __future__ import annotations

import base64
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from ..support import halves, image_bytes, solid

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def top(response) -> str:
    assert response.status_code == 200, response.text
    return response.json()["predictions"][0]["label"]


def error_code(response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["request_id"]
    return body["error"]["code"]


# -- inputs ----------------------------------------------------------------------------------

def test_multipart_upload_returns_the_contract_shape(repo_server):
    response = repo_server.client.post(
        "/api/models/rgb/predict", files={"image": ("a.png", solid(GREEN), "image/png")})
    body = response.json()
    assert response.status_code == 200
    assert set(body) == {"id", "model", "version", "predictions", "timings_ms"}
    assert body["model"] == "rgb" and body["version"] == "1" and len(body["id"]) == 32
    assert [p["label"] for p in body["predictions"]] == ["green", "red", "blue"]  # top_k=3 (toml)
    assert body["predictions"][0]["index"] == 1
    assert body["predictions"][0]["score"] == pytest.approx(0.99991, abs=1e-4)
    assert sum(p["score"] for p in body["predictions"]) == pytest.approx(1.0, abs=1e-5)
    assert set(body["timings_ms"]) == {"fetch", "decode", "queue", "inference", "total"}
    assert body["timings_ms"]["total"] >= body["timings_ms"]["inference"] > 0
    assert response.headers["x-request-id"]


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"])
def test_raw_body_in_every_allowed_format(repo_server, fmt):
    data = image_bytes(Image.new("RGB", (40, 30), BLUE), fmt)
    response = repo_server.client.post("/api/models/rgb/predict", content=data,
                                       headers={"content-type": f"image/{fmt.lower()}"})
    assert top(response) == "blue"


def test_json_base64(repo_server):
    payload = {"image_base64": base64.b64encode(solid(RED)).decode(), "top_k": 1}
    response = repo_server.client.post("/api/models/rgb/predict", json=payload)
    assert top(response) == "red" and len(response.json()["predictions"]) == 1


def test_server_path_inside_the_root(repo_server):
    (repo_server.images / "green.png").write_bytes(solid(GREEN))
    assert top(repo_server.client.post("/api/models/rgb/predict",
                                       json={"path": "green.png"})) == "green"
    assert top(repo_server.client.get("/api/models/rgb/predict",
                                      params={"path": "green.png"})) == "green"


@pytest.mark.parametrize("name", [
    "../outside.png", "/etc/passwd", "missing.png", ".", "sub", "link.png", "a\x00b.png",
    "%2e%2e/outside.png", "fifo",
])
def test_refused_server_paths_are_all_not_found(repo_server, name, tmp_path_factory):
    images = repo_server.images
    outside = images.parent / "outside.png"
    outside.write_bytes(solid(RED))
    (images / "sub").mkdir(exist_ok=True)
    if not (images / "link.png").exists():
        (images / "link.png").symlink_to(outside)
    if not (images / "fifo").exists():
        import os

        os.mkfifo(images / "fifo")
    response = repo_server.client.post("/api/models/rgb/predict", json={"path": name})
    assert error_code(response, 404) == "not_found"
    assert str(images) not in response.text


class _ImageHandler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = solid(BLUE, fmt="JPEG")
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_url_source_json_and_get(repo_server):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _ImageHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_port}/photo.jpg"
    try:
        assert top(repo_server.client.post("/api/models/rgb/predict", json={"url": url})) == "blue"
        response = repo_server.client.get("/api/models/rgb/predict", params={"url": url})
        assert top(response) == "blue"
        assert response.json()["timings_ms"]["fetch"] > 0
    finally:
        httpd.shutdown()
        httpd.server_close()


# -- options ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("x", "expected"), [(20, "red"), (180, "blue")])
def test_crop_around_a_point_decides_the_answer(repo_server, x, expected):
    data = image_bytes(halves(RED, BLUE, (200, 100)))
    response = repo_server.client.post(
        "/api/models/rgb/predict", params={"x": x, "y": 50, "crop": 0.3},
        files={"image": ("h.png", data)})
    assert top(response) == expected


def test_options_as_form_fields(repo_server):
    data = image_bytes(halves(RED, BLUE, (200, 100)))
    response = repo_server.client.post(
        "/api/models/rgb/predict", data={"x": "190", "y": "10", "crop": "0.1", "top_k": "2"},
        files={"image": ("h.png", data)})
    assert top(response) == "blue" and len(response.json()["predictions"]) == 2


def test_whole_image_without_a_point_mixes_both_halves(repo_server):
    data = image_bytes(halves((255, 0, 0), (0, 0, 200), (200, 100)))
    body = repo_server.client.post("/api/models/rgb/predict",
                                   files={"image": ("h.png", data)}).json()
    scores = {p["label"]: p["score"] for p in body["predictions"]}
    assert scores["red"] > scores["blue"] > scores["green"]


def test_exif_orientation_is_applied_before_the_crop(repo_server):
    # Stored 100×200 with red on top; EXIF 6 (rotate 90° CW to view) puts red on the right.
    stored = Image.new("RGB", (100, 200), BLUE)
    stored.paste(RED, (0, 0, 100, 100))
    exif = Image.Exif()
    exif[0x0112] = 6
    data = image_bytes(stored, "JPEG", exif=exif.tobytes(), quality=95)
    client = repo_server.client
    right = client.post("/api/models/rgb/predict", params={"x": 190, "y": 50, "crop": 0.2},
                        files={"image": ("r.jpg", data)})
    left = client.post("/api/models/rgb/predict", params={"x": 10, "y": 50, "crop": 0.2},
                       files={"image": ("r.jpg", data)})
    assert (top(right), top(left)) == ("red", "blue")


def test_other_version_layout_and_size(repo_server):
    body = repo_server.client.get("/api/models/rgb_nhwc").json()
    assert body["version"] == "2" and body["versions"] == ["1", "2"]
    assert body["input"]["layout"] == "NHWC" and body["input"]["width"] == 16
    response = repo_server.client.post("/api/models/rgb_nhwc/predict",
                                       files={"image": ("g.png", solid(GREEN))})
    assert top(response) == "green" and response.json()["version"] == "2"


# -- fan-out ---------------------------------------------------------------------------------

def test_one_image_through_several_models(repo_server):
    response = repo_server.client.post(
        "/api/predict", params={"models": "rgb,rgb_nhwc,nope"},
        files={"image": ("r.png", solid(RED))})
    assert response.status_code == 200
    results = response.json()["results"]
    assert results["rgb"]["predictions"][0]["label"] == "red"
    assert results["rgb_nhwc"]["predictions"][0]["label"] == "red"
    assert results["nope"]["error"]["code"] == "not_found"


def test_fan_out_with_every_model_failing_is_an_error(repo_server):
    response = repo_server.client.post("/api/predict", params={"models": "nope"},
                                       files={"image": ("r.png", solid(RED))})
    assert response.status_code == 404
    assert response.json()["results"]["nope"]["error"]["code"] == "not_found"


# -- errors ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("kwargs", "status", "code"), [
    ({"content": b"not an image", "headers": {"content-type": "image/png"}}, 415,
     "unsupported_image_format"),
    ({"content": image_bytes(Image.new("RGB", (64, 64)), "PNG")[:60],
      "headers": {"content-type": "image/png"}}, 422, "image_decode_failed"),
    ({"content": b"{", "headers": {"content-type": "application/json"}}, 400,
     "malformed_request"),
    ({"json": [1, 2]}, 422, "invalid_parameter"),
    ({"json": {"image_base64": "@@@"}}, 422, "invalid_parameter"),
    ({"json": {"url": "http://x", "path": "y"}}, 422, "invalid_parameter"),
    ({"content": b"x", "headers": {"content-type": "text/plain"}}, 415,
     "unsupported_media_type"),
    ({"content": b"", "headers": {"content-type": "image/png"}}, 422, "invalid_parameter"),
    ({"content": b"--zz\r\nbroken", "headers": {"content-type": "multipart/form-data"}}, 400,
     "malformed_request"),
    ({"files": {"other": ("a.png", b"x")}}, 422, "invalid_parameter"),
])
def test_bad_bodies(repo_server, kwargs, status, code):
    response = repo_server.client.post("/api/models/rgb/predict", **kwargs)
    assert error_code(response, status) == code


@pytest.mark.parametrize("params", [
    {"top_k": 0}, {"top_k": 1001}, {"top_k": "2.5"}, {"top_k": "many"}, {"crop": 0},
    {"crop": 1.5}, {"x": 5}, {"x": -1, "y": 5}, {"x": "nan", "y": 1}, {"x": 500, "y": 5},
    {"top_k": ""}, {"top_k": " "}, {"crop": ""}, {"x": "", "y": ""}, {"top_k": "1e"},
])
def test_bad_options(repo_server, params):
    response = repo_server.client.post("/api/models/rgb/predict", params=params,
                                       files={"image": ("a.png", solid(RED, (64, 48)))})
    assert error_code(response, 422) == "invalid_parameter"


@pytest.mark.parametrize("route", ["/api/models/rgb/predict", "/api/predict?models=rgb"])
def test_an_empty_top_k_is_refused_in_every_form(repo_server, route):
    """Query, form field and JSON member, on the one-model and the many-model routes."""
    image = solid(RED, (64, 48))
    payload = {"image_base64": base64.b64encode(image).decode(), "top_k": ""}
    responses = [
        repo_server.client.post(route + ("&" if "?" in route else "?") + "top_k=", content=image,
                                headers={"content-type": "image/png"}),
        repo_server.client.post(route, data={"top_k": ""}, files={"image": ("a.png", image)}),
        repo_server.client.post(route, json=payload),
    ]
    for response in responses:
        assert error_code(response, 422) == "invalid_parameter"
        assert response.json()["error"]["message"] == "top_k is empty; give a number or leave " \
                                                      "it out"


def test_unknown_model(repo_server):
    response = repo_server.client.post("/api/models/nope/predict",
                                       files={"image": ("a.png", solid(RED))})
    assert error_code(response, 404) == "not_found"
    assert error_code(repo_server.client.get("/api/models/nope"), 404) == "not_found"
    assert error_code(repo_server.client.get("/no/such/route"), 404) == "not_found"


def test_body_over_the_limit_is_refused_before_it_is_read(repo_server):
    big = b"\xff" * (3 * 2**20)
    response = repo_server.client.post("/api/models/rgb/predict", content=big,
                                       headers={"content-type": "image/jpeg"})
    assert error_code(response, 413) == "body_too_large"

    def chunks():  # no Content-Length: counted while streaming
        for _ in range(48):
            yield b"\0" * 65536

    response = repo_server.client.post("/api/models/rgb/predict", content=chunks(),
                                       headers={"content-type": "image/jpeg"})
    assert error_code(response, 413) == "body_too_large"


def test_pixel_cap_is_checked_before_decoding(repo_server):
    # 3000×3000 = 9 Mpx > the server's 4 Mpx cap; a tiny PNG thanks to compression.
    data = image_bytes(Image.new("L", (3000, 3000)), "PNG")
    assert len(data) < 2 * 2**20
    response = repo_server.client.post("/api/models/rgb/predict", content=data,
                                       headers={"content-type": "image/png"})
    assert error_code(response, 413) == "image_too_large"


def test_bad_timeout_header(repo_server):
    response = repo_server.client.post("/api/models/rgb/predict",
                                       headers={"x-request-timeout": "soon"},
                                       files={"image": ("a.png", solid(RED))})
    assert error_code(response, 400) == "malformed_request"


def test_url_to_a_closed_port_is_a_fetch_error(repo_server):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    response = repo_server.client.post("/api/models/rgb/predict",
                                       json={"url": f"http://127.0.0.1:{port}/x.jpg"})
    assert error_code(response, 422) == "url_fetch_failed"


def test_errors_never_leak_paths_or_tracebacks(repo_server):
    for response in (
        repo_server.client.post("/api/models/rgb/predict", content=b"\x89PNG\r\n\x1a\n" + b"x" * 99,
                                headers={"content-type": "image/png"}),
        repo_server.client.post("/api/models/rgb/predict", json={"path": "../../etc/passwd"}),
    ):
        assert "Traceback" not in response.text and "/tmp" not in response.text


# -- metadata, ops ---------------------------------------------------------------------------

def test_models_list_and_metadata(repo_server):
    models = {m["name"]: m for m in repo_server.client.get("/api/models").json()["models"]}
    assert set(models) == {"rgb", "rgb_nhwc"}
    assert models["rgb"]["state"] == "ready" and models["rgb"]["labels"] == 3
    detail = repo_server.client.get("/api/models/rgb").json()
    assert detail["label_names"] == ["red", "green", "blue"]
    assert detail["inputs"] == [{"name": "image", "datatype": "float32", "shape": [-1, 3, 9, 9]}]
    # the layout in force: no [workers] or [batching] in its modelhost.toml, so the defaults
    assert detail["layout"] == {"replicas": 1, "threads": 0, "max_batch_size": 8,
                                "max_delay_ms": 0.0}


def test_health_readiness_and_metrics(repo_server):
    client = repo_server.client
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["models"]["rgb"]["workers_ready"] == 1
    client.post("/api/models/rgb/predict", files={"image": ("a.png", solid(RED))})
    text = client.get("/metrics").text
    assert 'modelhost_requests_total{model="rgb",route="predict",status="200"}' in text
    for series in ("modelhost_decode_seconds_bucket", "modelhost_queue_seconds_bucket",
                   "modelhost_inference_seconds_bucket", "modelhost_request_seconds_bucket",
                   "modelhost_batch_size_bucket", 'modelhost_queue_depth{model="rgb"}',
                   'modelhost_worker_restarts_total{model="rgb"}',
                   'modelhost_model_load_seconds{model="rgb"}'):
        assert series in text


def test_prediction_log_lines(repo_server):
    response = repo_server.client.post("/api/models/rgb/predict",
                                       files={"image": ("a.png", solid(RED))},
                                       headers={"x-request-id": "trace-me-123"})
    prediction_id = response.json()["id"]
    import json
    import time

    for _ in range(50):
        lines = [json.loads(line) for line in repo_server.log().splitlines()
                 if line.startswith("{") and prediction_id in line]
        if lines:
            break
        time.sleep(0.05)
    line = lines[0]
    assert line["request_id"] == "trace-me-123" and line["model"] == "rgb"
    assert line["status"] == 200 and line["batch_size"] >= 1
    assert set(line["durations_ms"]) >= {"decode", "queue", "inference", "total"}
