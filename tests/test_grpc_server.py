"""KServe V2 over gRPC (--grpc-port) with Triton's own client, tritonclient[grpc], against a
live modelhost serving the digits demo and a test model."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import tritonclient.grpc as triton
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from tritonclient.utils import InferenceServerException

from modelhost.demo import DEMO_DIR

from .support import free_port, rgb_model, serve_in_process, solid


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("grpc")
    repo = tmp / "repo"
    shutil.copytree(DEMO_DIR / "digits", repo / "digits")
    rgb_model(repo / "rgb")
    port = free_port()
    live = serve_in_process([str(repo), "--grpc-port", str(port)], tmp)
    live.grpc = f"127.0.0.1:{port}"  # type: ignore[attr-defined]
    yield live
    assert live.stop() == 0


@pytest.fixture
def client(server):
    with triton.InferenceServerClient(server.grpc) as c:
        yield c


def rgb_infer(client, rows: np.ndarray, datatype: str, **kwargs):
    tensor = triton.InferInput("image", list(rows.shape), datatype)
    tensor.set_data_from_numpy(rows)
    return client.infer("rgb", [tensor], **kwargs)


def test_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("digits") and client.is_model_ready("digits", "1")
    with pytest.raises(InferenceServerException, match="no version '3'"):
        client.is_model_ready("digits", "3")
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "modelhost" and "binary_tensor_data" in meta["extensions"]
    digits = client.get_model_metadata("digits", as_json=True)
    assert digits["platform"] == "onnxruntime_onnx"
    assert digits["inputs"] == [{"name": "image", "datatype": "FP32",
                                 "shape": ["-1", "1", "8", "8"]}]  # int64 as JSON strings


def test_digits_accuracy_through_raw_tensors(client):
    digits = load_digits()
    _, x_test, _, y_test = train_test_split(digits.images, digits.target, test_size=0.25,
                                            random_state=0, stratify=digits.target)
    images = (1 - x_test / 16).astype(np.float32)[:, None, :, :]
    predicted = []
    for start in range(0, len(images), 90):
        batch = images[start : start + 90]
        tensor = triton.InferInput("image", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch)
        result = client.infer("digits", [tensor], request_id="g-1")
        assert result.get_response().id == "g-1"
        predicted.extend(result.as_numpy("logits").argmax(axis=1))
    assert np.mean(np.array(predicted) == y_test) >= 0.95


def test_fp16_images_and_classification(client):
    rows = np.zeros((2, 3, 9, 9), np.float16)
    rows[0, 2], rows[1, 0] = 1, 1
    logits = rgb_infer(client, rows, "FP16").as_numpy("logits")
    np.testing.assert_allclose(logits, [[0, 0, 10], [10, 0, 0]])
    photos = np.array([solid((0, 255, 0)), solid((0, 0, 255), fmt="JPEG")], dtype=np.object_)
    top = triton.InferRequestedOutput("logits", class_count=1)
    result = rgb_infer(client, photos, "BYTES", outputs=[top])
    assert [e.decode().split(":", 1)[1] for e in result.as_numpy("logits").reshape(-1)] == [
        "1:green", "2:blue"]


def test_errors_map_to_grpc_status_codes(client):
    with pytest.raises(InferenceServerException) as caught:
        client.get_model_metadata("nope")
    assert caught.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException, match="does not match") as caught:
        rgb_infer(client, np.zeros((1, 3, 4, 4), np.float32), "FP32")
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(InferenceServerException, match="image") as caught:
        rgb_infer(client, np.array([b"not an image"], dtype=np.object_), "BYTES")
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"


def test_a_client_deadline_is_honoured(client):
    """A deadline shorter than the request can take ends it with DEADLINE_EXCEEDED."""
    photos = np.array([solid((255, 0, 0), size=(1000, 1000))] * 16, dtype=np.object_)
    with pytest.raises(InferenceServerException) as caught:
        rgb_infer(client, photos, "BYTES", client_timeout=0.02)
    assert caught.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    assert rgb_infer(client, np.ones((1, 3, 9, 9), np.float32), "FP32").as_numpy(
        "logits").shape == (1, 3)  # the server is fine afterwards
