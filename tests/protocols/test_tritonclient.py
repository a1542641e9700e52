"""Triton's own Python client (tritonclient[http]) against a live modelhost serving the
shipped demo models and a test model: health, metadata, JSON and binary inference, images as
BYTES, FP16, classification, errors."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import tritonclient.http as triton
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from tritonclient.utils import InferenceServerException

from modelhost.demo import DEMO_DIR

from ..support import image_bytes, rgb_model, serve_in_process, solid


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("triton")
    repo = tmp / "repo"
    for name in ("digits", "colors"):
        shutil.copytree(DEMO_DIR / name, repo / name)
    rgb_model(repo / "rgb")
    live = serve_in_process([str(repo)], tmp)
    yield live
    assert live.stop() == 0


@pytest.fixture
def client(server):
    with triton.InferenceServerClient(server.url.removeprefix("http://")) as c:
        yield c


def held_out_digits() -> tuple[np.ndarray, np.ndarray]:
    """Digits the demo was not trained on, as the model's input: dark ink on white in [0, 1]."""
    digits = load_digits()
    _, x_test, _, y_test = train_test_split(digits.images, digits.target, test_size=0.25,
                                            random_state=0, stratify=digits.target)
    return (1 - x_test / 16).astype(np.float32)[:, None, :, :], y_test


def infer(client, model: str, array: np.ndarray, datatype: str, *, binary: bool,
          class_count: int = 0):
    tensor = triton.InferInput("image", list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    wanted = triton.InferRequestedOutput("logits", binary_data=binary, class_count=class_count)
    return client.infer(model, [tensor], outputs=[wanted], request_id="req-1")


def test_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("digits") and client.is_model_ready("colors", "1")
    assert not client.is_model_ready("digits", "7")
    meta = client.get_server_metadata()
    assert meta["name"] == "modelhost" and "binary_tensor_data" in meta["extensions"]
    digits = client.get_model_metadata("digits")
    assert digits["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert digits["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
    assert {m["name"] for m in client.get_model_repository_index()} == {"digits", "colors", "rgb"}


@pytest.mark.parametrize("binary", [True, False])
def test_digits_tensors_are_classified_accurately(client, binary):
    images, labels = held_out_digits()
    predicted = []
    for start in range(0, len(images), 50):
        result = infer(client, "digits", images[start : start + 50], "FP32", binary=binary)
        assert result.get_response()["id"] == "req-1"
        predicted.extend(result.as_numpy("logits").argmax(axis=1))
    accuracy = np.mean(np.array(predicted) == labels)
    assert len(predicted) == 450 and accuracy >= 0.95, accuracy


def test_digit_pngs_as_bytes_with_classification(client):
    images, labels = held_out_digits()
    pngs = [image_bytes(Image.fromarray(np.round(255 * i[0]).astype(np.uint8), "L")
                        .resize((32, 32), Image.NEAREST)) for i in images[:40]]
    batch = np.array(pngs, dtype=np.object_)
    result = infer(client, "digits", batch, "BYTES", binary=True, class_count=1)
    top = [entry.decode().split(":") for entry in result.as_numpy("logits").reshape(-1)]
    assert len(top) == 40
    assert np.mean([t[2] == str(y) for t, y in zip(top, labels[:40], strict=True)]) >= 0.9
    assert all(t[1] == t[2] for t in top)  # digits' labels are their indices


def test_colour_jpegs_as_bytes_json(client):
    colours = {"red": (230, 20, 20), "blue": (20, 20, 230), "yellow": (250, 240, 20)}
    batch = np.array([solid(c, fmt="JPEG") for c in colours.values()], dtype=np.object_)
    tensor = triton.InferInput("image", [3], "BYTES")
    tensor.set_data_from_numpy(batch, binary_data=True)
    result = client.infer("colors", [tensor],
                          outputs=[triton.InferRequestedOutput("logits", binary_data=False,
                                                               class_count=1)])
    names = [e.split(":")[2] for e in result.as_numpy("logits").reshape(-1)]  # JSON: str
    assert names == list(colours)


def test_fp16_and_uint8_tensors(client):
    rows = np.zeros((2, 3, 9, 9), np.float16)
    rows[0, 2], rows[1, 1] = 1, 1
    logits = infer(client, "rgb", rows, "FP16", binary=True).as_numpy("logits")
    np.testing.assert_allclose(logits, [[0, 0, 10], [0, 10, 0]])
    logits = infer(client, "rgb", rows.astype(np.uint8), "UINT8", binary=True).as_numpy("logits")
    np.testing.assert_allclose(logits, [[0, 0, 10], [0, 10, 0]])


def test_errors_surface_as_inference_server_exceptions(client):
    with pytest.raises(InferenceServerException, match="no model named 'nope'") as caught:
        client.get_model_metadata("nope")
    assert caught.value.status() == "404"
    with pytest.raises(InferenceServerException, match="does not match") as caught:
        infer(client, "rgb", np.zeros((1, 3, 4, 4), np.float32), "FP32", binary=True)
    assert caught.value.status() == "400"
