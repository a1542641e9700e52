"""KServe V2 REST through a real server: health, metadata, JSON and binary tensors, images,
classification, errors, and V2 rows batching together with native uploads."""

from __future__ import annotations

import base64
import concurrent.futures
import json
import struct

import numpy as np
import pytest

from ..support import rgb_model, serve_in_process, solid

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def colour_rows(*channels: int, size: int = 9, layout: str = "NCHW") -> np.ndarray:
    """One row per channel index, that channel at 1.0 and the others 0."""
    rows = np.zeros((len(channels), 3, size, size), np.float32)
    for i, c in enumerate(channels):
        rows[i, c] = 1.0
    return rows if layout == "NCHW" else rows.transpose(0, 2, 3, 1).copy()


def v2_error(response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    return body["error"]


# -- health and metadata ---------------------------------------------------------------------

def test_server_metadata_and_health(repo_server):
    c = repo_server.client
    meta = c.get("/v2").json()
    assert meta["name"] == "modelhost" and meta["version"]
    assert {"binary_tensor_data", "classification"} <= set(meta["extensions"])
    assert c.get("/v2/health/live").json() == {"live": True}
    ready = c.get("/v2/health/ready")
    assert ready.status_code == 200 and ready.json() == {"ready": True}
    assert c.get("/v2/models").json() == {"models": ["rgb", "rgb_nhwc"]}


def test_model_ready_per_version(repo_server):
    c = repo_server.client
    assert c.get("/v2/models/rgb/ready").json() == {"name": "rgb", "ready": True}
    assert c.get("/v2/models/rgb_nhwc/versions/2/ready").status_code == 200
    not_served = c.get("/v2/models/rgb_nhwc/versions/1/ready")  # in the folder, not served
    assert not_served.status_code == 503 and not_served.json()["ready"] is False
    assert "no version" in v2_error(c.get("/v2/models/rgb_nhwc/versions/9/ready"), 404)
    assert "nope" in v2_error(c.get("/v2/models/nope/ready"), 404)


def test_model_metadata_has_a_variable_batch_dimension(repo_server):
    c = repo_server.client
    assert c.get("/v2/models/rgb").json() == {
        "name": "rgb", "versions": ["1"], "platform": "onnxruntime_onnx",
        "inputs": [{"name": "image", "datatype": "FP32", "shape": [-1, 3, 9, 9]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 3]}],
    }
    nhwc = c.get("/v2/models/rgb_nhwc/versions/2").json()
    assert nhwc["versions"] == ["2"] and nhwc["inputs"][0]["shape"] == [-1, 16, 16, 3]
    assert "not served" in v2_error(c.get("/v2/models/rgb_nhwc/versions/1"), 404)


def test_repository_index(repo_server):
    index = repo_server.client.post("/v2/repository/index", json={"ready": True}).json()
    assert index == [
        {"name": "rgb", "version": "1", "state": "READY", "reason": ""},
        {"name": "rgb_nhwc", "version": "2", "state": "READY", "reason": ""},
    ]


# -- inference with JSON tensors -------------------------------------------------------------

def test_infer_json_nested_echoes_id(repo_server):
    rows = colour_rows(1, 2)
    response = repo_server.client.post("/v2/models/rgb/infer", json={
        "id": "42", "parameters": {"note": "x"},
        "inputs": [{"name": "image", "shape": [2, 3, 9, 9], "datatype": "FP32",
                    "data": rows.tolist()}]})
    assert response.status_code == 200, response.text
    body = response.json()
    ids = body.pop("parameters")["prediction_id"].split(",")  # one per row, for feedback
    assert len(ids) == 2 and len(set(ids)) == 2 and all(len(i) == 32 for i in ids)
    assert response.headers["x-prediction-id"] == ",".join(ids)
    assert body == {
        "model_name": "rgb", "model_version": "1", "id": "42",
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [2, 3],
                     "data": [0.0, 10.0, 0.0, 0.0, 0.0, 10.0]}]}


@pytest.mark.parametrize("datatype", ["FP64", "FP16", "BF16", "UINT8", "INT32", "INT64", "BOOL"])
def test_infer_json_flat_in_every_castable_datatype(repo_server, datatype):
    rows = colour_rows(0)
    data = rows.reshape(-1).tolist()
    if datatype == "BOOL":
        data = [bool(v) for v in data]
    elif datatype.startswith(("U", "I")):
        data = [int(v) for v in data]
    response = repo_server.client.post("/v2/models/rgb/versions/1/infer", json={
        "inputs": [{"name": "image", "shape": [1, 3, 9, 9], "datatype": datatype,
                    "data": data}]})
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == [10.0, 0.0, 0.0]


def test_infer_nhwc_model_and_output_selection(repo_server):
    rows = colour_rows(2, size=16, layout="NHWC")
    response = repo_server.client.post("/v2/models/rgb_nhwc/infer", json={
        "inputs": [{"name": "image", "shape": list(rows.shape), "datatype": "FP32",
                    "data": rows.reshape(-1).tolist()}],
        "outputs": [{"name": "logits"}]})
    assert response.json()["outputs"][0]["data"] == [0.0, 0.0, 10.0]
    assert response.json()["model_version"] == "2"


def test_infer_image_bytes_json_and_classification(repo_server):
    images = [{"b64": base64.b64encode(solid(c, fmt=f)).decode()}
              for c, f in ((GREEN, "PNG"), (BLUE, "JPEG"))]
    response = repo_server.client.post("/v2/models/rgb/infer", json={
        "inputs": [{"name": "image", "shape": [2], "datatype": "BYTES", "data": images}],
        "outputs": [{"name": "logits", "parameters": {"classification": 2}}]})
    out = response.json()["outputs"][0]
    assert out["datatype"] == "BYTES" and out["shape"] == [2, 2]
    first, second = out["data"][0].split(":"), out["data"][2].split(":")
    assert first[1:] == ["1", "green"] and float(first[0]) == pytest.approx(10, abs=0.01)
    assert second[1:] == ["2", "blue"] and float(second[0]) > 9.5


# -- Triton's binary tensor extension --------------------------------------------------------

def binary_request(header: dict, *blobs: bytes) -> tuple[bytes, dict]:
    head = json.dumps(header).encode()
    return head + b"".join(blobs), {"Inference-Header-Content-Length": str(len(head)),
                                    "Content-Type": "application/octet-stream"}


def split_response(response) -> tuple[dict, bytes]:
    size = int(response.headers["inference-header-content-length"])
    return json.loads(response.content[:size]), response.content[size:]


def test_binary_fp16_in_binary_out(repo_server):
    rows = colour_rows(1, 0).astype(np.float16)
    body, headers = binary_request({
        "inputs": [{"name": "image", "shape": [2, 3, 9, 9], "datatype": "FP16",
                    "parameters": {"binary_data_size": rows.nbytes}}],
        "parameters": {"binary_data_output": True}}, rows.tobytes())
    response = repo_server.client.post("/v2/models/rgb/infer", content=body, headers=headers)
    assert response.status_code == 200, response.text
    header, blob = split_response(response)
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 24}
    np.testing.assert_allclose(np.frombuffer(blob, "<f4").reshape(2, 3),
                               [[0, 10, 0], [10, 0, 0]])


def test_binary_bf16_and_bytes_images(repo_server):
    rows = colour_rows(2)
    bf16 = (rows.view(np.uint32) >> 16).astype("<u2")  # exact: 0 and 1 fit in BF16
    body, headers = binary_request({
        "inputs": [{"name": "image", "shape": [1, 3, 9, 9], "datatype": "BF16",
                    "parameters": {"binary_data_size": bf16.nbytes}}],
        "outputs": [{"name": "logits", "parameters": {"binary_data": False}}]}, bf16.tobytes())
    response = repo_server.client.post("/v2/models/rgb/infer", content=body, headers=headers)
    assert response.json()["outputs"][0]["data"] == [0.0, 0.0, 10.0]

    images = [solid(RED), solid(GREEN, fmt="JPEG")]
    blob = b"".join(struct.pack("<I", len(i)) + i for i in images)
    body, headers = binary_request({
        "inputs": [{"name": "image", "shape": [2, 1], "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(blob)}}],
        "outputs": [{"name": "logits",
                     "parameters": {"classification": 1, "binary_data": True}}]}, blob)
    header, out = split_response(
        repo_server.client.post("/v2/models/rgb/infer", content=body, headers=headers))
    assert header["outputs"][0]["datatype"] == "BYTES"
    labels = []
    while out:
        (size,) = struct.unpack_from("<I", out)
        labels.append(out[4 : 4 + size].decode().split(":", 1)[1])
        out = out[4 + size :]
    assert labels == ["0:red", "1:green"]


def test_raw_binary_request_image_or_row(repo_server):
    headers = {"Inference-Header-Content-Length": "0"}
    for body, expected in ((solid(BLUE), [0, 0, 10]), (colour_rows(1).tobytes(), [0, 10, 0])):
        response = repo_server.client.post("/v2/models/rgb/infer", content=body,
                                           headers=headers)
        header, blob = split_response(response)
        assert header["outputs"][0]["shape"] == [1, 3]
        np.testing.assert_allclose(np.frombuffer(blob, "<f4"), expected, atol=1e-4)


# -- errors ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("payload", "status", "needle"), [
    ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}, 400,
     "one input named 'image'"),
    ({"inputs": [{"name": "image", "shape": [1, 3, 9, 9], "datatype": "FP32", "data": [1]}]},
     400, "1 elements"),
    ({"inputs": [{"name": "image", "shape": [1, 3, 4, 4], "datatype": "FP32",
                  "data": [0] * 48}]}, 400, "does not match"),
    ({"inputs": [{"name": "image", "shape": [1], "datatype": "FP99", "data": [1]}]}, 400,
     "unknown datatype"),
    ({"inputs": [{"name": "image", "shape": [1, 3, 9, 9], "datatype": "UINT8",
                  "data": [300] * 243}]}, 400, "not a UINT8"),
    ({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["nope"]}]},
     400, "image"),
    ({"inputs": [{"name": "image", "shape": [1, 3, 9, 9], "datatype": "FP32",
                  "data": [0] * 243}], "outputs": [{"name": "probs"}]}, 400,
     "unknown output"),
    ({"inputs": "nope"}, 400, "inputs"),
])
def test_bad_requests_are_400_with_a_message(repo_server, payload, status, needle):
    response = repo_server.client.post("/v2/models/rgb/infer", json=payload)
    assert needle in v2_error(response, status)
    assert response.headers["x-error-code"]


def test_malformed_bodies_and_unknown_models(repo_server):
    c = repo_server.client
    assert "JSON" in v2_error(c.post("/v2/models/rgb/infer", content=b"{nope"), 400)
    bad_length = {"Inference-Header-Content-Length": "999"}
    assert "outside" in v2_error(c.post("/v2/models/rgb/infer", content=b"{}",
                                        headers=bad_length), 400)
    body, headers = binary_request({"inputs": [
        {"name": "image", "shape": [1, 3, 9, 9], "datatype": "FP32",
         "parameters": {"binary_data_size": 972}}]}, b"\0" * 10)
    assert "exceeds" in v2_error(c.post("/v2/models/rgb/infer", content=body,
                                        headers=headers), 400)
    assert "nope" in v2_error(c.post("/v2/models/nope/infer", json={"inputs": []}), 404)


# -- batching --------------------------------------------------------------------------------

def test_v2_rows_batch_with_native_uploads(tmp_path):
    """A V2 tensor request, a V2 image request and a native upload in one model batch."""
    rgb_model(tmp_path / "repo" / "rgb")
    server = serve_in_process([str(tmp_path / "repo"), "--max-batch-size", "3",
                               "--max-delay-ms", "2000"], tmp_path)
    c = server.client
    try:
        tensor = {"inputs": [{"name": "image", "shape": [1, 3, 9, 9], "datatype": "FP32",
                              "data": colour_rows(0).reshape(-1).tolist()}]}
        image = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                             "data": [{"b64": base64.b64encode(solid(GREEN)).decode()}]}]}
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            calls = [pool.submit(c.post, "/v2/models/rgb/infer", json=tensor),
                     pool.submit(c.post, "/v2/models/rgb/infer", json=image),
                     pool.submit(c.post, "/api/models/rgb/predict",
                                 files={"image": ("b.png", solid(BLUE), "image/png")})]
            results = [f.result() for f in calls]
        assert results[0].json()["outputs"][0]["data"] == [10.0, 0.0, 0.0]
        assert np.argmax(results[1].json()["outputs"][0]["data"]) == 1
        assert results[2].json()["predictions"][0]["label"] == "blue"
        metrics = c.get("/metrics").text
        assert 'modelhost_batch_size_bucket{le="2.0",model="rgb"} 0.0' in metrics
        assert 'modelhost_batch_size_count{model="rgb"} 3.0' in metrics
    finally:
        assert server.stop() == 0


def test_repository_index_rejects_a_bad_body(repo_server):
    response = repo_server.client.post("/v2/repository/index", content=b"{nope")
    assert "JSON" in v2_error(response, 400)
    response = repo_server.client.post("/v2/repository/index", json={"ready": "maybe"})
    assert "ready" in v2_error(response, 400)
