"""The TF Serving REST API through a real server, with the request shapes its clients send."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from modelhost.protocols import tfserving as tfs

from ..support import solid

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def row(channel: int, size: int = 9) -> list:
    """One NCHW example with ``channel`` at 1.0."""
    example = np.zeros((3, size, size), np.float32)
    example[channel] = 1.0
    return example.tolist()


def b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode()}


def tfs_error(response, status: int) -> str:
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"}
    return response.json()["error"]


def test_status_and_version_paths(repo_server):
    c = repo_server.client
    expected = {"model_version_status": [
        {"version": "1", "state": "AVAILABLE",
         "status": {"error_code": "OK", "error_message": ""}}]}
    assert c.get("/v1/models/rgb").json() == expected
    assert c.get("/v1/models/rgb/versions/1").json() == expected
    assert c.get("/v1/models/rgb/labels/latest").json() == expected
    assert "Specific(rgb_nhwc, 1)" in tfs_error(c.get("/v1/models/rgb_nhwc/versions/1"), 404)
    assert "label: canary" in tfs_error(c.get("/v1/models/rgb/labels/canary"), 404)
    assert "nope" in tfs_error(c.get("/v1/models/nope"), 404)


def test_metadata_signature_def(repo_server):
    body = repo_server.client.get("/v1/models/rgb_nhwc/versions/2/metadata").json()
    assert body["model_spec"] == {"name": "rgb_nhwc", "signature_name": "", "version": "2"}
    signature = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["method_name"] == "tensorflow/serving/predict"
    assert signature["inputs"]["image"] == {
        "dtype": "DT_FLOAT", "name": "image",
        "tensor_shape": {"dim": [{"size": s, "name": ""} for s in ("-1", "16", "16", "3")],
                         "unknown_rank": False}}
    assert signature["outputs"]["logits"]["tensor_shape"]["dim"][1]["size"] == "3"


def test_predict_row_format(repo_server):
    response = repo_server.client.post("/v1/models/rgb:predict",
                                       json={"instances": [row(1), row(2)]})
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": [[0.0, 10.0, 0.0], [0.0, 0.0, 10.0]]}
    named = repo_server.client.post("/v1/models/rgb/versions/1:predict",
                                    json={"signature_name": "serving_default",
                                          "instances": [{"image": row(0)}]})
    assert named.json() == {"predictions": [[10.0, 0.0, 0.0]]}


def test_predict_columnar_format_and_labels_path(repo_server):
    response = repo_server.client.post("/v1/models/rgb/labels/latest:predict",
                                       json={"inputs": {"image": [row(2)]}})
    assert response.json() == {"outputs": [[0.0, 0.0, 10.0]]}
    plain = repo_server.client.post("/v1/models/rgb:predict", json={"inputs": [row(0)]})
    assert plain.json() == {"outputs": [[10.0, 0.0, 0.0]]}


def test_predict_b64_images_decode_like_uploads(repo_server):
    response = repo_server.client.post("/v1/models/rgb:predict", json={
        "instances": [b64(solid(GREEN)), {"image": b64(solid(RED, fmt="JPEG"))}]})
    predictions = np.array(response.json()["predictions"])
    assert predictions.argmax(axis=1).tolist() == [1, 0]
    columnar = repo_server.client.post("/v1/models/rgb:predict",
                                       json={"inputs": b64(solid(BLUE))})
    assert np.argmax(columnar.json()["outputs"][0]) == 2


def test_nan_and_infinity_tokens_parse_and_non_finite_outputs_are_refused(repo_server):
    """TF Serving's NaN/Infinity tokens are read (no 400); the NaN scores they cause are
    refused by the shared run step, as on every protocol (500 ``model_failed``)."""
    example = np.zeros((3, 9, 9)).tolist()
    for token in ("NaN", "Infinity", "-Infinity"):
        body = ('{"instances": [' + str(example).replace("0.0", token, 1) + "]}").encode()
        response = repo_server.client.post("/v1/models/rgb:predict", content=body,
                                           headers={"content-type": "application/json"})
        assert response.status_code == 500, response.text
        assert response.headers["x-error-code"] == "model_failed"
        assert "NaN or infinite" in response.json()["error"]


def test_non_finite_values_are_written_as_tf_serving_tokens():
    assert tfs.dumps({"predictions": [[float("inf"), float("nan"), -float("inf"), 1.5]]}) == \
        b'{"predictions":[[Infinity,NaN,-Infinity,1.5]]}'
    nan, inf, minus_inf = tfs.loads(b'{"instances": [NaN, Infinity, -Infinity]}')["instances"]
    assert np.isnan(nan) and inf == float("inf") and minus_inf == -float("inf")


def test_classify_results(repo_server):
    images = repo_server.client.post("/v1/models/rgb:classify", json={
        "examples": [{"image": b64(solid(BLUE))}]})
    tensors = repo_server.client.post("/v1/models/rgb:classify", json={
        "examples": [{"image": row(1)}]})
    results = images.json()["results"] + tensors.json()["results"]
    assert [[label for label, _ in r] for r in results] == [
        ["blue", "red", "green"], ["green", "red", "blue"]]
    assert results[1][0][1] == pytest.approx(0.99991, abs=1e-4)
    shared = repo_server.client.post("/v1/models/rgb:classify", json={
        "context": {"image": b64(solid(RED))}, "examples": [{}]})
    assert shared.json()["results"][0][0][0] == "red"


@pytest.mark.parametrize(("path", "payload", "needle"), [
    (":predict", {"instances": [row(0)], "inputs": [row(0)]}, "exactly one"),
    (":predict", {"instances": []}, "non-empty"),
    (":predict", {"instances": [[1, 2]]}, "does not match"),
    (":predict", {"instances": [[1, 2], [1]]}, "regular tensor"),
    (":predict", {"instances": [{"pixels": row(0)}]}, "unknown inputs"),
    (":predict", {"instances": [row(0)], "signature_name": "other"}, "other"),
    (":predict", {"instances": [{"b64": "***"}]}, "base64"),
    (":predict", {"instances": [b64(b"not an image")]}, "image"),
    (":predict", {"instances": [b64(solid(RED)), row(0)]}, "mixes"),
    (":predict", {"instances": [["a"] * 3]}, "numbers"),
    (":classify", {"examples": [{"a": row(0), "b": row(1)}]}, "exactly one feature"),
    (":classify", {}, "examples"),
    (":regress", {"examples": [{"x": 1}]}, "regress"),
])
def test_bad_requests_are_400(repo_server, path, payload, needle):
    response = repo_server.client.post(f"/v1/models/rgb{path}", json=payload)
    assert needle in tfs_error(response, 400)


def test_malformed_json_is_400(repo_server):
    response = repo_server.client.post("/v1/models/rgb:predict", content=b"{nope")
    assert "JSON" in tfs_error(response, 400)
    assert "nope" in tfs_error(repo_server.client.post("/v1/models/nope:predict",
                                                       json={"instances": [1]}), 404)


def test_absurdly_nested_json_is_400_not_500(repo_server):
    body = b'{"instances": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    response = repo_server.client.post("/v1/models/rgb:predict", content=body)
    assert "JSON" in tfs_error(response, 400)
